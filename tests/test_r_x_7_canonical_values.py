"""R-X-7 canonical values: one money type and one UTC time type (`domain.values`) in every model.

- property tests over the parsers: no accepted input ever comes back in another form;
- a test generated over every pydantic model of domain/, api/, workflows/ and activities/: every
  money field is `Money` and every time field `UtcDateTime`, so a new model cannot slip;
- the findings, end to end: a PO amount "1E+6", "2500.500" or a JSON number → 422 (were stored
  and answered as sent); a defense scheduled at 10:00+08:00 is answered as 02:00Z and the
  partner's e-mail says 02:00 UTC (said "10:00 UTC");
- days: `CalendarDate` takes `YYYY-MM-DD` only (a time, even at midnight, a number or another
  spelling is 422: `"2027-01-01T10:00:00Z"` was the finding); every date field of every request
  model (route table) is one; a PO's close date is not a past day at submission and
  resubmission, and at PATCH only with a stage or on a won PO.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import types
import typing
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Annotated, Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import BaseModel, TypeAdapter, ValidationError

from domain.opportunity import OpportunityCreate, OpportunityProgress, progress_close_date_refusal
from domain.values import (
    MONEY_PATTERN,
    CalendarDate,
    Money,
    PositiveMoney,
    UtcDateTime,
    earliest_today,
    format_money,
    is_calendar_date,
    is_money,
    is_utc_datetime,
    parse_money,
)
from tests.conftest import Stack
from tests.helpers import ALL_PASS, Actors, po_body
from tests.helpers import complete as complete_task
from tests.helpers import submit as submit_po
from tests.test_certification import (  # noqa: F401  (fixture)
    Certs,
    certs,
    complete,
    mail_for,
    request_defense,
    submit,
)

MONEY = TypeAdapter(Money)
POSITIVE = TypeAdapter(PositiveMoney)
TIME = TypeAdapter(UtcDateTime)


# --- the parsers ----------------------------------------------------------------------------------


@given(st.from_regex(MONEY_PATTERN, fullmatch=True))
def test_r_x_7_an_accepted_amount_comes_back_in_its_canonical_form(text: str) -> None:
    value = MONEY.validate_python(text)
    answered = MONEY.dump_json(value).decode()
    assert answered == f'"{Decimal(text):.2f}"'  # exactly two places, the same value
    assert re.fullmatch(r'"\d+\.\d\d"', answered)
    assert MONEY.validate_json(answered) == value == Decimal(text)


# Any text, and text made of digits of every script (Unicode category Nd, e.g. the fullwidth
# "\uff11\uff12\uff13") and dots: a `\d` in the pattern let those in, answered as "123.00".
AMOUNT_LIKE_TEXT = st.one_of(
    st.text(max_size=30),
    st.text(alphabet=st.one_of(st.characters(categories=["Nd"]), st.just(".")), max_size=18),
)


@given(AMOUNT_LIKE_TEXT)
def test_r_x_7_no_other_text_is_an_amount(text: str) -> None:
    try:
        value = parse_money(text)
    except ValueError:
        return
    # an accepted amount is ASCII digits (pattern written out here, not MONEY_PATTERN) and
    # comes back as the same text: leading zeros dropped, padded to exactly two places
    assert re.fullmatch(r"[0-9]{1,14}(\.[0-9]{1,2})?", text, re.ASCII), text
    whole, _, cents = text.partition(".")
    assert format_money(value) == f"{whole.lstrip('0') or '0'}.{cents.ljust(2, '0')}", text


@pytest.mark.parametrize(
    "text", ["\uff11\uff12\uff13", "\u0661\u0662\u0663", "12.\u0665", "\u0967\u0968\u0969.00"]
)
def test_r_x_7_digits_of_other_scripts_are_not_an_amount(text: str) -> None:
    with pytest.raises(ValidationError):
        MONEY.validate_python(text)


@given(st.one_of(st.integers(), st.floats(), st.booleans()))
def test_r_x_7_a_json_number_is_never_an_amount(number: object) -> None:
    with pytest.raises(ValidationError):
        MONEY.validate_python(number)
    with pytest.raises(ValidationError):
        MONEY.validate_json(str(number).lower())


@pytest.mark.parametrize(
    "text", ["1E+6", "1e6", "2500.500", "2500.001", "-1.00", "+1.00", " 1.00", "1,000.00", "NaN"]
)
def test_r_x_7_exponents_signs_and_more_places_are_refused(text: str) -> None:
    with pytest.raises(ValidationError):
        POSITIVE.validate_python(text)


def test_r_x_7_positive_money_refuses_zero() -> None:
    with pytest.raises(ValidationError):
        POSITIVE.validate_python("0.00")
    assert POSITIVE.dump_json(POSITIVE.validate_python("0.01")) == b'"0.01"'


@given(
    st.datetimes(
        min_value=datetime(1970, 1, 2),
        max_value=datetime(9998, 12, 30),
        timezones=st.one_of(
            st.just(UTC),
            st.integers(min_value=-14 * 60, max_value=14 * 60).map(
                lambda m: timezone(timedelta(minutes=m))
            ),
        ),
    )
)
def test_r_x_7_a_time_is_answered_in_utc_as_the_same_instant(moment: datetime) -> None:
    value = TIME.validate_python(moment.isoformat())
    answered = TIME.dump_json(value).decode().strip('"')
    assert answered.endswith("Z") and "+" not in answered
    again = TIME.validate_json(f'"{answered}"')
    assert again == moment and again.utcoffset() == timedelta(0)
    assert TIME.dump_json(again).decode().strip('"') == answered


@given(
    st.datetimes(
        timezones=st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59).map(
            lambda m: timezone(timedelta(minutes=m))
        ),
    )
)
@example(datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1))))
@example(datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-1))))
def test_r_x_7_any_iso_time_is_a_utc_time_or_a_validation_error(moment: datetime) -> None:
    """Every year 1..9999 and offset: the same instant in UTC, or (when that instant is before
    year 1 or after 9999, e.g. `0001-01-01T00:00:00+01:00`) a ValidationError (422), never an
    OverflowError (a 500)."""
    try:
        value = TIME.validate_python(moment.isoformat())
    except ValidationError:
        offset = moment.utcoffset()
        assert offset is not None
        naive = moment.replace(tzinfo=None)
        assert naive - datetime.min < offset or datetime.max - naive < -offset
        return
    assert value == moment and value.utcoffset() == timedelta(0)


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_r_x_7_a_time_out_of_range_in_utc_is_a_validation_error(text: str) -> None:
    with pytest.raises(ValidationError):
        TIME.validate_python(text)
    with pytest.raises(ValidationError):
        TIME.validate_json(f'"{text}"')


def test_r_x_7_a_naive_time_is_taken_as_utc() -> None:
    value = TIME.validate_python("2026-12-02T10:00:00")
    assert TIME.dump_json(value) == b'"2026-12-02T10:00:00Z"'


# --- every model ----------------------------------------------------------------------------------

PACKAGES = ("domain", "api", "workflows", "activities")
# Names that always hold money or a time, whatever type a model gives them (catches `Any`).
MONEY_NAMES = re.compile(r"^(amount\w*|total|cap)$")
TIME_NAMES = re.compile(r"^(at|\w+_at|valid_until|not_after|defense_until)$")


def all_models() -> list[type[BaseModel]]:
    models: list[type[BaseModel]] = []
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        names = [package_name] + [
            m.name
            for m in pkgutil.walk_packages(package.__path__, f"{package_name}.")
            if not m.name.rpartition(".")[2].startswith("_")
        ]
        for name in names:
            module = importlib.import_module(name)
            for _, cls in inspect.getmembers(module, inspect.isclass):
                if (
                    issubclass(cls, BaseModel)
                    and cls.__module__ == module.__name__
                    and not getattr(cls, "model_config", {}).get("table")
                ):
                    models.append(cls)
    return models


def problems_in(annotation: Any, metadata: list[Any], where: str) -> list[str]:
    """Every Decimal that is not `Money` and every datetime that is not `UtcDateTime`."""
    if typing.get_origin(annotation) is Annotated:
        base, *more = typing.get_args(annotation)
        return problems_in(base, [*metadata, *more], where)
    if annotation is Decimal:
        return [] if is_money(metadata) else [f"{where}: Decimal, not domain.values.Money"]
    if annotation is datetime:
        return [] if is_utc_datetime(metadata) else [f"{where}: datetime, not UtcDateTime"]
    found: list[str] = []
    for arg in typing.get_args(annotation):
        if arg is not type(None):
            found += problems_in(arg, [], where)
    return found


def test_r_x_7_every_model_uses_the_canonical_money_and_time_types() -> None:
    models = all_models()
    names = {m.__name__ for m in models}
    assert {"OpportunityCreate", "OpportunityView", "IncentiveView", "HumanTask"} <= names
    assert {"TaskPublic", "AuditEntryPublic"} <= names
    problems: list[str] = []
    checked = 0
    for model in models:
        for field_name, info in model.model_fields.items():
            where = f"{model.__module__}.{model.__name__}.{field_name}"
            checked += 1
            problems += problems_in(info.annotation, list(info.metadata), where)
            if info.annotation is Any and (
                MONEY_NAMES.match(field_name) or TIME_NAMES.match(field_name)
            ):
                problems.append(f"{where}: Any, where a money or time type belongs")
    assert checked > 100
    assert not problems, "\n".join(problems)


def holds_a_time(annotation: Any) -> bool:
    if annotation is datetime:
        return True
    return any(holds_a_time(arg) for arg in typing.get_args(annotation))


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_r_x_7_every_time_field_of_every_model_refuses_a_time_out_of_range(text: str) -> None:
    """E.g. a task completion's `{"received_at": "0001-01-01T00:00:00+01:00"}` (the incentive
    invoice check's `qualified`): a ValidationError naming the field (the workflow answers
    PF.INVALID_DATA), never an OverflowError escaping pydantic (a 500)."""
    checked = []
    for model in all_models():
        for field_name, info in model.model_fields.items():
            if not holds_a_time(info.annotation):
                continue
            key = info.alias or field_name
            with pytest.raises(ValidationError) as caught:
                model.model_validate({key: text})
            assert any(e["loc"][:1] == (key,) for e in caught.value.errors()), (model, key)
            checked.append(f"{model.__name__}.{field_name}")
    assert "QualifiedData.received_at" in checked and len(checked) > 20


def test_r_x_7_the_registry_check_catches_a_plain_decimal_and_datetime() -> None:
    class Slipped(BaseModel):
        amount: Decimal
        due_at: datetime | None
        when: date

    found = [
        p
        for name, info in Slipped.model_fields.items()
        for p in problems_in(info.annotation, list(info.metadata), name)
    ]
    assert len(found) == 2


def test_r_x_7_openapi_documents_amounts_as_strings() -> None:
    from api.main import create_app
    from config import Settings

    schemas = create_app(Settings()).openapi()["components"]["schemas"]
    amount = schemas["OpportunityCreate"]["properties"]["amount"]
    assert amount["type"] == "string" and amount["pattern"] == MONEY_PATTERN
    assert types is not None  # (keeps the import list honest for readers)


# --- the findings, end to end ---------------------------------------------------------------------


@pytest.mark.parametrize("amount", ["1E+6", "2500.500", 2500, 2500.5])
async def test_r_x_7_a_po_amount_in_another_form_is_422(stack: Stack, amount: object) -> None:
    acme = stack.auth("u-acme-1", ["partner_admin"], "p-acme")
    r = await stack.http.post("/v1/opportunities", json=po_body(amount=amount), headers=acme)
    assert r.status_code == 422, r.text
    assert r.json()["error_code"] == "PF.VALIDATION_FAILED"


async def test_r_x_7_a_po_amount_is_answered_with_exactly_two_places(stack: Stack) -> None:
    acme = stack.auth("u-acme-1", ["partner_admin"], "p-acme")
    r = await stack.http.post("/v1/opportunities", json=po_body(amount="1000000"), headers=acme)
    assert r.status_code == 201, r.text
    assert r.json()["amount"] == "1000000.00"
    view = (await stack.http.get(f"/v1/opportunities/{r.json()['id']}", headers=acme)).json()
    assert view["amount"] == "1000000.00" and view["created_at"].endswith("Z")


async def test_r_x_7_a_defense_time_with_an_offset_is_answered_and_mailed_in_utc(
    certs: Certs,  # noqa: F811
) -> None:
    c = certs
    view = await submit(c.http, c.svc)
    view = await request_defense(c.http, c.svc, view["id"])
    day = (datetime.now(UTC) + timedelta(days=3)).date()
    local = f"{day.isoformat()}T10:00:00+08:00"  # the finding: 10:00 in Beijing
    view = await complete(
        c.http, c.ops, view["open_task_id"], "schedule", data={"scheduled_at": local}
    )
    assert view["attempt"]["defense"]["scheduled_at"] == f"{day.isoformat()}T02:00:00Z"
    history = (await c.http.get(f"/v1/certifications/{view['id']}/history", headers=c.svc)).json()[
        "items"
    ]
    (scheduled,) = [e for e in history if e["action"] == "defense_scheduled"]
    assert scheduled["at"].endswith("Z")
    assert scheduled["details"]["scheduled_at"] == f"{day.isoformat()}T02:00:00Z"
    mails = [m for m in await mail_for(c, view["id"]) if "defense scheduled" in m.subject]
    assert mails and all("02:00 UTC" in m.body and "10:00 UTC" not in m.body for m in mails)


# --- dates: a day is YYYY-MM-DD, and a request's day is judged against today --------------------

DAY = TypeAdapter(CalendarDate)


@given(st.dates())
def test_a_calendar_date_is_exactly_yyyy_mm_dd(day: date) -> None:
    text = day.isoformat()  # always YYYY-MM-DD (year 999 is 0999)
    assert DAY.validate_python(text) == day
    assert DAY.validate_json(f'"{text}"') == day


@given(
    st.one_of(
        st.datetimes().map(lambda moment: moment.isoformat()),
        st.datetimes(timezones=st.just(UTC)).map(lambda m: m.isoformat().replace("+00:00", "Z")),
        st.integers(),
        st.floats(allow_nan=False),
        st.text(max_size=12).filter(lambda t: not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", t)),
    )
)
@example("2027-01-01T10:00:00Z")  # the finding
@example("2027-01-01T00:00:00")  # midnight: pydantic's date took it
@example(1798761600)  # a Unix timestamp: pydantic's date took it
@example("2027-02-30")
@example("2027-1-1")
@example("20270101")
@example("\uff12\uff10\uff12\uff17-01-01")
def test_no_time_number_or_other_spelling_is_a_calendar_date(value: object) -> None:
    with pytest.raises(ValidationError):
        DAY.validate_python(value)


def request_models() -> list[type[BaseModel]]:
    from tests.test_hostile_inputs import request_models as by_name

    return list(by_name().values())


def days_in(annotation: Any, metadata: list[Any]) -> list[bool]:
    """For each `date` (not datetime) in a field's type: whether it is a `CalendarDate`."""
    if typing.get_origin(annotation) is Annotated:
        base, *more = typing.get_args(annotation)
        return days_in(base, [*metadata, *more])
    if annotation is date:
        return [is_calendar_date(metadata)]
    return [found for arg in typing.get_args(annotation) for found in days_in(arg, [])]


