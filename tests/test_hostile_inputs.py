"""Hostile input is a 4xx in the error envelope, never a 500: each kind proven over every route
it can reach, enumerated from the app's own OpenAPI and route table (a new route is covered
without editing this file).

- every `date-time` query parameter with a time out of range once converted to UTC;
- every `cursor` / `after` query parameter with cursors we never handed out (huge, negative,
  trailing newline, not base64, base64 of junk, times out of range, NUL ids) → 400;
- every POST/PUT/PATCH with a body too deep to parse, not UTF-8, or not JSON, with and without
  an Idempotency-Key → 400 PF.MALFORMED_JSON;
- every string field of every request body, every string query parameter and the path with a
  control character (NUL: PostgreSQL refuses it in text and jsonb) → 422 PF.VALIDATION_FAILED;
- every request model (route table, nested ones too) forbids unknown fields, and every body
  route answers `{"amout": …}` with 422 naming it (no idempotency record kept);
- every query parameter sent empty (`?process_id=`) → 4xx, never "no filter";
- a single-valued header (Idempotency-Key on every command route, Authorization, Content-Type,
  X-Request-ID) sent twice → 400, nothing written;
- every claim we read with a degenerate value (`partner_id: ""`, blank `sub`, roles not a list
  of known roles) → 401;
- every URL field of every request model with credentials in it → 422.
"""

from __future__ import annotations

import base64
import inspect
import json
import re
import time
import typing
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import jwt
import pytest
from pydantic import BaseModel

from api.auth import TokenClaims
from api.frame import body_models
from api.idempotency import scope_of
from api.main import create_app
from api.middleware import (
    SINGLE_VALUED_HEADERS,
    control_characters_in_body,
    control_characters_in_url,
    repeated_single_headers,
)
from api.openapi import route_table
from api.routes.lists import RESOURCES
from config import Settings
from domain.errors import STATUS_BY_CODE
from domain.principal import STAFF_ROLES
from store.models import Account, IdempotencyRecord
from tests.conftest import Stack
from tests.helpers import po_body
from tests.test_lists import seed

ALL_ROLES = [str(role) for role in STAFF_ROLES]


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.urlsafe_b64encode(raw).decode()


OUT_OF_RANGE_TIMES = ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"]

HOSTILE_CURSORS = [
    "",
    "-1",
    "!!!",
    "not base64 at all",
    "99999999999999999999",
    "9223372036854775808",
    "evt_" + "f" * 32,
    "evt_" + "8" + "0" * 31,
    "evt_" + "0" * 32 + "\n",
    "evt_" + "0" * 31 + "1\n",
    b64("99999999999999999999:0"),
    b64("9223372036854775808:0"),
    b64("-1:-1"),
    b64("1:1\n"),
    b64("\uff11:\uff12"),
    b64(b"\xff\xfe\x00"),
    b64("[" * 30),
    b64('{"u":"0001-01-01T00:00:00+01:00","i":"x"}'),
    b64('{"u":"2026-01-01T00:00:00","i":"a\\u0000"}'),
    b64('{"k":"0001-01-01T00:00+01:00","i":"x","s":"due_at"}'),
    b64('{"k":"2026-01-01T00:00","i":"\\u0000","s":"due_at"}'),
    b64('{"u":"2026-01-01T00:00:00","i":7}'),
]

UNPARSABLE_BODIES = {
    "deep": b"[" * 1200 + b"]" * 1200,
    "deep-object": b'{"a":' * 1200 + b"1" + b"}" * 1200,
    "not-utf8": b'{"body": "\xff\xfe"}',
    "syntax": b'{"body": ',
}


def assert_envelope(
    r: httpx.Response, *, status: int | None = None, code: str | None = None
) -> None:
    what = f"{r.request.method} {r.request.url}: {r.status_code} {r.text[:300]}"
    assert 400 <= r.status_code < 500, what
    body = r.json()
    assert set(body) == {"error_code", "error_msg", "details"}, what
    assert STATUS_BY_CODE[body["error_code"]] == r.status_code, what
    if status is not None:
        assert r.status_code == status, what
    if code is not None:
        assert body["error_code"] == code, what


def spec_of(stack: Stack) -> dict[str, Any]:
    spec: dict[str, Any] = create_app(stack.settings).openapi()
    return spec


