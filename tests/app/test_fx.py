"""FX rates: `roi fx import` (CSV), the API, and the pure conversion helper."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from app.fx import Rates, convert_minor, rate_day
from tests.conftest import LiveServer, TestDatabase, run_roi
from tests.task_costs import client


@pytest.fixture
def api(live_server: LiveServer, db: TestDatabase) -> Iterator[httpx.Client]:
    yield from client(live_server)


def rates(db: TestDatabase) -> dict[tuple[str, str, str], Decimal]:
    return {
        (str(r["day"]), r["currency"], r["quote_currency"]): r["rate"]
        for r in db.rows("SELECT * FROM fx_rates")
    }


def write_csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rates.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_import_defaults_the_quote_currency_and_a_rerun_changes_nothing(
    db: TestDatabase, tmp_path: Path
) -> None:
    path = write_csv(
        tmp_path,
        "\ufeffday,currency,rate,quote_currency\n"  # a BOM, as spreadsheets write it
        "2024-03-10,EUR,1.0931,\n"
        "2024-03-10,jpy,0.006712,\n"
        "2024-03-10,usd,0.9148,eur\n"
        "2024-03-11,eur,1.0925,usd\n"
        "2024-03-11,eur,1.0925,usd\n",  # the same rate twice is fine
    )
    result = run_roi("fx", "import", str(path), database_url=db.url)
    assert result.exit_code == 0, result.output
    assert "4 rate(s) inserted, 0 updated, 0 unchanged" in result.output
    assert rates(db) == {
        ("2024-03-10", "eur", "usd"): Decimal("1.0931"),
        ("2024-03-10", "jpy", "usd"): Decimal("0.006712"),
        ("2024-03-10", "usd", "eur"): Decimal("0.9148"),
        ("2024-03-11", "eur", "usd"): Decimal("1.0925"),
    }
    stamps = db.rows("SELECT xmin::text AS x FROM fx_rates ORDER BY day, currency")

    rerun = run_roi("fx", "import", str(path), database_url=db.url)
    assert "0 rate(s) inserted, 0 updated, 4 unchanged" in rerun.output
    assert db.rows("SELECT xmin::text AS x FROM fx_rates ORDER BY day, currency") == stamps

    corrected = write_csv(tmp_path, "day,currency,rate\n2024-03-10,eur,1.0935\n")
    changed = run_roi("fx", "import", str(corrected), database_url=db.url)
    assert "0 rate(s) inserted, 1 updated, 0 unchanged" in changed.output
    assert rates(db)[("2024-03-10", "eur", "usd")] == Decimal("1.0935")

    listed = run_roi("fx", "list", "--currency", "EUR", database_url=db.url)
    assert listed.output.splitlines() == [
        "2024-03-10 eur usd 1.0935",
        "2024-03-11 eur usd 1.0925",
    ]


def test_csv_with_bad_rows_is_refused_naming_line_and_field(
    db: TestDatabase, tmp_path: Path
) -> None:
    path = write_csv(
        tmp_path,
        "day,currency,rate\n"
        "2024-03-10,eur,1.0931\n"
        "10/03/2024,eur,1.09\n"
        "2024-03-10,euro,1.09\n"
        "2024-03-11,eur,1,09\n"
        "2024-03-12,eur,\n"
        "2024-03-13,gbp,0\n"
        "2024-03-13,usd,1\n"
        "2024-03-10,eur,1.0932\n"
        "2024-03-14,chf,1.0000000000001\n",
    )
    result = run_roi("fx", "import", str(path), database_url=db.url)
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("line ")]
    assert errors == [
        "line 3: day: expected a day as YYYY-MM-DD, got '10/03/2024'",
        "line 4: currency: expected a 3-letter ISO 4217 code such as usd, got 'euro'",
        "line 5: (line): more cells than the header has columns",
        "line 6: rate: is required",
        "line 7: rate: must be greater than 0",
        "line 8: currency: is the quote currency (usd)",
        "line 9: rate: 1.0932 conflicts with 1.0931 given at 2 for the same day and currencies",
        "line 10: rate: more than 12 decimals; it is never rounded silently, round it yourself",
    ]
    assert "nothing was written" in result.output
    assert db.count("fx_rates") == 0


def test_csv_header_is_checked(db: TestDatabase, tmp_path: Path) -> None:
    path = write_csv(tmp_path, "date,currency,value\n2024-03-10,eur,1.09\n")
    result = run_roi("fx", "import", str(path), database_url=db.url)
    assert result.exit_code == 1
    for expected in (
        "line 1: date: unknown column",
        "line 1: value: unknown column",
        "line 1: day: missing column",
        "line 1: rate: missing column",
    ):
        assert expected in result.output


def test_api_adds_and_lists_rates_and_refuses_floats(api: httpx.Client, db: TestDatabase) -> None:
    response = api.post(
        "/api/fx-rates",
        json=[
            {"day": "2024-03-10", "currency": "eur", "rate": "1.0931"},
            {"day": "2024-03-10", "currency": "usd", "quote_currency": "jpy", "rate": 150},
        ],
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"inserted": 2, "updated": 0, "unchanged": 0}
    listed = api.get("/api/fx-rates", params={"start": "2024-03-10", "end": "2024-03-11"})
    assert listed.json() == [
        {"day": "2024-03-10", "currency": "eur", "quote_currency": "usd", "rate": "1.0931"},
        {"day": "2024-03-10", "currency": "usd", "quote_currency": "jpy", "rate": "150"},
    ]

    floats = api.post(
        "/api/fx-rates",
        json=[
            {"day": "2024-03-11", "currency": "eur", "rate": "1.09"},
            {"day": "2024-03-11", "currency": "gbp", "rate": 1.27},
        ],
    )
    assert floats.status_code == 422
    [error] = floats.json()["detail"]
    assert error["loc"] == ["body", 1, "rate"]
    assert "float" in error["msg"]

    same = api.post("/api/fx-rates", json=[{"day": "2024-03-11", "currency": "usd", "rate": "1"}])
    assert same.status_code == 422
    assert same.json()["detail"] == [
        {"loc": ["body", 0, "currency"], "msg": "is the quote currency (usd)"}
    ]
    assert db.count("fx_rates") == 2


# --- the pure helper --------------------------------------------------------------------------


def test_convert_minor_follows_each_currencys_minor_unit() -> None:
    assert convert_minor(1234, "usd", "jpy", Decimal("150.25")) == Decimal("1854.085000")
    assert convert_minor(1000, "jpy", "usd", Decimal("0.0067")) == Decimal("670.000000")
    assert convert_minor(1500, "kwd", "usd", Decimal("3.25")) == Decimal("487.500000")
    # Half away from zero at the sixth decimal of the minor unit.
    assert convert_minor(1, "usd", "eur", Decimal("0.0000025")) == Decimal("0.000003")
    assert convert_minor(-1, "usd", "eur", Decimal("0.0000025")) == Decimal("-0.000003")
    assert convert_minor(Decimal("0.420000"), "usd", "eur", Decimal("0.5")) == Decimal("0.210000")


def test_rates_convert_with_the_rate_of_that_day_or_not_at_all() -> None:
    table = Rates("usd", {(date(2024, 3, 10), "eur"): Decimal("1.1")})
    assert table.convert(1000, "eur", date(2024, 3, 10)) == Decimal("1100.000000")
    assert table.convert(1000, "usd", date(1999, 1, 1)) == Decimal("1000.000000")
    assert table.convert(1000, "eur", date(2024, 3, 11)) is None  # no carrying forward
    assert table.convert(1000, "gbp", date(2024, 3, 10)) is None


def test_rate_day_is_the_utc_day_of_the_booking() -> None:
    late_in_new_york = datetime(2024, 3, 10, 22, 30, tzinfo=timezone(timedelta(hours=-5)))
    assert rate_day(late_in_new_york) == date(2024, 3, 11)
    assert rate_day(datetime(2024, 3, 10, 0, 0, tzinfo=UTC)) == date(2024, 3, 10)
    with pytest.raises(ValueError, match="timezone-aware"):
        rate_day(datetime(2024, 3, 10))


def test_load_rates_reads_one_quote_currency_for_a_range(db: TestDatabase) -> None:
    from app.fx import load_rates

    db.execute(
        "INSERT INTO fx_rates (day, currency, quote_currency, rate) VALUES"
        " ('2024-03-09', 'eur', 'usd', 1.08), ('2024-03-10', 'eur', 'usd', 1.09),"
        " ('2024-03-10', 'eur', 'gbp', 0.85), ('2024-03-11', 'eur', 'usd', 1.10)"
    )
    with db.engine.connect() as conn:
        loaded = load_rates(conn, "usd", date(2024, 3, 10), date(2024, 3, 11))
    assert dict(loaded.by_day) == {(date(2024, 3, 10), "eur"): Decimal("1.090000000000")}
