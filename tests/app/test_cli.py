"""`roi replay`: stored events reprocessed through the same path as the webhook."""

from __future__ import annotations

import pytest

from tests import stripe_events as se
from tests.conftest import TestDatabase, WebhookClient, run_roi

T = 1_710_072_000  # 2024-03-10 12:00:00 UTC


def test_replay_failed_reprocesses_events_once_the_cause_is_fixed(
    webhook: WebhookClient, db: TestDatabase
) -> None:
    ch = se.charge(amount=2000, created=T, metadata={"stream": "api"})
    re = se.refund(charge=ch["id"], amount=900, created=T + 60)
    refund_event = se.refund_created(refund=re, created=T + 60)
    webhook.deliver(se.charge_succeeded(charge=ch, created=T))

    with db.failing_refunds():
        assert webhook.post(refund_event).status_code == 500
        still_broken = run_roi("replay", "--failed", database_url=db.url)
        assert still_broken.exit_code == 1, still_broken.output
        assert "1 failed" in still_broken.output
        row = db.event(refund_event["id"])
        assert row is not None
        assert (row["status"], row["attempts"]) == ("failed", 2)
        assert "RaiseException" in row["error"]

    result = run_roi("replay", "--failed", database_url=db.url)

    assert result.exit_code == 0, result.output
    assert result.output.strip() == "1 processed"
    row = db.event(refund_event["id"])
    assert row is not None
    assert (row["status"], row["error"], row["attempts"]) == ("processed", None, 3)
    assert db.entries() == {
        ch["id"]: ("charge", "api", 2000, "usd"),
        re["id"]: ("refund", "api", -900, "usd"),
    }

    nothing_left = run_roi("replay", "--failed", database_url=db.url)
    assert nothing_left.exit_code == 0
    assert nothing_left.output.strip() == "no events to replay"


def test_replay_by_id_rebooks_a_processed_event_without_counting_it_twice(
    webhook: WebhookClient, db: TestDatabase
) -> None:
    ch = se.charge(amount=2000, created=T)
    event = se.charge_succeeded(charge=ch, created=T)
    webhook.deliver(event)
    ledger_before = db.ledger()

    result = run_roi("replay", "--id", event["id"], database_url=db.url)

    assert result.exit_code == 0, result.output
    assert result.output.strip() == "1 duplicate"
    assert db.ledger() == ledger_before
    assert db.event(event["id"])["attempts"] == 1  # type: ignore[index]


def test_replay_of_an_event_the_ledger_cannot_use_fails_naming_the_field(
    webhook: WebhookClient, db: TestDatabase
) -> None:
    event = se.charge_succeeded(charge=se.charge(created=T), created=T)
    del event["data"]["object"]["currency"]
    assert webhook.post(event).status_code == 500

    result = run_roi("replay", "--failed", database_url=db.url)

    assert result.exit_code == 1
    assert "data.object.currency" in result.output
    assert "1 failed" in result.output


def test_replay_needs_to_be_told_which_events(db: TestDatabase) -> None:
    result = run_roi("replay", database_url=db.url)
    assert result.exit_code == 1
    assert "--failed" in result.output and "--id" in result.output


# --- `roi streams map/unmap`: a change to the mapping re-attributes history -------------------


def test_mapping_a_customer_re_attributes_its_history_and_unmapping_undoes_it(
    webhook: WebhookClient, db: TestDatabase
) -> None:
    ch = se.charge(amount=3000, created=T, customer="cus_Agency1")
    re = se.refund(charge=ch["id"], amount=1000, created=T + 60)
    other = se.charge(amount=500, created=T, customer="cus_Someone2")
    webhook.deliver(
        se.charge_succeeded(charge=ch, created=T),
        se.refund_created(refund=re, created=T + 60),
        se.charge_succeeded(charge=other, created=T),
    )

    mapped = run_roi("streams", "map", "cus_Agency1", "agency", database_url=db.url)

    assert mapped.exit_code == 0, mapped.output
    assert "1 charge(s) re-attributed" in mapped.output
    assert db.entries() == {
        ch["id"]: ("charge", "agency", 3000, "usd"),
        re["id"]: ("refund", "agency", -1000, "usd"),
        other["id"]: ("charge", "unattributed", 500, "usd"),
    }

    unmapped = run_roi("streams", "unmap", "cus_Agency1", database_url=db.url)

    assert unmapped.exit_code == 0, unmapped.output
    assert db.count("stream_mappings") == 0
    assert {v[1] for v in db.entries().values()} == {"unattributed"}


def test_mapping_a_price_re_attributes_the_charges_of_its_invoices(
    webhook: WebhookClient, db: TestDatabase
) -> None:
    ch_id, in_id = se.new_id("ch"), se.new_id("in")
    price = se.price(id="price_1Seats", product="prod_Seats")
    webhook.deliver(
        se.charge_succeeded(charge=se.charge(id=ch_id, invoice=in_id, created=T), created=T),
        se.invoice_paid(
            invoice=se.invoice(id=in_id, charge=ch_id, lines=[se.invoice_line(price=price)]),
            created=T,
        ),
    )
    assert db.entries()[ch_id][1] == "unattributed"

    result = run_roi("streams", "map", "price_1Seats", "seats", database_url=db.url)

    assert result.exit_code == 0, result.output
    assert db.entries() == {ch_id: ("charge", "seats", 2000, "usd")}


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["streams", "map", "ch_123", "x"], "stripe_id"),
        (["streams", "map", "cus_123", "  "], "stream"),
    ],
)
def test_mapping_refuses_what_cannot_be_mapped(
    db: TestDatabase, args: list[str], says: str
) -> None:
    result = run_roi(*args, database_url=db.url)
    assert result.exit_code == 1
    assert says in result.output
    assert db.count("stream_mappings") == 0
