"""Model prices: validity periods, pricing tasks from them, recomputing, and the audit log.

A task without a sent cost is priced from the price of its `ai_model` valid at its
`started_at` ([valid_from, valid_to), valid_to null = open-ended):

    cost = tokens_in * per_million_in / 1e6 + tokens_out * per_million_out / 1e6
           + gpu_seconds * per_gpu_second

in the price's currency, stored in minor units rounded half away from zero to 6 decimals. A
component the price leaves null is not charged; a component it sets needs that usage on the
task, otherwise the task stays unpriced (null, never 0). `price_lateral` is the one SQL
rendering of this rule; the intake and every recompute use it.

Writes take `PRICES_LOCK`: exclusively here, shared by the intake. So a price change waits for
batches being written and the batches after it see the new price: no task is left priced by
a price that changed under it. Nothing here commits; the caller owns the transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Connection, RowMapping, insert, text

from app.fields import AwareDatetime, Currency, Name, PriceComponent, format_decimal
from app.models import model_price_changes
from app.money import minor_unit_factor_sql

PRICES_LOCK = 7_311_402_003  # arbitrary, constant: price writes vs. task intake
Actor = Literal["cli", "api"]
Action = Literal["create", "update", "end", "reprice"]
COMPONENTS = ("per_million_in", "per_million_out", "per_gpu_second")


def price_lateral(task: str) -> str:
    """`LEFT JOIN LATERAL (...) AS price ON true` pricing the row aliased `task`: columns
    price.id, price.currency, price.amount (minor units, 6 decimals), all null when unpriced."""
    factor = minor_unit_factor_sql("p.currency")
    return f"""LEFT JOIN LATERAL (
    SELECT p.id, p.currency,
           round(((coalesce({task}.tokens_in * p.per_million_in, 0)
                   + coalesce({task}.tokens_out * p.per_million_out, 0)) * 0.000001
                  + coalesce({task}.gpu_seconds * p.per_gpu_second, 0)) * {factor}, 6) AS amount
    FROM model_prices AS p
    WHERE {task}.cost_amount IS NULL
      AND p.ai_model = {task}.ai_model
      AND p.valid_from <= {task}.started_at
      AND ({task}.started_at < p.valid_to OR p.valid_to IS NULL)
      AND (p.per_million_in IS NULL OR {task}.tokens_in IS NOT NULL)
      AND (p.per_million_out IS NULL OR {task}.tokens_out IS NOT NULL)
      AND (p.per_gpu_second IS NULL OR {task}.gpu_seconds IS NOT NULL)
    ORDER BY p.valid_from DESC
    LIMIT 1
) AS price ON true"""


# Every task of the model in [lo, hi) or priced by one of `price_ids` is priced again; only rows
# whose priced cost actually changes are written (and counted).
RECOMPUTE_SQL = f"""
WITH target AS (
    SELECT s.id, price.id AS price_id, price.currency, price.amount
    FROM execution_tasks AS s
    {price_lateral("s")}
    WHERE s.ai_model = :ai_model
      AND ((s.started_at >= :lo AND (s.started_at < CAST(:hi AS timestamptz)
                                     OR CAST(:hi AS timestamptz) IS NULL))
           OR s.price_id = ANY(CAST(:price_ids AS bigint[])))
)
UPDATE execution_tasks AS t
   SET priced_amount = target.amount, priced_currency = target.currency,
       price_id = target.price_id, updated_at = now()
  FROM target
 WHERE t.id = target.id
   AND (t.priced_amount, t.priced_currency, t.price_id)
       IS DISTINCT FROM (target.amount, target.currency, target.price_id)
"""

REPRICE_ALL_SQL = f"""
WITH target AS (
    SELECT s.id, price.id AS price_id, price.currency, price.amount
    FROM execution_tasks AS s
    {price_lateral("s")}
    WHERE CAST(:ai_model AS text) IS NULL OR s.ai_model = CAST(:ai_model AS text)
)
UPDATE execution_tasks AS t
   SET priced_amount = target.amount, priced_currency = target.currency,
       price_id = target.price_id, updated_at = now()
  FROM target
 WHERE t.id = target.id
   AND (t.priced_amount, t.priced_currency, t.price_id)
       IS DISTINCT FROM (target.amount, target.currency, target.price_id)