def query_params(op: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in op.get("parameters", []) if p["in"] == "query"]


def query_parameters(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(path, method, parameter) of every query parameter of every operation in the OpenAPI."""
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            for param in query_params(op):
                yield path, method, param


def alternatives(schema: dict[str, Any]) -> list[dict[str, Any]]:
    return list(schema.get("anyOf", [schema]))


async def fill_paths(stack: Stack) -> dict[str, str]:
    """Path parameter values that exist and are visible to the caller: a seeded row per list
    resource (keyed by the path prefix), one webhook subscription."""
    values: dict[str, str] = {}
    for resource in RESOURCES:
        [item_id] = await seed(stack, resource, partner_id="p-acme", n=1, at=datetime.now(UTC))
        values[f"/v1/{resource.path}/{{item_id}}"] = item_id
    r = await stack.http.post(
        "/v1/webhook-subscriptions",
        json={"url": "http://127.0.0.1:9/hook", "event_types": ["opportunity.approved"]},
        headers=stack.auth("u-acme-1", ["partner_admin"], "p-acme"),
    )
    assert r.status_code == 201, r.text
    values["{subscription_id}"] = r.json()["id"]
    return values


def concrete(path: str, values: dict[str, str]) -> str:
    for prefix, value in values.items():
        if prefix.startswith("/") and path.startswith(prefix):
            path = path.replace("{item_id}", value, 1)
    if "{subscription_id}" in path:
        path = path.replace("{subscription_id}", values["{subscription_id}"])
    return re.sub(r"\{[^}]+\}", "no-such-id", path)


def identity_for(stack: Stack, path: str) -> dict[str, str]:
    if path.startswith("/v1/webhook-subscriptions"):
        return stack.auth("u-acme-1", ["partner_admin"], "p-acme")
    return stack.auth("staff-hostile", ALL_ROLES)


# --- 1. times out of range in UTC -----------------------------------------------------------------


async def test_every_date_time_query_parameter_refuses_a_time_out_of_range_in_utc(
    stack: Stack,
) -> None:
    spec = spec_of(stack)
    values = await fill_paths(stack)
    checked = []
    for path, method, param in query_parameters(spec):
        formats = {s.get("format") for s in alternatives(param["schema"])}
        if "date-time" not in formats:
            continue
        for text in OUT_OF_RANGE_TIMES:
            r = await stack.http.request(
                method.upper(),
                concrete(path, values),
                params={param["name"]: text},
                headers=identity_for(stack, path),
            )
            assert_envelope(r, status=422, code="PF.VALIDATION_FAILED")
        checked.append((path, param["name"]))
    # the seven lists' `updated_after` and the inbox's `due_before` are among them
    assert ("/v1/tasks", "due_before") in checked
    assert {p for p, n in checked if n == "updated_after"} >= {f"/v1/{r.path}" for r in RESOURCES}


# --- 2. cursors we never handed out ---------------------------------------------------------------


async def test_every_cursor_parameter_refuses_hostile_cursors_with_400(stack: Stack) -> None:
    spec = spec_of(stack)
    values = await fill_paths(stack)
    checked = []
    for path, method, param in query_parameters(spec):
        if param["name"] not in ("cursor", "after"):
            continue
        max_length = min(
            (s["maxLength"] for s in alternatives(param["schema"]) if "maxLength" in s),
            default=10**6,
        )
        for cursor in HOSTILE_CURSORS:
            if len(cursor) > max_length:
                continue  # refused by the schema (422), not by the decoder
            r = await stack.http.request(
                method.upper(),
                concrete(path, values),
                params={param["name"]: cursor},
                headers=identity_for(stack, path),
            )
            assert_envelope(r, status=400, code="PF.BAD_REQUEST")
        checked.append(path)
    assert "/v1/events" in checked
    assert "/v1/opportunities/{item_id}/comments" in checked
    assert "/v1/webhook-subscriptions/{subscription_id}/deliveries" in checked
    assert {f"/v1/{r.path}" for r in RESOURCES} | {"/v1/tasks"} <= set(checked)


# --- 3. bodies that do not parse ------------------------------------------------------------------


async def test_every_body_route_answers_an_unparsable_body_with_malformed_json(
    stack: Stack,
) -> None:
    values = await fill_paths(stack)
    spec = spec_of(stack)
    with_body = 0
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if method not in ("post", "put", "patch"):
                continue
            for body in UNPARSABLE_BODIES.values():
                for key in (None, uuid.uuid4().hex):
                    headers = {**identity_for(stack, path), "Content-Type": "application/json"}
                    if key:
                        headers["Idempotency-Key"] = key
                    r = await stack.http.request(
                        method.upper(), concrete(path, values), content=body, headers=headers
                    )
                    if "requestBody" in op:
                        assert_envelope(r, status=400, code="PF.MALFORMED_JSON")
                    elif r.status_code >= 400:  # no body to read: the route's own answer
                        assert_envelope(r)
            with_body += "requestBody" in op
    assert with_body > 10


# --- 4. control characters ------------------------------------------------------------------------


def resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def string_fields(spec: dict[str, Any], schema: dict[str, Any]) -> list[tuple[str, bool]]:
    """(name, is an array of strings) of an object schema's string properties."""
    fields = []
    for name, prop in resolve(spec, schema).get("properties", {}).items():
        for alt in alternatives(resolve(spec, prop)):
            alt = resolve(spec, alt)
            if alt.get("type") == "string" and "format" not in alt:
                fields.append((name, False))
                break
            items = resolve(spec, alt.get("items", {}))
            if alt.get("type") == "array" and items.get("type") == "string":
                fields.append((name, True))
                break
    return fields


def json_body_operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(path, method, resolved body schema) of every operation in the OpenAPI with a JSON body."""
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            content = op.get("requestBody", {}).get("content", {}).get("application/json")
            if content is not None:
                yield path, method, resolve(spec, content["schema"])


NUL_TEXT = "\u51b7\u94fe\u0000\u8ffd\u8e2a"  # 冷链<NUL>追踪


async def test_every_string_field_of_every_body_refuses_control_characters(stack: Stack) -> None:
    spec = spec_of(stack)
    values = await fill_paths(stack)
    checked = 0
    for path, method, schema in json_body_operations(spec):
        element = schema.get("items") if schema.get("type") == "array" else None
        for name, is_list in string_fields(spec, element or schema):
            for bad in (NUL_TEXT, "a\u0001b", "a\u001fb", "a\bb"):
                value: Any = [bad] if is_list else bad
                body: Any = {name: value}
                r = await stack.http.request(
                    method.upper(),
                    concrete(path, values),
                    json=[body] if element else body,
                    headers=identity_for(stack, path),
                )
                assert_envelope(r, status=422, code="PF.VALIDATION_FAILED")
            checked += 1
    assert checked > 30
    # and the data of a task completion, free-form JSON
    r = await stack.http.post(
        "/v1/tasks/no-such-task/complete",
        json={"outcome": "approved", "data": {"note": {"deep": [NUL_TEXT]}}},
        headers=identity_for(stack, "/v1/tasks"),
    )
    assert_envelope(r, status=422, code="PF.VALIDATION_FAILED")


async def test_every_string_query_parameter_and_the_path_refuse_control_characters(
    stack: Stack,
) -> None:
    spec = spec_of(stack)
    values = await fill_paths(stack)
    checked = 0
    for path, method, param in query_parameters(spec):
        kinds = {(s.get("type"), s.get("format")) for s in alternatives(param["schema"])}
        if ("string", None) not in kinds or "enum" in str(param["schema"]):
            continue
        r = await stack.http.request(
            method.upper(),
            concrete(path, values),
            params={param["name"]: "a\u0000b"},
            headers=identity_for(stack, path),
        )
        assert_envelope(r, status=422, code="PF.VALIDATION_FAILED")
        checked += 1
    assert checked >= 10
    r = await stack.http.get("/v1/opportunities/a%00b", headers=identity_for(stack, "/"))
    assert_envelope(r, status=422, code="PF.VALIDATION_FAILED")


async def test_tabs_and_newlines_are_still_text(stack: Stack) -> None:
    values = await fill_paths(stack)
    item = values["/v1/opportunities/{item_id}"]
    text = "line one\nline two\tafter a tab\r\nand \\u0000 written out"
    r = await stack.http.post(
        f"/v1/opportunities/{item}/comments",
        json={"body": text},
        headers=identity_for(stack, "/"),
    )
    assert r.status_code == 201, r.text
    assert r.json()["body"] == text


@pytest.mark.parametrize(
    ("body", "refused"),
    [
        (rb'{"a": "x\u0000y"}', True),
        (rb'{"a": "x\u001Fy"}', True),
        (rb'{"a": "x\by"}', True),
        (rb'{"a": "x\fy"}', True),
        (rb'{"a": "x\\\u0000y"}', True),  # a backslash, then NUL
        (rb'{"a": "x\\u0000y"}', False),  # a backslash, then the text "u0000"
        (rb'{"a": "x\\by"}', False),
        (rb'{"a": "\t\n\r\u0009\u000a\u000D\u0020"}', False),
        (b'{"a": "\xe5\x86\xb7"}', False),
    ],
)
def test_the_body_check_reads_json_escapes(body: bytes, refused: bool) -> None:
    scope = {"headers": [(b"content-type", b"application/json")]}
    assert (control_characters_in_body(body, scope) is not None) is refused


@pytest.mark.parametrize(
    ("path", "query", "refused"),
    [
        ("/v1/x", b"q=%00", True),
        ("/v1/x", b"q=a%1Fb", True),
        ("/v1/x", b"a%00=1", True),
        ("/v1/x\x00", b"", True),
        ("/v1/x", b"q=a%09b%0A", False),
        ("/v1/x", b"q=%E5%86%B7", False),
    ],
)
def test_the_url_check_reads_percent_escapes(path: str, query: bytes, refused: bool) -> None:
    scope = {"path": path, "query_string": query}
    assert (control_characters_in_url(scope) is not None) is refused


# --- 5. unknown fields in request bodies ----------------------------------------------------------


def request_models() -> dict[str, type[BaseModel]]:
    """Every model a request body is made of, by name: each route's body model (from the route
    table) and every model nested in one, however deep."""
    app = create_app(Settings())
    found: dict[str, type[BaseModel]] = {}

    def walk(annotation: Any) -> None:
        if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
            if annotation.__name__ in found:
                return
            found[annotation.__name__] = annotation
            for info in annotation.model_fields.values():
                walk(info.annotation)
        for arg in typing.get_args(annotation):
            walk(arg)

    for route, _ in route_table(app.routes):
        if route.body_field is not None:
            walk(route.body_field.field_info.annotation)
    return found


def test_every_request_model_forbids_unknown_fields() -> None:
    """From the route table: every body model and every model nested in one refuses a field it
    does not know (`extra="forbid"`), so a typo is a 422 naming it, never silently dropped."""
    models = request_models()
    assert {"OpportunityCreate", "OpportunityProgress", "Evidence", "RoutingRuleIn"} <= set(models)
    lax = sorted(n for n, m in models.items() if m.model_config.get("extra") != "forbid")
    assert not lax, f"request models that drop unknown fields: {lax}"


UNKNOWN = "amout"


async def test_every_body_route_refuses_an_unknown_field_naming_it(stack: Stack) -> None:
    """Every POST/PUT/PATCH with a JSON body, from the OpenAPI: `{"amout": ...}` next to
    whatever else is missing is 422 PF.VALIDATION_FAILED with an `extra_forbidden` error
    located at the field; with an Idempotency-Key, no record is kept."""
    spec = spec_of(stack)
    values = await fill_paths(stack)
    checked = []
    for path, method, schema in json_body_operations(spec):
        body: Any = {UNKNOWN: "1"}
        if schema.get("type") == "array":
            body = [body]
        key = f"unknown-{uuid.uuid4().hex}"
        headers = {**identity_for(stack, path), "Idempotency-Key": key}
        url = concrete(path, values)
        r = await stack.http.request(method.upper(), url, json=body, headers=headers)
        assert_envelope(r, status=422, code="PF.VALIDATION_FAILED")
        errors = r.json()["details"]
        assert any(
            e["loc"][-1] == UNKNOWN and e["type"] == "extra_forbidden" for e in errors
        ), (method, path, errors)
        if method in ("post", "patch"):
            sub = identity_sub(path)
            assert not await idempotency_record(stack, sub, method, url, key), (method, path)
        checked.append((method, path))
    assert len(checked) > 25


def identity_sub(path: str) -> str:
    return "u-acme-1" if path.startswith("/v1/webhook-subscriptions") else "staff-hostile"


async def idempotency_record(stack: Stack, sub: str, method: str, path: str, key: str) -> bool:
    async with stack.sessions() as session:
        row = await session.get(IdempotencyRecord, scope_of(sub, method.upper(), path, key))
    return row is not None


async def test_a_po_with_a_typo_in_a_field_is_refused_and_nothing_is_written(stack: Stack) -> None:
    """The finding: a PO create with `amout` was accepted, the typo dropped."""
    acme = stack.auth("u-acme-1", ["partner_admin"], "p-acme")
    body = po_body(amout="1250000.00")
    key = f"typo-{uuid.uuid4().hex}"
    r = await stack.http.post(
        "/v1/opportunities", json=body, headers={**acme, "Idempotency-Key": key}
    )
    assert_envelope(r, status=422, code="PF.VALIDATION_FAILED")
    assert [e["loc"] for e in r.json()["details"]] == [["body", "amout"]]
    listed = await stack.http.get(
        "/v1/opportunities", params={"q": body["customer_name"]}, headers=acme
    )
    assert listed.json()["items"] == []
    assert not await idempotency_record(stack, "u-acme-1", "post", "/v1/opportunities", key)


# --- 6. empty query values ------------------------------------------------------------------------


async def test_every_query_parameter_refuses_an_empty_value(stack: Stack) -> None:
    """Every query parameter of every operation, from the OpenAPI: `?name=` is a 4xx in the
    envelope (422, or 400 for a cursor), never read as "no filter". The finding: `GET
    /v1/tasks?process_id=` listed every task."""
    spec = spec_of(stack)
    values = await fill_paths(stack)
    checked = []
    for path, method, param in query_parameters(spec):
        r = await stack.http.request(
            method.upper(),
            concrete(path, values),
            params={param["name"]: ""},
            headers=identity_for(stack, path),
        )
        assert_envelope(r)
        checked.append((path, param["name"]))
    assert ("/v1/tasks", "process_id") in checked
    assert {
        ("/v1/opportunities", n) for n in ("status", "q", "partner_id", "updated_after")
    } <= set(checked)
    assert len(checked) > 50
    r = await stack.http.get(
        "/v1/tasks", params={"process_id": ""}, headers=identity_for(stack, "/v1/tasks")
    )
    assert_envelope(r, status=422, code="PF.VALIDATION_FAILED")


# --- 7. single-valued headers sent twice ----------------------------------------------------------


@pytest.mark.parametrize("header", SINGLE_VALUED_HEADERS)
def test_a_single_valued_header_sent_twice_is_refused(header: str) -> None:
    scope = {"headers": [(header.encode(), b"one"), (header.title().encode(), b"two")]}
    refusal = repeated_single_headers(scope)
    assert refusal is not None and refusal.status_code == 400
    once = {"headers": [(header.encode(), b"one"), (b"accept", b"a"), (b"accept", b"b")]}
    assert repeated_single_headers(once) is None


async def test_every_command_route_refuses_two_idempotency_keys(stack: Stack) -> None:
    """Every POST/PATCH, from the OpenAPI: two `Idempotency-Key` lines (the key is one sf-string,
    draft-ietf-httpapi-idempotency-key-header) are 400 PF.BAD_REQUEST, and no record is kept
    under either key."""
    spec = spec_of(stack)
    values = await fill_paths(stack)
    checked = 0
    for path, ops in spec["paths"].items():
        for method in ops:
            if method not in ("post", "patch"):
                continue
            url = concrete(path, values)
            keys = [f"dup-{uuid.uuid4().hex}", f"dup-{uuid.uuid4().hex}"]
            headers = [*identity_for(stack, path).items()] + [("Idempotency-Key", k) for k in keys]
            r = await stack.http.request(method.upper(), url, json={}, headers=headers)
            assert_envelope(r, status=400, code="PF.BAD_REQUEST")
            assert r.json()["details"][0]["loc"] == ["header", "idempotency-key"]
            for key in keys:
                assert not await idempotency_record(stack, identity_sub(path), method, url, key)
            checked += 1
    assert checked >= 20


async def test_every_single_valued_header_we_read_is_refused_twice(stack: Stack) -> None:
    """Authorization, Content-Type, X-Request-ID (Host: h11 refuses it before us), on a read
    and on a PO submission with a valid body: 400, and the PO is not created."""
    acme = stack.auth("u-acme-1", ["partner_admin"], "p-acme")
    other = stack.auth("u-acme-2", ["partner_member"], "p-acme")
    twice = {
        "authorization": [acme["Authorization"], other["Authorization"]],
        "content-type": ["application/json", "text/plain"],
        "x-request-id": ["req-1", "req-2"],
    }
    assert set(twice) | {"idempotency-key", "host"} == set(SINGLE_VALUED_HEADERS)
    for name, lines in twice.items():
        base = [(k, v) for k, v in acme.items() if k.lower() != name]
        headers = base + [(name, v) for v in lines]
        r = await stack.http.get("/v1/opportunities", headers=headers)
        assert_envelope(r, status=400, code="PF.BAD_REQUEST")
        body = po_body()
        if name != "content-type":
            headers.append(("content-type", "application/json"))
        r = await stack.http.post("/v1/opportunities", content=json.dumps(body), headers=headers)
        assert_envelope(r, status=400, code="PF.BAD_REQUEST")
        assert [d["loc"] for d in r.json()["details"]] == [["header", name]]
        listed = await stack.http.get(
            "/v1/opportunities", params={"q": body["customer_name"]}, headers=acme
        )
        assert listed.json()["items"] == [], name


# --- 8. degenerate token claims -------------------------------------------------------------------

# claim -> values that name nobody (each alone, the rest of the token valid)
DEGENERATE_CLAIMS: dict[str, list[Any]] = {
    "sub": ["", " ", " pdm-li", "pdm-li\n", "pdm\u0000li", "x" * 129, 7, None],
    "roles": ["pdm", ["emperor"], ["pdm", "pdm"], [7], [None], {"pdm": True}, None],
    "partner_id": ["", " ", "\t", " p-acme", "p acme", 7, ["p-acme"], {}, "p-" + "x" * 63],
    "exp": ["tomorrow", None],
}


def degenerate_tokens() -> list[tuple[str, Any]]:
    return [(claim, value) for claim, values in DEGENERATE_CLAIMS.items() for value in values]


@pytest.mark.parametrize(("claim", "value"), degenerate_tokens())
async def test_a_token_with_a_degenerate_claim_is_401(stack: Stack, claim: str, value: Any) -> None:
    """Every claim we read (`TokenClaims` and `exp`): a degenerate value is 401
    PF.UNAUTHENTICATED in the envelope, on a read and on a command with an Idempotency-Key
    (no record kept). The finding: `partner_id: ""` was accepted."""
    claims: dict[str, Any] = {
        "sub": "u-acme-1",
        "roles": ["partner_admin"],
        "partner_id": "p-acme",
        "exp": int(time.time()) + 600,
    }
    if value is None:
        del claims[claim]
    else:
        claims[claim] = value
    token = jwt.encode(claims, stack.settings.jwt_secret, algorithm="HS256")
    headers = {"Authorization": f"Bearer {token}"}
    r = await stack.http.get("/v1/opportunities", headers=headers)
    assert_envelope(r, status=401, code="PF.UNAUTHENTICATED")
    key = f"claims-{uuid.uuid4().hex}"
    body = po_body()
    r = await stack.http.post(
        "/v1/opportunities", json=body, headers={**headers, "Idempotency-Key": key}
    )
    assert_envelope(r, status=401, code="PF.UNAUTHENTICATED")
    acme = stack.auth("u-acme-1", ["partner_admin"], "p-acme")
    listed = await stack.http.get(
        "/v1/opportunities", params={"q": body["customer_name"]}, headers=acme
    )
    assert listed.json()["items"] == []


def test_the_degenerate_claims_cover_every_claim_we_read() -> None:
    assert set(TokenClaims.model_fields) | {"exp"} == set(DEGENERATE_CLAIMS)
    # and what stays valid: a staff token (no partner_id, or null), a partner id as admins write
    for extra in ({}, {"partner_id": None}, {"partner_id": "p-acme.east:1"}):
        claims = {"sub": "ops 1", "roles": ["ops_admin"], **extra}
        assert TokenClaims.model_validate(claims).sub == "ops 1"


# --- 9. credentials in URLs -----------------------------------------------------------------------


def url_fields(model: type[BaseModel], at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Where `model` (and the models in it) takes a URL: a field named `url` or typed AnyUrl;
    lists step into their first element."""
    found: list[tuple[Any, ...]] = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if name == "url" or "Url" in str(annotation):
            found.append((*at, name))
        for arg in (annotation, *typing.get_args(annotation)):
            if inspect.isclass(arg) and issubclass(arg, BaseModel):
                is_list = typing.get_origin(annotation) is list
                found += url_fields(arg, (*at, name, 0) if is_list else (*at, name))
    return found


