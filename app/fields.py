"""Field types for money, usage and time coming in (API bodies, CSV and JSON Lines rows).

One parser per kind of value, shared by the task intake, the prices and the FX rates, so that
the API and the CLI accept and refuse exactly the same things. Values may come typed (JSON) or
as text (CSV); either way:

- decimals are decimal strings (or integers), never floats: a JSON number with a fraction is
  refused, naming the field, because it is not exact;
- counts are non-negative integers (or digit strings);
- timestamps are ISO 8601 strings with a UTC offset; naive ones are refused;
- currencies are 3-letter ISO 4217 codes, lower-cased.

Errors are `PydanticCustomError`s whose message is the reason shown to the user.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BeforeValidator, StringConstraints, WithJsonSchema
from pydantic_core import PydanticCustomError

BIGINT_MAX = 2**63 - 1
_DECIMAL = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_CURRENCY = re.compile(r"[a-z]{3}")


def parse_decimal(
    value: object, *, places: int | None, integer_digits: int, signed: bool = False
) -> Decimal:
    """A decimal from a decimal string or an integer, with at most `places` decimals."""
    if isinstance(value, float):
        raise PydanticCustomError(
            "float_not_allowed",
            "a JSON number with a fraction is a float and not exact; "
            'send a decimal string instead, e.g. "{example}"',
            {"example": _example(value)},
        )
    if isinstance(value, bool):
        raise PydanticCustomError("decimal_type", "expected a decimal string, got a boolean")
    if isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, Decimal):
        number = value
    elif isinstance(value, str):
        text = value.strip()
        if not _DECIMAL.fullmatch(text):
            raise PydanticCustomError(
                "decimal_parsing",
                "expected a decimal number like 12.34 (no exponent, no thousands separator), "
                "got {value}",
                {"value": repr(value)},
            )
        number = Decimal(text)
    else:
        raise PydanticCustomError(
            "decimal_type",
            "expected a decimal string, got {kind}",
            {"kind": type(value).__name__},
        )
    if not number.is_finite():
        raise PydanticCustomError("decimal_parsing", "must be a finite number")
    if number < 0 and not signed:
        raise PydanticCustomError("decimal_negative", "must not be negative")
    if abs(number) >= Decimal(10) ** integer_digits:
        raise PydanticCustomError(
            "decimal_too_large",
            "too large: at most {digits} digits before the decimal point",
            {"digits": integer_digits},
        )
    if places is not None and number != number.quantize(Decimal(1).scaleb(-places)):
        raise PydanticCustomError(
            "decimal_places",
            "more than {places} decimals; it is never rounded silently, round it yourself",
            {"places": places},
        )
    return number


def _example(value: float) -> str:
    text = repr(value)
    return text if "e" not in text.lower() else f"{Decimal(text):f}"


def parse_count(value: object) -> int:
    """A non-negative integer (bigint) from an integer or a digit string."""
    if isinstance(value, bool):
        raise PydanticCustomError("int_type", "expected an integer, got a boolean")
    if isinstance(value, float):
        raise PydanticCustomError(
            "int_type", "expected an integer, got the float {value}", {"value": repr(value)}
        )
    if isinstance(value, str):
        text = value.strip()
        if not text.isdigit() or not text.isascii():
            raise PydanticCustomError(
                "int_parsing",
                "expected a non-negative integer, got {value}",
                {"value": repr(value)},
            )
        number = int(text)
    elif isinstance(value, int):
        number = value
    else:
        raise PydanticCustomError(
            "int_type", "expected an integer, got {kind}", {"kind": type(value).__name__}
        )
    if number < 0:
        raise PydanticCustomError("int_negative", "must not be negative")
    if number > BIGINT_MAX:
        raise PydanticCustomError("int_too_large", "too large (more than 2**63 - 1)")
    return number


def parse_aware_datetime(value: object) -> datetime:
    """An ISO 8601 timestamp with a UTC offset (`Z` or `+hh:mm`)."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise PydanticCustomError(
                "datetime_parsing",
                "expected an ISO 8601 timestamp with a UTC offset, "
                "e.g. 2024-03-10T12:00:00Z, got {value}",
                {"value": repr(value)},
            ) from None
    else:
        raise PydanticCustomError(
            "datetime_type",
            "expected an ISO 8601 timestamp string, got {kind}",
            {"kind": type(value).__name__},
        )
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise PydanticCustomError(
            "datetime_naive",
            "has no UTC offset; add one, e.g. 2024-03-10T12:00:00Z or +01:00 (got {value})",
            {"value": repr(str(value))},
        )
    return parsed


