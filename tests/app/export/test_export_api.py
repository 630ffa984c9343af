"""GET /api/export/*.csv over real HTTP, after real signed webhook events and task posts: exact
bytes, filters, 422s, and agreement with the metrics API to the cent."""

from __future__ import annotations

import csv
import io
import time
from collections import defaultdict
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import httpx
import pytest

from app import exports
from tests import stripe_events as se
from tests.conftest import LiveServer, TestDatabase, WebhookClient
from tests.task_costs import price, task

# 2024-03-10: New York moves from -05:00 to -04:00 at 07:00 UTC.
T = 1_710_072_000  # 2024-03-10 12:00:00 UTC
DAY = {"start": "2024-03-10", "end": "2024-03-11"}
LEDGER_HEADER = (
    "time,stream,kind,entry_key,event_id,charge_id,refund_or_dispute_id,"
    "balance_transaction_id,amount,currency,reporting_amount,reporting_currency,rate,conversion\n"
)


def get(webhook: WebhookClient, path: str, **params: Any) -> httpx.Response:
    return webhook.http.get(path, params=params)


def export(webhook: WebhookClient, name: str, **params: Any) -> bytes:
    response = get(webhook, f"/api/export/{name}.csv", **params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    return response.content


def rows(body: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(body.decode("utf-8"), newline="")))


def fx(webhook: WebhookClient, *rates: tuple[str, str, str]) -> None:
    body = [{"day": day, "currency": c, "rate": rate} for day, c, rate in rates]
    assert webhook.http.post("/api/fx-rates", json=body).status_code == 200


def paid(
    webhook: WebhookClient,
    *,
    id: str,
    amount: int,
    stream: str,
    created: int,
    currency: str = "usd",
    event_id: str | None = None,
) -> dict[str, Any]:
    charge = se.charge(
        id=id, amount=amount, currency=currency, created=created, metadata={"stream": stream}
    )
    webhook.deliver(se.charge_succeeded(charge=charge, created=created, id=event_id))
    return charge


def a_day_of_movements(webhook: WebhookClient) -> None:
    """usd with a refund across New York's DST change, jpy converted by the FX table, kwd with
    no rate (unconverted), an eur charge by FX and its dispute settled in usd with a fee."""
    fx(webhook, ("2024-03-10", "jpy", "0.0066667"), ("2024-03-10", "eur", "1.0931"))
    usd = paid(
        webhook, id="ch_usd", amount=10_000, stream="api", created=T - 6 * 3600, event_id="evt_1"
    )
    refund = se.refund(id="re_usd", charge=usd["id"], amount=1_000, created=T)
    webhook.deliver(se.refund_created(refund=refund, created=T, id="evt_2"))
    paid(
        webhook,
        id="ch_jpy",
        amount=5_000,
        currency="jpy",
        stream='=HYPERLINK("http://evil.example","x")',
        created=T + 60,
        event_id="evt_3",
    )
    paid(
        webhook, id="ch_kwd", amount=1_234, currency="kwd", stream="-gulf", created=T + 120,
        event_id="evt_4",
    )  # fmt: skip
    eur = paid(
        webhook, id="ch_eur", amount=5_000, currency="eur", stream="api", created=T + 180,
        event_id="evt_5",
    )  # fmt: skip
    withdrawal = se.dispute_withdrawal(
        dispute_id="dp_eur", amount=5_400, fee=1_500, created=T + 3600, currency="usd"
    )
    withdrawal["id"] = "txn_dp"
    dispute = se.dispute(
        id="dp_eur", charge=eur["id"], amount=5_000, currency="eur", created=T + 3600,
        balance_transactions=[withdrawal],
    )  # fmt: skip
    webhook.deliver(
        se.dispute_event(
            type="charge.dispute.funds_withdrawn", dispute=dispute, created=T + 3600, id="evt_6"
        )
    )