"""


class PriceRuleError(ValueError):
    """A price request the user must fix: `field` names what, `status` is the HTTP answer."""

    def __init__(self, field: str, message: str, *, status: int = 422) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status


# --- what comes in ----------------------------------------------------------------------------


class PriceTerms(BaseModel):
    """The terms of a price: currency, components, validity period."""

    model_config = ConfigDict(extra="forbid")

    currency: Currency
    per_million_in: PriceComponent | None = Field(
        default=None, description="Price of one million input tokens; null: not charged."
    )
    per_million_out: PriceComponent | None = Field(
        default=None, description="Price of one million output tokens; null: not charged."
    )
    per_gpu_second: PriceComponent | None = Field(
        default=None, description="Price of one GPU-second; null: not charged."
    )
    valid_from: AwareDatetime = Field(description="First instant the price applies (inclusive).")
    valid_to: AwareDatetime | None = Field(
        default=None, description="First instant it no longer applies (exclusive); null: open."
    )


class PriceIn(PriceTerms):
    """A price for a model from `valid_from` on."""

    ai_model: Name = Field(description="The model, exactly as tasks name it in `ai_model`.")


class PriceEnd(BaseModel):
    model_config = ConfigDict(extra="forbid")

    valid_to: AwareDatetime = Field(description="First instant the price no longer applies.")


# --- what is stored ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Price:
    id: int
    ai_model: str
    currency: str
    per_million_in: Decimal | None
    per_million_out: Decimal | None
    per_gpu_second: Decimal | None
    valid_from: datetime
    valid_to: datetime | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: RowMapping) -> Price:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})

    def terms(self) -> dict[str, Any]:
        """The price as the audit log and the API show it: decimal strings, ISO timestamps."""
        return {
            "ai_model": self.ai_model,
            "currency": self.currency,
            **{name: format_decimal(getattr(self, name)) for name in COMPONENTS},
            "valid_from": self.valid_from.isoformat(),
            "valid_to": self.valid_to.isoformat() if self.valid_to else None,
        }

    def period(self) -> str:
        end = self.valid_to.isoformat() if self.valid_to else "open-ended"
        return f"[{self.valid_from.isoformat()}, {end})"


@dataclass(frozen=True)
class PriceChange:
    id: int
    price_id: int | None
    ai_model: str | None
    action: str
    old_values: dict[str, Any] | None
    new_values: dict[str, Any] | None
    tasks_recomputed: int
    actor: str
    changed_at: datetime

    @classmethod
    def from_row(cls, row: RowMapping) -> PriceChange:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class PriceResult:
    """The price as it now is, and the audited changes it took (none if nothing changed)."""

    price: Price
    changes: list[PriceChange]


@dataclass(frozen=True)
class UnpricedModel:
    ai_model: str | None
    tasks: int
    first_started_at: datetime
    last_started_at: datetime


# --- reading ----------------------------------------------------------------------------------

_PRICE_COLUMNS = (
    "id, ai_model, currency, per_million_in, per_million_out, per_gpu_second, valid_from, "
    "valid_to, created_at, updated_at"
)


def list_prices(
    conn: Connection, *, ai_model: str | None = None, at: datetime | None = None
) -> list[Price]:
    rows = conn.execute(
        text(
            f"SELECT {_PRICE_COLUMNS} FROM model_prices"
            " WHERE (CAST(:ai_model AS text) IS NULL OR ai_model = CAST(:ai_model AS text))"
            "   AND (CAST(:at AS timestamptz) IS NULL"
            "        OR (valid_from <= CAST(:at AS timestamptz)"
            "            AND (valid_to IS NULL OR CAST(:at AS timestamptz) < valid_to)))"
            " ORDER BY ai_model, valid_from"
        ),
        {"ai_model": ai_model, "at": at},
    ).mappings()
    return [Price.from_row(row) for row in rows]


def get_price(conn: Connection, price_id: int, *, for_update: bool = False) -> Price | None:
    lock = " FOR UPDATE" if for_update else ""
    row = (
        conn.execute(
            text(f"SELECT {_PRICE_COLUMNS} FROM model_prices WHERE id = :id{lock}"),
            {"id": price_id},
        )
        .mappings()
        .one_or_none()
    )
    return Price.from_row(row) if row else None


def list_changes(
    conn: Connection,
    *,
    ai_model: str | None = None,
    price_id: int | None = None,
    limit: int = 100,
) -> list[PriceChange]:
    """The audit log, newest first."""
    rows = conn.execute(
        text(
            "SELECT id, price_id, ai_model, action, old_values, new_values, tasks_recomputed,"
            "       actor, changed_at"
            " FROM model_price_changes"
            " WHERE (CAST(:ai_model AS text) IS NULL OR ai_model = CAST(:ai_model AS text))"
            "   AND (CAST(:price_id AS bigint) IS NULL OR price_id = CAST(:price_id AS bigint))"
            " ORDER BY id DESC LIMIT :limit"
        ),
        {"ai_model": ai_model, "price_id": price_id, "limit": limit},
    ).mappings()
    return [PriceChange.from_row(row) for row in rows]


def unpriced_tasks(
    conn: Connection, *, start: datetime | None = None, end: datetime | None = None
) -> list[UnpricedModel]:
    """Tasks with neither a sent cost nor a price, per model, started in [start, end)."""
    rows = conn.execute(
        text(
            "SELECT ai_model, count(*) AS tasks, min(started_at) AS first_started_at,"
            "       max(started_at) AS last_started_at"
            " FROM execution_tasks"
            " WHERE cost_source = 'unpriced'"
            "   AND (CAST(:start AS timestamptz) IS NULL OR started_at >= :start)"
            "   AND (CAST(:end AS timestamptz) IS NULL OR started_at < :end)"
            " GROUP BY ai_model ORDER BY count(*) DESC, ai_model NULLS LAST"
        ),
        {"start": start, "end": end},
    ).mappings()
    return [UnpricedModel(**row) for row in rows]


# --- writing ----------------------------------------------------------------------------------


def lock_prices(conn: Connection, *, shared: bool) -> None:
    """Transaction-level: shared for writers of tasks, exclusive for writers of prices."""
    function = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    conn.execute(text(f"SELECT {function}(:key)"), {"key": PRICES_LOCK})


def set_price(conn: Connection, spec: PriceIn, *, actor: Actor) -> PriceResult:
    """The price of `spec.ai_model` from `spec.valid_from` on.

    - A price of the model starting at that same instant is corrected to these terms.
    - Otherwise a new price is created. When it is open-ended and the model's open-ended price
      started earlier, that one is ended at `valid_from` (a price change from a date on).
    - Any other overlap is refused (409), naming the price it overlaps.
    Every step recomputes the tasks it covers and is written to the audit log.
    """
    _check_terms(spec)
    lock_prices(conn, shared=False)
    same_start = conn.execute(
        text("SELECT id FROM model_prices WHERE ai_model = :m AND valid_from = :f FOR UPDATE"),
        {"m": spec.ai_model, "f": spec.valid_from},
    ).scalar()
    if same_start is not None:
        return _change(conn, int(same_start), spec, action="update", actor=actor)

    changes: list[PriceChange] = []
    if spec.valid_to is None:
        current = conn.execute(
            text(
                "SELECT id FROM model_prices WHERE ai_model = :m AND valid_to IS NULL"
                " AND valid_from < :f FOR UPDATE"
            ),
            {"m": spec.ai_model, "f": spec.valid_from},
        ).scalar()
        if current is not None:
            _refuse_overlap(conn, spec, exclude=int(current))  # nothing else may overlap
            changes += end_price(conn, int(current), spec.valid_from, actor=actor).changes
    _refuse_overlap(conn, spec, exclude=None)
    row = (
        conn.execute(
            text(
                "INSERT INTO model_prices (ai_model, currency, per_million_in, per_million_out,"
                "  per_gpu_second, valid_from, valid_to)"
                " VALUES (:ai_model, :currency, :per_million_in, :per_million_out,"
                "  :per_gpu_second, :valid_from, :valid_to)"
                f" RETURNING {_PRICE_COLUMNS}"
            ),
            spec.model_dump(),
        )
        .mappings()
        .one()
    )
    price = Price.from_row(row)
    count = _recompute(conn, price.ai_model, [(price.valid_from, price.valid_to)], [price.id])
    changes.append(_audit(conn, price, "create", None, price.terms(), count, actor))
    return PriceResult(price, changes)


def update_price(
    conn: Connection, price_id: int, terms: PriceTerms, *, actor: Actor
) -> PriceResult:
    """Correct a price in place (its model stays): terms and period, overlaps refused."""
    _check_terms(terms)
    lock_prices(conn, shared=False)
    return _change(conn, price_id, terms, action="update", actor=actor)


def end_price(conn: Connection, price_id: int, valid_to: datetime, *, actor: Actor) -> PriceResult:
    """Set the end of a price's period; tasks started from then on lose this price."""
    lock_prices(conn, shared=False)
    price = _existing(conn, price_id)
    if valid_to <= price.valid_from:
        raise PriceRuleError(
            "valid_to", f"must be after the price's valid_from ({price.valid_from.isoformat()})"
        )
    terms = PriceTerms(
        currency=price.currency,
        per_million_in=price.per_million_in,
        per_million_out=price.per_million_out,
        per_gpu_second=price.per_gpu_second,
        valid_from=price.valid_from,
        valid_to=valid_to,
    )
    return _change(conn, price_id, terms, action="end", actor=actor)