def with_value(example: Any, where: tuple[Any, ...], value: str) -> Any:
    copy = json.loads(json.dumps(example))
    target = copy
    for step in where[:-1]:
        target = target[step]
    target[where[-1]] = value
    return copy


CREDENTIALS = ["https://user:pass@files.example/x", "https://token@files.example/x"]


async def test_every_url_a_request_takes_refuses_credentials(stack: Stack) -> None:
    """Every URL field of every request body (route table, nested models included), filled into
    the model's own example: with userinfo (`user:pass@`, `token@`) it is 422 naming the field.
    The finding: a webhook subscription to `https://user:pass@host/…` was accepted."""
    app = create_app(stack.settings)
    values = await fill_paths(stack)
    checked = []
    for route, path in route_table(app.routes):
        for model in body_models(route):
            fields = url_fields(model)
            if not fields:
                continue
            extra = model.model_config.get("json_schema_extra")
            examples = extra.get("examples") if isinstance(extra, dict) else None
            assert isinstance(examples, list) and examples, f"{model.__name__} needs an example"
            for where in fields:
                for url in CREDENTIALS:
                    body = with_value(examples[0], where, url)
                    method = sorted(route.methods or ())[0]
                    r = await stack.http.request(
                        method, concrete(path, values), json=body, headers=identity_for(stack, path)
                    )
                    assert_envelope(r, status=422, code="PF.VALIDATION_FAILED")
                    assert "credentials" in r.text and r.json()["details"][0]["loc"][1] == where[0]
                checked.append((model.__name__, where))
    assert ("WebhookSubscriptionCreate", ("url",)) in checked
    assert ("CertificationCreate", ("evidence", 0, "url")) in checked
    assert ("RecertificationCreate", ("evidence", 0, "url")) in checked
    # and no subscription came of it
    listed = await stack.http.get(
        "/v1/webhook-subscriptions", headers=identity_for(stack, "/v1/webhook-subscriptions")
    )
    assert all("@" not in s["url"] for s in listed.json()["items"]), listed.text