def test_ledger_csv_bytes_in_utc(webhook: WebhookClient, db: TestDatabase) -> None:
    a_day_of_movements(webhook)

    body = export(webhook, "ledger", **DAY, tz="UTC")

    assert body == "".join(
        line + "\n"
        for line in [
            LEDGER_HEADER.rstrip("\n"),
            "2024-03-10T06:00:00+00:00,api,charge,ch_usd,evt_1,ch_usd,,,100.00,usd,100.00,usd,"
            "1,same",
            "2024-03-10T12:00:00+00:00,api,refund,re_usd,evt_2,ch_usd,re_usd,,-10.00,usd,"
            "-10.00,usd,1,same",
            # The stream is text: neutralised, and quoted by CSV for its comma and quotes.
            '2024-03-10T12:01:00+00:00,"\'=HYPERLINK(""http://evil.example"",""x"")",charge,'
            "ch_jpy,evt_3,ch_jpy,,,5000,jpy,33.3335,usd,0.0066667,fx",
            # No kwd rate: not converted, so the reporting cells are empty (never 0).
            "2024-03-10T12:02:00+00:00,'-gulf,charge,ch_kwd,evt_4,ch_kwd,,,1.234,kwd,,usd,,",
            "2024-03-10T12:03:00+00:00,api,charge,ch_eur,evt_5,ch_eur,,,50.00,eur,54.655,usd,"
            "1.0931,fx",
            # Settled in usd by Stripe: that amount, and the rate it implies.
            "2024-03-10T13:00:00+00:00,api,dispute,dp_eur,evt_6,ch_eur,dp_eur,txn_dp,-50.00,eur,"
            "-54.00,usd,1.08,settlement",
            "2024-03-10T13:00:00+00:00,api,fee,txn_dp,,ch_eur,,txn_dp,-15.00,usd,-15.00,usd,1,"
            "settlement",
        ]
    ).encode("utf-8")


def test_ledger_csv_times_follow_the_zone_across_a_dst_change(
    webhook: WebhookClient, db: TestDatabase
) -> None:
    a_day_of_movements(webhook)

    body = export(webhook, "ledger", start="2024-03-09", end="2024-03-11", tz="America/New_York")

    times = [row["time"] for row in rows(body)]
    assert times == [
        "2024-03-10T01:00:00-05:00",  # 06:00 UTC: before the change
        "2024-03-10T08:00:00-04:00",  # 12:00 UTC: after it
        "2024-03-10T08:01:00-04:00",
        "2024-03-10T08:02:00-04:00",
        "2024-03-10T08:03:00-04:00",
        "2024-03-10T09:00:00-04:00",
        "2024-03-10T09:00:00-04:00",
    ]
    # A half-hour zone, and the day cut in it: 2024-03-10 in Kolkata ends at 18:30 UTC.
    kolkata = rows(export(webhook, "ledger", **DAY, tz="Asia/Kolkata"))
    assert [r["time"] for r in kolkata][:2] == [
        "2024-03-10T11:30:00+05:30",
        "2024-03-10T17:30:00+05:30",
    ]


def test_formula_characters_in_ids_are_neutralised_and_negative_amounts_are_not(
    webhook: WebhookClient, db: TestDatabase
) -> None:
    charge = paid(
        webhook,
        id="@ch_1",
        amount=2_000,
        stream="+sum",
        created=T,
        event_id="=evt_cmd|' /C calc'!A0",
    )
    refund = se.refund(id="-re_2+3", charge=charge["id"], amount=2_000, created=T + 5)
    webhook.deliver(se.refund_created(refund=refund, created=T + 5, id="\tevt_tab"))

    got = rows(export(webhook, "ledger", **DAY))

    assert [(r["stream"], r["entry_key"], r["event_id"], r["charge_id"]) for r in got] == [
        ("'+sum", "'@ch_1", "'=evt_cmd|' /C calc'!A0", "'@ch_1"),
        ("'+sum", "'-re_2+3", "'\tevt_tab", "'@ch_1"),
    ]
    assert got[1]["refund_or_dispute_id"] == "'-re_2+3"
    # Numbers are left alone: a negative amount stays a number.
    assert (got[1]["amount"], got[1]["reporting_amount"]) == ("-20.00", "-20.00")