def reprice_tasks(conn: Connection, *, actor: Actor, ai_model: str | None = None) -> int:
    """Price every task again from the current prices (e.g. after rows were written straight
    into execution_tasks). Returns, and audits when not 0, how many priced costs changed."""
    lock_prices(conn, shared=False)
    count = conn.execute(text(REPRICE_ALL_SQL), {"ai_model": ai_model}).rowcount
    if count:
        conn.execute(
            insert(model_price_changes).values(
                ai_model=ai_model, action="reprice", tasks_recomputed=count, actor=actor
            )
        )
    return int(count)


def _check_terms(terms: PriceTerms) -> None:
    if all(getattr(terms, name) is None for name in COMPONENTS):
        raise PriceRuleError(
            "per_million_in", "a price needs per_million_in, per_million_out or per_gpu_second"
        )
    if terms.valid_to is not None and terms.valid_to <= terms.valid_from:
        raise PriceRuleError("valid_to", "must be after valid_from")


def _existing(conn: Connection, price_id: int) -> Price:
    price = get_price(conn, price_id, for_update=True)
    if price is None:
        raise PriceRuleError("price_id", f"no price with id {price_id}", status=404)
    return price


def _change(
    conn: Connection, price_id: int, terms: PriceTerms, *, action: Action, actor: Actor
) -> PriceResult:
    old = _existing(conn, price_id)
    values = {name: getattr(terms, name) for name in PriceTerms.model_fields}
    spec = PriceIn(ai_model=old.ai_model, **values)
    _refuse_overlap(conn, spec, exclude=price_id)
    row = (
        conn.execute(
            text(
                "UPDATE model_prices SET currency = :currency, per_million_in = :per_million_in,"
                "  per_million_out = :per_million_out, per_gpu_second = :per_gpu_second,"
                "  valid_from = :valid_from, valid_to = :valid_to, updated_at = now()"
                " WHERE id = :id"
                "   AND (currency, per_million_in, per_million_out, per_gpu_second, valid_from,"
                "        valid_to) IS DISTINCT FROM (:currency, :per_million_in,"
                "        :per_million_out, :per_gpu_second, :valid_from, :valid_to)"
                f" RETURNING {_PRICE_COLUMNS}"
            ),
            {**values, "id": price_id},
        )
        .mappings()
        .one_or_none()
    )
    if row is None:  # the same terms again: nothing changed, nothing to audit
        return PriceResult(old, [])
    new = Price.from_row(row)
    periods = [(old.valid_from, old.valid_to), (new.valid_from, new.valid_to)]
    count = _recompute(conn, new.ai_model, periods, [new.id])
    return PriceResult(new, [_audit(conn, new, action, old.terms(), new.terms(), count, actor)])