def test_every_date_field_of_every_request_model_is_a_calendar_date() -> None:
    """From the route table: every `date` a request body takes (nested models too) is a
    `CalendarDate`; a submission's and resubmission's close date is also `NotPastDate`."""
    found = []
    for model in request_models():
        for name, info in model.model_fields.items():
            days = days_in(info.annotation, list(info.metadata))
            assert all(days), f"{model.__name__}.{name} takes a date that is not a CalendarDate"
            if days:
                found.append(f"{model.__name__}.{name}")
    assert {
        "OpportunityCreate.expected_close_date",
        "ResubmitBody.expected_close_date",
        "OpportunityProgress.expected_close_date",
    } <= set(found)
    for model in request_models():
        if issubclass(model, OpportunityCreate):  # submission and resubmission
            yesterday = (earliest_today() - timedelta(days=1)).isoformat()
            with pytest.raises(ValidationError) as caught:
                model.model_validate({**po_body(), "expected_close_date": yesterday})
            assert [e["loc"] for e in caught.value.errors()] == [("expected_close_date",)]


@pytest.mark.parametrize(
    ("stage", "status", "days", "refused"),
    [
        (None, "approved", -1, True),  # an open deal expected to have closed already
        (None, "approved", 0, False),
        ("won", "approved", -30, False),  # recording the outcome, late
        ("lost", "approved", -30, False),
        (None, "won", -30, False),  # the deal is closed: correcting when it closed
        ("delivered", "won", -400, False),
    ],
)
def test_a_patch_may_date_the_close_in_the_past_only_when_it_is_closed(
    stage: str | None, status: str, days: int, refused: bool
) -> None:
    today = earliest_today()
    progress = OpportunityProgress.model_validate(
        {"stage": stage, "expected_close_date": (today + timedelta(days=days)).isoformat()}
    )
    why = progress_close_date_refusal(progress, status=status, today=today)
    assert (why is not None) is refused