def test_tasks_csv_bytes(webhook: WebhookClient, db: TestDatabase) -> None:
    fx(webhook, ("2024-03-10", "eur", "1.0931"))
    assert webhook.http.post("/api/prices", json=price(ai_model="gpt-x")).status_code == 200
    batch = [
        task(
            external_id="t-sent", stream="api", started_at="2024-03-10T12:00:00Z",
            cost="12.50", cost_currency="usd", status="succeeded", duration_ms=1500,
        ),
        task(
            external_id="t-priced", stream="api", ai_model="gpt-x",
            started_at="2024-03-10T12:00:01.250000Z", tokens_in=1_000, tokens_out=500,
            status="running", duration_ms=None,
        ),
        task(
            external_id="t-eur", stream="=cmd", ai_model="other", task_type="@type",
            started_at="2024-03-10T13:00:00Z", cost="0.000123", cost_currency="eur",
            gpu_seconds="2.5",
        ),
        task(
            external_id="t-unpriced", stream="api", ai_model="nobody-prices-me",
            started_at="2024-03-10T14:00:00Z", status="failed",
        ),
    ]  # fmt: skip
    assert webhook.http.post("/api/tasks", json=batch).status_code == 200

    body = export(webhook, "tasks", **DAY, tz="Europe/Paris")
    header = (
        "started_at,finished_at,external_id,stream,task_type,ai_model,status,duration_ms,"
        "tokens_in,tokens_out,gpu_seconds,cost,currency,cost_source,reporting_cost,"
        "reporting_currency,rate,conversion"
    )
    assert body.decode("utf-8").split("\n") == [
        header,
        "2024-03-10T13:00:00+01:00,2024-03-10T13:00:01.500000+01:00,t-sent,api,summarize,gpt-x,"
        "succeeded,1500,,,,12.50,usd,sent,12.50,usd,1,same",
        # 1000 in at 2.50/M + 500 out at 10/M = 0.0075 usd: sub-cent, kept exactly.
        "2024-03-10T13:00:01.250000+01:00,,t-priced,api,summarize,gpt-x,running,,1000,500,,"
        "0.0075,usd,priced,0.0075,usd,1,same",
        # 0.000123 eur at 1.0931.
        "2024-03-10T14:00:00+01:00,2024-03-10T14:00:01.500000+01:00,t-eur,'=cmd,'@type,other,"
        "succeeded,1500,,,2.5,0.000123,eur,sent,0.0001344513,usd,1.0931,fx",
        # Unpriced: shown, never priced at 0.
        "2024-03-10T15:00:00+01:00,2024-03-10T15:00:01.500000+01:00,t-unpriced,api,summarize,"
        "nobody-prices-me,failed,1500,,,,,,unpriced,,usd,,",
        "",
    ]


def test_filters_period_and_stream_and_task_filters(
    webhook: WebhookClient, db: TestDatabase
) -> None:
    a_day_of_movements(webhook)
    paid(webhook, id="ch_next", amount=700, stream="api", created=T + 12 * 3600)  # 2024-03-11
    batch = [
        task(external_id="a", ai_model="m1", task_type="x", cost="1", cost_currency="usd"),
        task(external_id="b", ai_model="m2", task_type="x", cost="1", cost_currency="usd"),
        task(external_id="c", ai_model="m1", task_type="y", cost="1", cost_currency="usd"),
        task(external_id="d", stream="other", ai_model="m1", task_type="x", cost="1",
             cost_currency="usd"),
    ]  # fmt: skip
    assert webhook.http.post("/api/tasks", json=batch).status_code == 200

    day = rows(export(webhook, "ledger", **DAY))
    assert "ch_next" not in {r["charge_id"] for r in day}  # end is exclusive
    two_days = rows(export(webhook, "ledger", start="2024-03-10", end="2024-03-12"))
    assert two_days[-1]["charge_id"] == "ch_next"
    # From 12:00 UTC on (a datetime start is inclusive).
    later = rows(export(webhook, "ledger", start="2024-03-10T12:00:00Z", end="2024-03-11"))
    assert later[0]["entry_key"] == "re_usd"
    api_only = rows(export(webhook, "ledger", **DAY, stream="api"))
    assert {r["stream"] for r in api_only} == {"api"}
    assert len(api_only) == 5

    def ids(**params: Any) -> list[str]:
        return [r["external_id"] for r in rows(export(webhook, "tasks", **DAY, **params))]

    assert ids() == ["a", "b", "c", "d"]
    assert ids(ai_model="m1") == ["a", "c", "d"]
    assert ids(ai_model="m1", task_type="x") == ["a", "d"]
    assert ids(stream="other") == ["d"]
    assert ids(ai_model=["m1", "m2"], task_type="x", stream="api") == ["a", "b"]


