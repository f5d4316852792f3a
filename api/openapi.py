"""The OpenAPI document as client generators need it: one operation id per route, from its
name in camelCase (`submitOpportunity`, `listTasks`, `claimTask`), a tag per resource, and every
error status a route can answer declared with the error envelope's schema.

Operation ids come from `operation_id` (FastAPI's `generate_unique_id_function`); route names
are unique across the app (tests/test_openapi.py checks), so ids are too.

A body is `required` exactly when its model has a required field: a route whose body fields are
all optional accepts no body at all (DESIGN §3, `api.frame.optional_body_model`), and says so.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from api.frame import optional_body_model

ENVELOPE_REF = "#/components/schemas/ErrorEnvelope"

# What every /v1 operation may answer besides its success: bad cursor or parameter (400), no or
# bad token (401), not yours (403), no such item (404), a state that refuses it (409), a body
# over the limit (413), invalid input (422), rate limited before or after auth (429, R-X-1),
# Temporal or the database unavailable (503).
V1_ERRORS: dict[int, str] = {
    400: "Bad request (e.g. a cursor that is not ours)",
    401: "No valid bearer token",
    403: "Not allowed for this caller (roles, R-X-8)",
    404: "No such item, or no such route",
    409: "Refused in the item's current state",
    413: "Body larger than the limit",
    422: "Invalid input",
    429: "Rate limited (R-X-1); see Retry-After",
    503: "A dependency is unavailable; retry after Retry-After",
}
# Health probes: only the rate limit and an unavailable dependency.
PROBE_ERRORS: dict[int, str] = {429: V1_ERRORS[429], 503: V1_ERRORS[503]}


def operation_id(route: APIRoute) -> str:
    """`submit_opportunity` → `submitOpportunity`."""
    head, *rest = route.name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def route_table(routes: Iterable[Any]) -> Iterator[tuple[APIRoute, str]]:
    """Every APIRoute of `routes` (an app's or a router's) with its full path. FastAPI >= 0.16x
    keeps included routers whole: their routes are reached through `effective_candidates`."""
    for route in routes:
        if hasattr(route, "effective_candidates"):
            for candidate in route.effective_candidates():
                if hasattr(candidate, "effective_candidates"):
                    yield from route_table([candidate])
                elif isinstance(candidate.original_route, APIRoute):
                    yield candidate.original_route, candidate.path
        elif isinstance(route, APIRoute):
            yield route, route.path


def _declare_optional_bodies(schema: dict[str, Any], app: FastAPI) -> dict[str, Any]:
    """`requestBody.required` is false for exactly the routes whose body model has no required
    field (the frame turns no body into `{}` for them), true for every other body."""
    optional = {
        operation_id(route) for route, _ in route_table(app.routes) if optional_body_model(route)
    }
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            body = operation.get("requestBody")
            if body is not None:
                body["required"] = operation.get("operationId") not in optional
    return schema


def _declare_errors(schema: dict[str, Any]) -> dict[str, Any]:
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    schemas.setdefault(
        "ErrorEnvelope",
        {
            "title": "ErrorEnvelope",
            "type": "object",
            "required": ["error_code", "error_msg"],
            "properties": {
                "error_code": {"type": "string", "title": "Error Code"},
                "error_msg": {"type": "string", "title": "Error Msg"},
                "details": {"title": "Details"},
            },
        },
    )
    for path, operations in schema.get("paths", {}).items():
        errors = V1_ERRORS if path.startswith("/v1/") else PROBE_ERRORS
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            for status, description in errors.items():
                response = responses.setdefault(str(status), {"description": description})
                # FastAPI's own 422 (HTTPValidationError) is not what we answer: the envelope is
                response["content"] = {"application/json": {"schema": {"$ref": ENVELOPE_REF}}}
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    # Two models of one name in two modules (opportunity's and incentive's `Decision`): FastAPI
    # keys them by module path but leaves both titled `Decision`, and generators name classes by
    # title. Give each a title of its own: `OpportunityDecision`, `IncentivesDecision`.
    for key, model in schemas.items():
        if "__" in key:
            *modules, name = key.split("__")
            model["title"] = modules[-1].title().replace("_", "") + name
    return schema


def install_openapi(app: FastAPI) -> None:
    """Serve the document with every error declared (see `V1_ERRORS`) and optional bodies
    marked so."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        return _declare_optional_bodies(_declare_errors(build()), app)

    app.openapi = openapi  # type: ignore[method-assign]