def test_earliest_today_is_the_date_at_utc_minus_12() -> None:
    assert earliest_today(datetime(2026, 11, 30, 11, 59, tzinfo=UTC)) == date(2026, 11, 29)
    assert earliest_today(datetime(2026, 11, 30, 12, 0, tzinfo=UTC)) == date(2026, 11, 30)
    beijing = timezone(timedelta(hours=8))
    # 07:00 on 1 Dec in Beijing is 23:00 on 30 Nov in UTC: 30 Nov is still today at UTC-12
    assert earliest_today(datetime(2026, 12, 1, 7, 0, tzinfo=beijing)) == date(2026, 11, 30)


@pytest.mark.parametrize(
    "close",
    ["2027-01-01T10:00:00Z", "2027-01-01T00:00:00", 1798761600, "2027-02-30", "yesterday"],
)
async def test_a_po_close_date_that_is_not_a_day_is_422(stack: Stack, close: object) -> None:
    acme = stack.auth("u-acme-1", ["partner_admin"], "p-acme")
    if close == "yesterday":
        close = (earliest_today() - timedelta(days=1)).isoformat()
    body = po_body(expected_close_date=close)
    r = await stack.http.post("/v1/opportunities", json=body, headers=acme)
    assert r.status_code == 422, r.text
    assert r.json()["error_code"] == "PF.VALIDATION_FAILED"
    assert [e["loc"] for e in r.json()["details"]] == [["body", "expected_close_date"]]
    listed = await stack.http.get(
        "/v1/opportunities", params={"q": body["customer_name"]}, headers=acme
    )
    assert listed.json()["items"] == []