# --- routes that take no body, and PUTs that need theirs ------------------------------------------


def no_body_routes(app: Any) -> list[tuple[str, str, str]]:
    """(operationId, method, path) of every POST/PATCH/PUT with no body parameter, from the
    route table (claim, accept, rotate-secret, enable, …)."""
    from api.openapi import operation_id

    return sorted(
        (operation_id(route), method.lower(), path)
        for route, path in route_table(app.routes)
        if route.body_field is None
        for method in route.methods or ()
        if method in {"POST", "PATCH", "PUT"}
    )


async def test_every_route_without_a_body_refuses_one_and_keeps_nothing(stack: Stack) -> None:
    """The attack's finding: `POST /v1/webhook-subscriptions/{id}/rotate-secret` with
    `{"x": 1}` rotated the secret, the field silently ignored, and so for every route that
    takes no body. Each refuses any body but nothing or `{}` with 422 PF.VALIDATION_FAILED at
    `body`, before anything happens; with an Idempotency-Key, no record is kept."""
    values = await fill_paths(stack)
    routes = no_body_routes(create_app(stack.settings))
    assert {"rotateWebhookSecret", "claimTask", "acceptInvitation"} <= {r[0] for r in routes}
    for name, method, path in routes:
        url = concrete(path, values)
        for body in ('{"x": 1}', "[]", "not json", '""'):
            key = f"nobody-{uuid.uuid4().hex}"
            headers = {
                **identity_for(stack, path),
                "Content-Type": "application/json",
                "Idempotency-Key": key,
            }
            r = await stack.http.request(method.upper(), url, content=body, headers=headers)
            assert_envelope(r, status=422, code="PF.VALIDATION_FAILED")
            assert r.json()["details"][0]["loc"] == ["body"], (name, body, r.text)
            assert not await idempotency_record(
                stack, identity_sub(path), method, url, key
            ), (name, body)
        # nothing, or the empty object, is never refused for the body
        for content in (b"", b"{}"):
            r = await stack.http.request(
                method.upper(), url, content=content, headers=identity_for(stack, path)
            )
            if r.status_code == 422:
                assert ["body"] not in [e["loc"] for e in r.json()["details"] or []], (name, r.text)


