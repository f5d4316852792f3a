"""R-X-7 canonical values: the one money type and the one time type of every model.

- `Money` (CNY): sent as a decimal string with at most two places (`"1250000"`, `"2500.5"`,
  `"2500.50"`), answered with exactly two (`"1250000.00"`, `"2500.50"`). A JSON number, an
  exponent (`"1E+6"`), a sign, spaces or more than two places (`"2500.500"`) are refused:
  pydantic's ValidationError, which the API answers with 422 `PF.VALIDATION_FAILED`.
  `PositiveMoney` adds `> 0` (every amount a partner applies for or a reviewer sets).
  In Python it is a `Decimal` quantized to cents, so arithmetic never meets a float.
- `UtcDateTime`: any ISO 8601 time; one with an offset is converted to UTC (the instant is
  kept, the offset is not); a naive one is taken as UTC (our choice: the read model's SQLite
  hands back naive UTC times, and callers are told every time is UTC). Answered with `Z`.
- `utc_text(moment)` / `utc_iso(moment)`: how e-mails, the Temporal UI's details and audit
  details write a time: always in UTC, whatever offset the value carried.
- `url_credentials_refusal(url)`: a URL a caller sends never carries credentials
  (`https://user:pass@host/…`): they would be stored, shown to others and logged.
- `CalendarDate`: a day, sent as `YYYY-MM-DD` and nothing else: a time (`2027-01-01T10:00:00Z`,
  even at midnight), a number (pydantic would read a Unix timestamp) or another spelling is
  refused. `NotPastDate` adds "not already over everywhere on Earth" (`earliest_today`): for
  request models only, since the answer changes with the clock (a model a workflow decodes
  must decode its history the same way tomorrow).

Importable from workflows: pure, no I/O.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, Field, PlainSerializer, WithJsonSchema

MONEY_PATTERN = r"^[0-9]{1,14}(\.[0-9]{1,2})?$"
_MONEY = re.compile(MONEY_PATTERN)
CENT = Decimal("0.01")


def parse_money(value: object) -> Decimal:
    """A canonical amount from a decimal string (at most two places) or an exact `Decimal`;
    raises ValueError for anything else (numbers, exponents, signs, more places)."""
    if isinstance(value, Decimal):
        if not value.is_finite() or value < 0 or value != value.quantize(CENT):
            raise ValueError("an amount is >= 0 with at most two decimal places")
        return value.quantize(CENT)
    if not isinstance(value, str):
        raise ValueError('amounts are decimal strings in JSON, e.g. "1250.00", never numbers')
    if not _MONEY.fullmatch(value):
        raise ValueError(
            'an amount is a decimal string with at most two decimal places, e.g. "1250.00" '
            "(no exponent, sign or spaces)"
        )
    try:
        return Decimal(value).quantize(CENT)
    except InvalidOperation as exc:  # pragma: no cover - the pattern admits only digits
        raise ValueError("not an amount") from exc


def format_money(value: Decimal) -> str:
    """The canonical form: exactly two places, no exponent (`"1000000.00"`)."""
    return f"{value.quantize(CENT):f}"


Money = Annotated[
    Decimal,
    BeforeValidator(parse_money),
    PlainSerializer(format_money, return_type=str, when_used="json"),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": MONEY_PATTERN,
            "examples": ["1250000.00"],
            "description": "CNY; a decimal string with at most two places, answered with two",
        }
    ),
]
PositiveMoney = Annotated[Money, Field(gt=0)]


def to_utc(value: datetime) -> datetime:
    """The same instant in UTC; a naive time is taken as UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def parse_utc(value: datetime) -> datetime:
    """`to_utc` for input: a time whose UTC instant is outside years 1..9999
    (`0001-01-01T00:00:00+01:00`) is a ValueError (pydantic: 422), not an OverflowError."""
    try:
        return to_utc(value)
    except OverflowError as exc:
        raise ValueError("the time is out of range once converted to UTC") from exc


