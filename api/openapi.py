"""The OpenAPI document as client generators need it: one operation id per route, from its
name in camelCase (`submitOpportunity`, `listTasks`, `claimTask`), a tag per resource, and every
error status a route can answer declared with the error envelope's schema.

Operation ids come from `operation_id` (FastAPI's `generate_unique_id_function`); route names
are unique across the app (tests/test_openapi.py checks), so ids are too.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

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
    """Serve the document with every error declared (see `V1_ERRORS`)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        return _declare_errors(build())

    app.openapi = openapi  # type: ignore[method-assign]