async def test_a_put_without_its_body_is_refused_and_replaces_nothing(stack: Stack) -> None:
    """The attack's finding: `PUT /v1/admin/accounts/{id}` with no body answered 200 and
    replaced the account by the defaults (its partner association gone). A PUT replaces what it
    names, so every PUT needs its body (from the route table); the account is unchanged."""
    ops = stack.auth("ops-1", ["ops_admin"])
    account_id = f"acct-put-{uuid.uuid4().hex[:8]}"
    saved = {"real_name_verified": True, "associated_partner_id": "p-acme", "site": "china"}
    r = await stack.http.put(f"/v1/admin/accounts/{account_id}", json=saved, headers=ops)
    assert r.status_code == 200, r.text
    puts = [
        path
        for route, path in route_table(create_app(stack.settings).routes)
        if "PUT" in (route.methods or ())
    ]
    assert len(puts) >= 3
    for path in puts:
        url = path.replace("{account_id}", account_id)
        url = re.sub(r"\{[^}]+\}", f"put-{uuid.uuid4().hex[:6]}", url)
        r = await stack.http.put(url, headers=ops)
        assert_envelope(r, status=422, code="PF.VALIDATION_FAILED")
    r = await stack.http.put(f"/v1/admin/accounts/{account_id}", json=saved, headers=ops)
    assert r.json()["associated_partner_id"] == "p-acme", r.text