def utc_iso(value: datetime) -> str:
    """ISO 8601 in UTC with `Z`: `2026-12-02T02:00:00Z`."""
    return to_utc(value).isoformat().replace("+00:00", "Z")


def utc_text(value: datetime | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
    """For people (e-mails, the Temporal UI): `2026-12-02 02:00 UTC` (`no time` for None)."""
    if value is None:
        return "no time"
    return f"{to_utc(value):{fmt}} UTC"


def _serialize_utc(value: datetime) -> str:
    return utc_iso(value)


UtcDateTime = Annotated[
    datetime,
    AfterValidator(parse_utc),
    PlainSerializer(_serialize_utc, return_type=str, when_used="json"),
]


DATE_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
_DATE = re.compile(DATE_PATTERN)


def parse_calendar_date(value: object) -> date:
    """A day from `YYYY-MM-DD` (ASCII digits) or a `date` that is not a `datetime`; raises
    ValueError for anything else: a time (`2027-01-01T10:00:00Z`), a number, `2027-1-1`,
    `20270101`, an impossible day (`2027-02-30`)."""
    if isinstance(value, datetime):
        raise ValueError("a date is a day (YYYY-MM-DD), not a time")
    if isinstance(value, date):
        return value
    if not isinstance(value, str) or not _DATE.fullmatch(value):
        raise ValueError("a date is written YYYY-MM-DD (e.g. 2027-03-31), without a time")
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(f"{value} is not a day of the calendar") from exc


# The last place on Earth where a calendar day is still today is at UTC-12.
_LATEST_OFFSET = timedelta(hours=12)


def earliest_today(now: datetime | None = None) -> date:
    """The earliest calendar date that is still today somewhere on Earth (the date at UTC-12).
    A day before it is over for every caller, whatever their time zone."""
    return (to_utc(now or datetime.now(UTC)) - _LATEST_OFFSET).date()


def not_past(value: date) -> date:
    """`value`, unless it is over everywhere on Earth (before `earliest_today()`): ValueError."""
    today = earliest_today()
    if value < today:
        raise ValueError(f"{value.isoformat()} is in the past (the earliest today is {today})")
    return value


CalendarDate = Annotated[
    date,
    BeforeValidator(parse_calendar_date),
    WithJsonSchema(
        {
            "type": "string",
            "format": "date",
            "pattern": DATE_PATTERN,
            "examples": ["2027-03-31"],
            "description": "a day, YYYY-MM-DD (no time)",
        }
    ),
]
# A request's day that must not be over yet (e.g. a PO's expected close date at submission).
# Never in a model a workflow decodes: the clock would change what its history decodes to.
NotPastDate = Annotated[CalendarDate, AfterValidator(not_past)]


def url_credentials_refusal(url: str) -> str | None:
    """Why `url` is refused for carrying credentials (userinfo: `user:pass@`, `user@`, `:@`),
    or None. A URL is stored and shown (to reviewers, in delivery logs), so a secret in it
    leaks; it belongs in a header or a signed link, not the URL."""
    netloc = urlsplit(url.strip()).netloc
    if "@" in netloc:
        return "the URL must not carry credentials (user:password@host); remove them"
    return None


def is_calendar_date(metadata: list[Any]) -> bool:
    """Whether a field's metadata carries the `CalendarDate` parser (for the registry test)."""
    return any(isinstance(m, BeforeValidator) and m.func is parse_calendar_date for m in metadata)


def is_money(metadata: list[Any]) -> bool:
    """Whether a field's metadata carries the `Money` parser (for the model registry test)."""
    return any(isinstance(m, BeforeValidator) and m.func is parse_money for m in metadata)


def is_utc_datetime(metadata: list[Any]) -> bool:
    """Whether a field's metadata carries the `UtcDateTime` conversion."""
    return any(isinstance(m, AfterValidator) and m.func is parse_utc for m in metadata)
