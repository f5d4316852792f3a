"""Hostile input is a 4xx in the error envelope, never a 500: each kind proven over every route
it can reach, enumerated from the app's own OpenAPI and route table (a new route is covered
without editing this file).

- every `date-time` query parameter with a time out of range once converted to UTC;
- every `cursor` / `after` query parameter with cursors we never handed out (huge, negative,
  trailing newline, not base64, base64 of junk, times out of range, NUL ids) → 400;
- every POST/PUT/PATCH with a body too deep to parse, not UTF-8, or not JSON, with and without
  an Idempotency-Key → 400 PF.MALFORMED_JSON;
- every string field of every request body, every string query parameter and the path with a
  control character (NUL: PostgreSQL refuses it in text and jsonb) → 422 PF.VALIDATION_FAILED.
"""

from __future__ import annotations

import base64
import re
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from api.main import create_app
from api.middleware import control_characters_in_body, control_characters_in_url
from api.routes.lists import RESOURCES
from domain.errors import STATUS_BY_CODE
from domain.principal import STAFF_ROLES
from tests.conftest import Stack
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
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            for param in query_params(op):
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
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            for param in query_params(op):
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


NUL_TEXT = "\u51b7\u94fe\u0000\u8ffd\u8e2a"  # 冷链<NUL>追踪


async def test_every_string_field_of_every_body_refuses_control_characters(stack: Stack) -> None:
    spec = spec_of(stack)
    values = await fill_paths(stack)
    checked = 0
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            content = op.get("requestBody", {}).get("content", {}).get("application/json")
            if content is None:
                continue
            schema = resolve(spec, content["schema"])
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
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            for param in query_params(op):
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
