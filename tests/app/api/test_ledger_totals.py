"""GET /api/ledger/totals: the ledger summed per stream and currency, over real HTTP."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests import stripe_events as se
from tests.conftest import TestDatabase, WebhookClient


def ts(iso: str) -> int:
    return int(datetime.fromisoformat(iso).astimezone(UTC).timestamp())


T = ts("2024-03-10T12:00:00+00:00")


def test_totals_per_stream_and_currency_with_event_counts(
    webhook: WebhookClient, db: TestDatabase
) -> None:
    api = se.charge(amount=10_000, created=T, metadata={"stream": "api"})
    api_eur = se.charge(amount=5_000, currency="eur", created=T, metadata={"stream": "api"})
    seats = se.charge(amount=2_000, created=T + 60, metadata={"stream": "seats"})
    stray = se.charge(amount=3_000, currency="jpy", created=T + 120)
    refund = se.refund(charge=api["id"], amount=2_500, created=T + 3600)
    dp_id = se.new_id("dp")
    out = se.dispute_withdrawal(dispute_id=dp_id, amount=3_000, fee=1_500, created=T + 7200)
    dispute = se.dispute(
        id=dp_id,
        charge=api["id"],
        amount=3_000,
        created=T + 7200,
        status="lost",
        balance_transactions=[out],
    )
    webhook.deliver(
        se.charge_succeeded(charge=api, created=T),
        se.charge_succeeded(charge=api_eur, created=T),
        se.charge_succeeded(charge=seats, created=T + 60),
        se.charge_succeeded(charge=stray, created=T + 120),
        se.refund_created(refund=refund, created=T + 3600),
        se.dispute_event(type="charge.dispute.closed", dispute=dispute, created=T + 7200),
        se.customer_created(created=T),  # ignored
    )
    unusable = se.charge_succeeded(charge=se.charge(created=T), created=T)
    del unusable["data"]["object"]["amount"]
    assert webhook.post(unusable).status_code == 500  # failed, kept
    outside = se.customer_created(created=ts("2024-02-28T23:59:59+00:00"))
    webhook.deliver(outside)  # ignored, but before the period

    response = webhook.totals(start="2024-03-01", end="2024-04-01")

    assert response.status_code == 200
    assert response.json() == {
        "start": "2024-03-01T00:00:00+00:00",
        "end": "2024-04-01T00:00:00+00:00",
        "tz": "UTC",
        "totals": [
            {"stream": "api", "currency": "eur", "exponent": 2, "gross": 5000, "refunds": 0,
             "disputes": 0, "fees": 0, "net": 5000},
            {"stream": "api", "currency": "usd", "exponent": 2, "gross": 10000,
             "refunds": -2500, "disputes": -3000, "fees": -1500, "net": 4500},
            {"stream": "seats", "currency": "usd", "exponent": 2, "gross": 2000, "refunds": 0,
             "disputes": 0, "fees": 0, "net": 2000},
            {"stream": "unattributed", "currency": "jpy", "exponent": 0, "gross": 3000,
             "refunds": 0, "disputes": 0, "fees": 0, "net": 3000},
        ],
        "events": {"failed": 1, "ignored": 1},
    }  # fmt: skip


def test_empty_period_has_no_rows_and_zero_counts(webhook: WebhookClient, db: TestDatabase) -> None:
    webhook.deliver(se.charge_succeeded(charge=se.charge(created=T), created=T))
    response = webhook.totals(start="2023-01-01", end="2023-02-01")
    assert response.status_code == 200
    assert (response.json()["totals"], response.json()["events"]) == (
        [],
        {"failed": 0, "ignored": 0},
    )


def test_period_includes_its_start_and_excludes_its_end(
    webhook: WebhookClient, db: TestDatabase
) -> None:
    amounts = {
        "2024-03-09T23:59:59+00:00": 1,
        "2024-03-10T00:00:00+00:00": 20,
        "2024-03-10T23:59:59+00:00": 300,
        "2024-03-11T00:00:00+00:00": 4000,
    }
    for when, amount in amounts.items():
        ch = se.charge(amount=amount, created=ts(when))
        webhook.deliver(se.charge_succeeded(charge=ch, created=ts(when)))

    by_date = webhook.totals(start="2024-03-10", end="2024-03-11").json()
    assert [row["gross"] for row in by_date["totals"]] == [320]

    by_instant = webhook.totals(
        start="2024-03-10T00:00:00+00:00", end="2024-03-10T23:59:59+00:00"
    ).json()
    assert [row["gross"] for row in by_instant["totals"]] == [20]


def test_dates_are_cut_in_the_requested_time_zone_across_daylight_saving(
    webhook: WebhookClient, db: TestDatabase
) -> None:
    """2024-03-10 in New York is 23 hours long: from 05:00Z to 04:00Z the next day."""
    amounts = {
        "2024-03-10T04:59:59+00:00": 1,  # 23:59:59 on the 9th, EST
        "2024-03-10T05:00:00+00:00": 20,  # midnight on the 10th, EST
        "2024-03-11T03:59:59+00:00": 300,  # 23:59:59 on the 10th, EDT
        "2024-03-11T04:00:00+00:00": 4000,  # midnight on the 11th, EDT
    }
    for when, amount in amounts.items():
        ch = se.charge(amount=amount, created=ts(when))
        webhook.deliver(se.charge_succeeded(charge=ch, created=ts(when)))

    new_york = webhook.totals(start="2024-03-10", end="2024-03-11", tz="America/New_York")
    assert new_york.status_code == 200
    body = new_york.json()
    assert (body["start"], body["end"], body["tz"]) == (
        "2024-03-10T00:00:00-05:00",
        "2024-03-11T00:00:00-04:00",
        "America/New_York",
    )
    assert [row["gross"] for row in body["totals"]] == [320]

    utc = webhook.totals(start="2024-03-10", end="2024-03-11").json()
    assert [row["gross"] for row in utc["totals"]] == [21]

    # A datetime without an offset is read in tz; one with an offset is taken as it is.
    local = webhook.totals(
        start="2024-03-10T00:00:00", end="2024-03-11T04:00:00+00:00", tz="America/New_York"
    ).json()
    assert [row["gross"] for row in local["totals"]] == [320]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"start": "2024-03-01", "end": "2024-04-01", "tz": "Mars/Olympus_Mons"}, "tz"),
        ({"start": "2024-03-01", "end": "2024-04-01", "tz": "../../etc/passwd"}, "tz"),
        ({"start": "last tuesday", "end": "2024-04-01"}, "start"),
        ({"start": "2024-13-01", "end": "2024-14-01"}, "start"),
        ({"start": "2024-03-01", "end": "2024-02-30"}, "end"),
        ({"start": "2024-03-01", "end": "2024-03-01"}, "end"),
        ({"start": "2024-04-01", "end": "2024-03-01"}, "end"),
        ({"end": "2024-04-01"}, "start"),
        ({"start": "2024-03-01"}, "end"),
    ],
)
def test_bad_parameters_are_422_naming_the_field(
    session_webhook: WebhookClient, params: dict[str, str], field: str
) -> None:
    response = session_webhook.totals(**params)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert [d["loc"] for d in detail] == [["query", field]]
    assert detail[0]["msg"]