async def test_an_account_cannot_be_associated_with_a_partner_that_does_not_exist(
    stack: Stack,
) -> None:
    """The attack's finding: `associated_partner_id: "p-nope"` was stored. 422 at the field,
    and nothing written (the account stays unknown)."""
    ops = stack.auth("ops-1", ["ops_admin"])
    account_id = f"acct-nope-{uuid.uuid4().hex[:8]}"
    r = await stack.http.put(
        f"/v1/admin/accounts/{account_id}",
        json={"real_name_verified": True, "associated_partner_id": "p-nope"},
        headers=ops,
    )
    assert_envelope(r, status=422, code="PF.VALIDATION_FAILED")
    assert r.json()["details"][0]["loc"] == ["body", "associated_partner_id"]
    async with stack.sessions() as session:
        assert await session.get(Account, account_id) is None


# --- a query parameter named twice, a path with a trailing slash ---------------------------------


async def test_every_query_parameter_named_twice_is_refused(stack: Stack) -> None:
    """The attack's finding: `?status=approved&status=returned` listed only the returned POs
    (the last value read, the first dropped). Every query parameter of every operation, from
    the OpenAPI, takes one value: named twice, 400 PF.BAD_REQUEST at that parameter."""
    spec = spec_of(stack)
    values = await fill_paths(stack)
    checked = 0
    for path, method, param in query_parameters(spec):
        name = param["name"]
        r = await stack.http.request(
            method.upper(),
            concrete(path, values),
            params=[(name, "a"), (name, "b")],
            headers=identity_for(stack, path),
        )
        assert_envelope(r, status=400, code="PF.BAD_REQUEST")
        assert r.json()["details"][0]["loc"] == ["query", name], (path, name, r.text)
        checked += 1
    assert checked > 30
    acme = stack.auth("u-acme-1", ["partner_admin"], "p-acme")
    r = await stack.http.get("/v1/opportunities?status=approved&status=returned", headers=acme)
    assert_envelope(r, status=400, code="PF.BAD_REQUEST")


async def test_every_path_with_a_trailing_slash_is_a_404_in_the_envelope(stack: Stack) -> None:
    """The attack's finding: `/v1/opportunities/` answered an empty 307. No route ends in a
    slash: each one with one added (from the route table) is 404 in the envelope."""
    values = await fill_paths(stack)
    checked = 0
    for route, path in route_table(create_app(stack.settings).routes):
        for method in route.methods or ():
            r = await stack.http.request(
                method, concrete(path, values) + "/", headers=identity_for(stack, path)
            )
            assert_envelope(r, status=404)
            checked += 1
    assert checked > 40