async def test_close_dates_at_submission_resubmission_and_patch(stack: Stack) -> None:
    """Submission and resubmission: not a past day (today anywhere on Earth is fine). PATCH: a
    past day only with a stage, or once the PO is won (OpportunityProgress's docstring)."""
    a = Actors(stack)
    # (tomorrow, not today: the test's "today" must not turn into the server's yesterday at
    # 12:00 UTC; today itself is test_earliest_today_is_the_date_at_utc_minus_12's)
    soon = (earliest_today() + timedelta(days=1)).isoformat()
    past = (earliest_today() - timedelta(days=3)).isoformat()
    po = await submit_po(stack.http, a.acme, expected_close_date=soon)
    assert po["expected_close_date"] == soon
    returned = await complete_task(
        stack.http, a.pdm_li, po["open_task_id"], "return", comment="dates?",
        data={"criteria": ALL_PASS},
    )  # fmt: skip
    edited = {k: returned[k] for k in po_body() if k in returned}
    r = await stack.http.post(
        f"/v1/opportunities/{po['id']}/resubmit",
        json={**edited, "expected_close_date": past},
        headers=a.acme,
    )
    assert r.status_code == 422 and "expected_close_date" in r.text, r.text
    r = await stack.http.post(f"/v1/opportunities/{po['id']}/resubmit", json=edited, headers=a.acme)
    assert r.status_code == 200, r.text
    approved = await complete_task(
        stack.http, a.pdm_li, r.json()["open_task_id"], "approve", data={"criteria": ALL_PASS}
    )
    assert approved["status"] == "approved"
    url = f"/v1/opportunities/{po['id']}"
    r = await stack.http.patch(url, json={"expected_close_date": past}, headers=a.acme)
    assert r.status_code == 422 and r.json()["error_code"] == "PF.VALIDATION_FAILED", r.text
    r = await stack.http.patch(
        url, json={"expected_close_date": "2027-01-01T00:00:00Z"}, headers=a.acme
    )
    assert r.status_code == 422, r.text
    r = await stack.http.patch(
        url, json={"stage": "won", "expected_close_date": past}, headers=a.acme
    )
    assert r.status_code == 200 and r.json()["expected_close_date"] == past, r.text
    earlier = (earliest_today() - timedelta(days=10)).isoformat()
    r = await stack.http.patch(url, json={"expected_close_date": earlier}, headers=a.acme)
    assert r.status_code == 200 and r.json()["status"] == "won", r.text