def _overlapping(conn: Connection, spec: PriceIn, *, exclude: int | None) -> Price | None:
    row = (
        conn.execute(
            text(
                f"SELECT {_PRICE_COLUMNS} FROM model_prices"
                " WHERE ai_model = :m AND id IS DISTINCT FROM CAST(:exclude AS bigint)"
                "   AND valid_from < coalesce(CAST(:to AS timestamptz), 'infinity')"
                "   AND coalesce(valid_to, 'infinity') > :from"
                " ORDER BY valid_from LIMIT 1"
            ),
            {"m": spec.ai_model, "exclude": exclude, "from": spec.valid_from, "to": spec.valid_to},
        )
        .mappings()
        .one_or_none()
    )
    return Price.from_row(row) if row else None


def _refuse_overlap(conn: Connection, spec: PriceIn, *, exclude: int | None) -> None:
    other = _overlapping(conn, spec, exclude=exclude)
    if other is None:
        return
    inside = other.valid_from <= spec.valid_from and (
        other.valid_to is None or spec.valid_from < other.valid_to
    )
    raise PriceRuleError(
        "valid_from" if inside else "valid_to",
        f"overlaps price {other.id} of {other.ai_model!r} valid {other.period()}; "
        "prices of one model must not overlap: end that one first, or choose another period",
        status=409,
    )


def _recompute(
    conn: Connection,
    ai_model: str,
    periods: list[tuple[datetime, datetime | None]],
    price_ids: list[int],
) -> int:
    lo = min(start for start, _ in periods)
    ends = [end for _, end in periods]
    hi = None if any(end is None for end in ends) else max(e for e in ends if e is not None)
    result = conn.execute(
        text(RECOMPUTE_SQL), {"ai_model": ai_model, "lo": lo, "hi": hi, "price_ids": price_ids}
    )
    return int(result.rowcount)


def _audit(
    conn: Connection,
    price: Price,
    action: Action,
    old: dict[str, Any] | None,
    new: dict[str, Any] | None,
    count: int,
    actor: Actor,
) -> PriceChange:
    row = (
        conn.execute(
            insert(model_price_changes)
            .values(
                price_id=price.id,
                ai_model=price.ai_model,
                action=action,
                old_values=old,
                new_values=new,
                tasks_recomputed=count,
                actor=actor,
            )
            .returning(*model_price_changes.c)
        )
        .mappings()
        .one()
    )
    return PriceChange.from_row(row)