def parse_day(value: object) -> date:
    """A calendar day, YYYY-MM-DD."""
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            if len(text) == 10:
                return date.fromisoformat(text)
        except ValueError:
            pass
    raise PydanticCustomError(
        "date_parsing", "expected a day as YYYY-MM-DD, got {value}", {"value": repr(value)}
    )


def parse_currency(value: object) -> str:
    if isinstance(value, str):
        code = value.strip().lower()
        if _CURRENCY.fullmatch(code):
            return code
    raise PydanticCustomError(
        "currency",
        "expected a 3-letter ISO 4217 code such as usd, got {value}",
        {"value": repr(value)},
    )


def _decimal_schema(example: str, description: str) -> WithJsonSchema:
    return WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^\d+(\.\d+)?$", "examples": [example]},
                {"type": "integer", "minimum": 0},
            ],
            "description": description + " A decimal string (or an integer), never a float.",
        }
    )


def _price_component(value: object) -> Decimal:
    return parse_decimal(value, places=12, integer_digits=12)


def _major_amount(value: object) -> Decimal:
    # Places depend on the currency and are checked where the currency is known.
    return parse_decimal(value, places=None, integer_digits=16)


def _gpu_seconds(value: object) -> Decimal:
    return parse_decimal(value, places=6, integer_digits=12)


def _fx_rate(value: object) -> Decimal:
    number = parse_decimal(value, places=12, integer_digits=12)
    if number == 0:
        raise PydanticCustomError("rate_zero", "must be greater than 0")
    return number


PriceComponent = Annotated[
    Decimal,
    BeforeValidator(_price_component),
    _decimal_schema("2.50", "In major units of the price's currency, up to 12 decimals."),
]
MajorAmount = Annotated[
    Decimal,
    BeforeValidator(_major_amount),
    _decimal_schema(
        "0.0042",
        "In major units of its currency (12.34 usd, 1234 jpy), exact to a millionth of the "
        "minor unit.",
    ),
]
GpuSeconds = Annotated[
    Decimal,
    BeforeValidator(_gpu_seconds),
    _decimal_schema("12.5", "GPU-seconds used, up to 6 decimals."),
]
FxRate = Annotated[
    Decimal,
    BeforeValidator(_fx_rate),
    _decimal_schema("1.0931", "Units of quote_currency for one unit of currency, > 0."),
]


Count = Annotated[
    int,
    BeforeValidator(parse_count),
    WithJsonSchema({"type": "integer", "minimum": 0, "maximum": BIGINT_MAX}),
]
AwareDatetime = Annotated[
    datetime,
    BeforeValidator(parse_aware_datetime),
    WithJsonSchema(
        {
            "type": "string",
            "format": "date-time",
            "description": "ISO 8601 with a UTC offset; naive timestamps are refused",
            "examples": ["2024-03-10T12:00:00Z"],
        }
    ),
]
Day = Annotated[
    date,
    BeforeValidator(parse_day),
    WithJsonSchema({"type": "string", "format": "date", "examples": ["2024-03-10"]}),
]
Currency = Annotated[
    str,
    BeforeValidator(parse_currency),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": "^[A-Za-z]{3}$",
            "description": "ISO 4217 code, stored lower-cased",
            "examples": ["usd"],
        }
    ),
]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]


def format_decimal(value: Decimal | None) -> str | None:
    """A decimal string without trailing zeros or exponent: Decimal('2.500000') -> '2.5'."""
    if value is None:
        return None
    text = f"{value:f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text if text not in ("-0", "") else "0"


def error_reasons(errors: list[Any]) -> list[tuple[str, str]]:
    """(field, reason) pairs from pydantic's ValidationError.errors()."""
    pairs: list[tuple[str, str]] = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ()) if part != "body"]
        field = ".".join(loc) or "(row)"
        reason = str(error.get("msg", "invalid"))
        if error.get("type") == "extra_forbidden":
            reason = "unknown field"
        elif error.get("type") == "missing":
            reason = "is required"
        pairs.append((field, reason))
    return pairs


@dataclass(frozen=True)
class RowError:
    """What is wrong with one row of a batch: its place (index in a JSON array, or line in a
    file), the field at fault and why."""

    index: int
    field: str
    reason: str

    def as_json(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "reason": self.reason}


@dataclass(frozen=True)
class BadLine:
    """A line of a file that is not even a row (invalid JSON, too many cells): reported as
    a problem of the whole line, never validated further."""

    reason: str