@pytest.mark.parametrize("name", exports.EXPORTS)
@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"tz": "Mars/Olympus"}, "tz"),
        ({"start": "2024-03-11", "end": "2024-03-10"}, "end"),
        ({"start": "10/03/2024"}, "start"),
        ({"granularity": "fortnight"}, "granularity"),
        ({"stream": ""}, "stream"),
        ({"ai_model": " "}, "ai_model"),
    ],
)
def test_a_bad_parameter_is_422_naming_it(
    webhook: WebhookClient, name: str, params: dict[str, str], field: str
) -> None:
    response = get(webhook, f"/api/export/{name}.csv", **{**DAY, **params})

    assert response.status_code == 422, response.text
    assert [d["loc"][-1] for d in response.json()["detail"]] == [field]


def test_a_missing_period_is_422(webhook: WebhookClient) -> None:
    response = get(webhook, "/api/export/ledger.csv", start="2024-03-10")
    assert response.status_code == 422
    assert [d["loc"][-1] for d in response.json()["detail"]] == ["end"]


def _half_even(amount: Decimal, places: int = 2) -> str:
    return f"{amount.quantize(Decimal(1).scaleb(-places), ROUND_HALF_EVEN):.{places}f}"


@pytest.mark.parametrize("tz", ["UTC", "America/New_York"])
def test_export_sums_equal_the_metrics_api_to_the_cent(
    webhook: WebhookClient, db: TestDatabase, tz: str
) -> None:
    a_day_of_movements(webhook)
    # Amounts whose conversions leave fractions of a cent that only add up exactly.
    fx(webhook, ("2024-03-09", "eur", "1.08337"), ("2024-03-11", "eur", "1.08511"))
    for n, (hours, amount) in enumerate([(-20, 1_111), (-3, 3_333), (5, 777), (20, 2_229)]):
        paid(webhook, id=f"ch_mix_{n}", amount=amount, currency="eur", stream="mix",
             created=T + hours * 3600)  # fmt: skip
        refund = se.refund(charge=f"ch_mix_{n}", amount=amount // 3, currency="eur",
                           created=T + hours * 3600 + 60)  # fmt: skip
        webhook.deliver(se.refund_created(refund=refund, created=T + hours * 3600 + 60))
    tasks = [
        task(stream="mix", started_at="2024-03-10T10:00:00Z", cost="0.123457", cost_currency="eur"),
        task(stream="mix", started_at="2024-03-10T18:00:00Z", cost="1.000001", cost_currency="eur"),
        task(stream="api", started_at="2024-03-10T11:00:00Z", cost="0.333333", cost_currency="usd"),
    ]
    assert webhook.http.post("/api/tasks", json=tasks).status_code == 200
    params = {"start": "2024-03-09", "end": "2024-03-12", "tz": tz}

    ledger = rows(export(webhook, "ledger", **params))
    sums: dict[str, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for row in ledger:
        if row["reporting_amount"]:
            sums[row["stream"]][row["kind"]] += Decimal(row["reporting_amount"])
    for row in rows(export(webhook, "tasks", **params)):
        if row["reporting_cost"]:
            sums[row["stream"]]["task_cost"] += Decimal(row["reporting_cost"])
    response = get(webhook, "/api/metrics/streams", **params)
    assert response.status_code == 200
    metrics = {s["stream"]: s for s in response.json()["streams"]}

    assert set(sums) <= {exports.neutralised(s) for s in metrics}
    for stream, figures in metrics.items():
        got = sums[exports.neutralised(stream)]
        net = got["charge"] + got["refund"] + got["dispute"]
        exported = {
            "gross": _half_even(got["charge"]),
            "refunds": _half_even(-got["refund"]),
            "disputes": _half_even(-got["dispute"]),
            "fees": _half_even(-got["fee"]),
            "net_revenue": _half_even(net),
            "task_cost": _half_even(got["task_cost"]),
        }
        assert exported == {k: figures[k] for k in exported}, stream
    # The unconverted kwd charge is in neither: the API lists it apart, the CSV leaves it empty.
    assert response.json()["trust"]["unconverted_revenue"] == {"kwd": "1.234"}
    assert sums["mix"]["charge"] != sums["mix"]["charge"].quantize(Decimal("0.01"))


@pytest.mark.parametrize(("tz", "granularity"), [("UTC", "day"), ("America/New_York", "hour")])
def test_streams_csv_is_the_timeseries_as_presented(
    webhook: WebhookClient, db: TestDatabase, tz: str, granularity: str
) -> None:
    a_day_of_movements(webhook)
    costly = [task(stream="api", started_at="2024-03-10T13:30:00Z", cost="3", cost_currency="usd")]
    assert webhook.http.post("/api/tasks", json=costly).status_code == 200
    params = {**DAY, "tz": tz, "granularity": granularity}

    body = export(webhook, "streams", **params)
    series = get(webhook, "/api/metrics/timeseries", **params).json()["points"]

    got = rows(body)
    assert len(got) == len(series) >= 3
    for row, point in zip(got, series, strict=True):
        expected = {
            k: ("" if v is None else str(v))
            for k, v in point.items()
            if k not in ("bucket", "stream")
        }
        # The same instant and offset (JSON writes UTC as Z, the CSV as +00:00 like the ledger).
        bucket, presented = datetime.fromisoformat(row.pop("bucket")), point["bucket"]
        assert (bucket, bucket.utcoffset()) == (
            datetime.fromisoformat(presented),
            datetime.fromisoformat(presented).utcoffset(),
        )
        assert row.pop("stream") == exports.neutralised(point["stream"])
        assert row.pop("currency") == "usd"
        assert row == expected


def test_streams_csv_bytes(webhook: WebhookClient, db: TestDatabase) -> None:
    paid(webhook, id="ch_s", amount=10_000, stream="-api", created=T)
    costly = [task(stream="-api", started_at="2024-03-10T13:30:00Z", cost="3", cost_currency="usd")]
    assert webhook.http.post("/api/tasks", json=costly).status_code == 200
    free = [task(stream="lab", started_at="2024-03-10T14:00:00Z", ai_model="nobody-prices-me")]
    assert webhook.http.post("/api/tasks", json=free).status_code == 200

    body = export(webhook, "streams", **DAY, tz="America/New_York")

    assert body == (
        b"bucket,stream,currency,gross,refunds,disputes,fees,net_revenue,task_cost,cost,margin,"
        b"margin_pct,roi,tasks,unpriced_tasks\n"
        b"2024-03-10T00:00:00-05:00,'-api,usd,100.00,0.00,0.00,0.00,100.00,3.00,3.00,97.00,"
        b"0.9700,32.3333,1,0\n"
        # No revenue and no cost: margin % and ROI are undefined, so empty.
        b"2024-03-10T00:00:00-05:00,lab,usd,0.00,0.00,0.00,0.00,0.00,0.00,0.00,0.00,,,1,1\n"
    )


def test_large_exports_stream_in_chunks_with_the_same_bytes(
    webhook: WebhookClient, db: TestDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    a_day_of_movements(webhook)
    whole = export(webhook, "ledger", **DAY)
    monkeypatch.setattr(exports, "CHUNK_BYTES", 100)

    with webhook.http.stream("GET", "/api/export/ledger.csv", params=DAY) as response:
        assert response.headers.get("transfer-encoding") == "chunked"
        assert "content-length" not in response.headers
        assert response.headers["content-disposition"] == (
            'attachment; filename="roi-ledger-2024-03-10-2024-03-11.csv"'
        )
        pieces = list(response.iter_raw())

    assert len(pieces) > 3
    assert b"".join(pieces) == whole


def test_a_download_cut_short_gives_its_connection_back(
    webhook: WebhookClient,
    db: TestDatabase,
    live_server: LiveServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a_day_of_movements(webhook)
    monkeypatch.setattr(exports, "CHUNK_BYTES", 50)
    engine = live_server.app.state.engine
    before = engine.pool.checkedout()  # type: ignore[attr-defined]

    for _ in range(engine.pool.size() + 2):  # type: ignore[attr-defined]
        with (
            httpx.Client(base_url=webhook.base_url) as http,
            http.stream("GET", "/api/export/ledger.csv", params=DAY) as response,
        ):
            next(response.iter_raw())  # then hang up

    # The server notices on its next write; each cancelled COPY then hands its connection back.
    deadline = time.monotonic() + 10
    while engine.pool.checkedout() > before and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.05)
    assert engine.pool.checkedout() == before  # type: ignore[attr-defined]
    assert rows(export(webhook, "ledger", **DAY))


def test_every_export_is_audited_with_who_and_which_filters_and_only_finance_may_export(
    live_server: LiveServer, db: TestDatabase
) -> None:
    from app.auth.principal import Role
    from tests.conftest import TEST_TOKEN_IDS, auth_header

    params = {"start": "2024-03-10", "end": "2024-03-11", "tz": "Europe/Paris", "stream": "api"}
    with httpx.Client(base_url=live_server.url, headers=auth_header(Role.FINANCE)) as http:
        assert http.get("/api/export/ledger.csv", params=params).status_code == 200
    (row,) = db.rows("SELECT * FROM audit_log WHERE action = 'export.ledger'")
    assert row["token_id"] == TEST_TOKEN_IDS[Role.FINANCE]
    assert row["target"] == "/api/export/ledger.csv"
    assert row["details"]["tz"] == "Europe/Paris"
    assert row["details"]["streams"] == ["api"]
    assert row["details"]["start"] == "2024-03-10T00:00:00+01:00"

    viewer = httpx.get(
        f"{live_server.url}/api/export/ledger.csv", params=params, headers=auth_header(Role.VIEWER)
    )
    assert viewer.status_code == 403
    assert db.count("audit_log") == 1


def test_fx_rate_is_the_one_of_the_utc_day_whatever_zone_the_export_is_in(
    webhook: WebhookClient, db: TestDatabase
) -> None:
    # 23:30 UTC on 2024-03-10 is already 2024-03-11 in Tokyo; the rate of the UTC day applies,
    # as in the metrics. A rate for the other day is there to be picked by mistake.
    fx(webhook, ("2024-03-10", "eur", "1.0931"), ("2024-03-11", "eur", "2"))
    late = T + 11 * 3600 + 1800
    paid(webhook, id="ch_late", amount=5_000, currency="eur", stream="api", created=late)
    paid(webhook, id="ch_usd", amount=700, stream="api", created=late + 1)

    got = rows(export(webhook, "ledger", start="2024-03-10", end="2024-03-13", tz="Asia/Tokyo"))

    assert [(r["time"], r["reporting_amount"], r["rate"], r["conversion"]) for r in got] == [
        ("2024-03-11T08:30:00+09:00", "54.655", "1.0931", "fx"),
        ("2024-03-11T08:30:01+09:00", "7.00", "1", "same"),
    ]
