"""The route frame: every router is `command_router(prefix=..., tags=...)`.

It gives every route, once:
- the error responses (the one envelope for 400 … 503) in the OpenAPI;
- for POST and PATCH, exact idempotency (R-X-6, `api.idempotency`): the `Idempotency-Key`
  header is declared, the record is taken before the handler runs and completed with the
  handler's answer; the handler sees it as `Idem` (`api.deps`);
- for a POST or PATCH body whose fields are all optional, no body at all is the empty object
  (DESIGN §3: "a POST whose body fields are all optional accepts no body"), and the OpenAPI
  says so (`requestBody.required: false`, `api.openapi`). A PUT replaces what it names, so it
  always needs its body: a missing one is 422, never a replacement by the defaults;
- a POST, PATCH or PUT without a body model takes no body: anything but nothing or `{}` is
  422 `PF.VALIDATION_FAILED` (a field sent there would be silently ignored otherwise).

So a handler is: parse (its body model), authorize (`CurrentUser` + a check), one call
(`Processes`, the process gateway), map the result; it refuses by raising `ApiError`.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import timedelta
from types import UnionType
from typing import Any, Union, get_args, get_origin

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.params import Depends as DependsParam
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message

from api.auth import current_user
from api.errors import ApiError, ErrorEnvelope
from api.idempotency import (
    HEADER,
    MAX_KEY_LENGTH,
    Attempt,
    IdempotencyGuard,
    IdempotencyKey,
    IdempotencyStore,
    StoredAnswer,
    fingerprint,
    purge_now_and_then,
    scope_of,
    without_secrets,
)

COMMAND_METHODS = frozenset({"POST", "PATCH"})
BODY_METHODS = frozenset({"POST", "PATCH", "PUT"})
# An attempt holds its key at most the update timeout plus this (the handler's own bound plus
# the fall-back's grace and store work); a record still in flight after that belongs to an API
# process that died, and a retry takes it over.
IN_FLIGHT_MARGIN_SECONDS = 15.0

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorEnvelope} for code in (400, 401, 403, 404, 409, 422, 429, 503)
}


def idempotency_key_header(idempotency_key: IdempotencyKey = None) -> None:
    """Declares (and validates) the Idempotency-Key header of every POST/PATCH route; the
    guard itself is `api.deps.Idem`."""


def body_models(route: APIRoute) -> list[type[BaseModel]]:
    """The models a route's body is (one model, or `Model | None`); [] for no body or a body
    that is not a model (a list of rules)."""
    if route.body_field is None:
        return []
    annotation = route.body_field.field_info.annotation
    is_union = get_origin(annotation) in (Union, UnionType)
    candidates = list(get_args(annotation)) if is_union else [annotation]
    return [c for c in candidates if inspect.isclass(c) and issubclass(c, BaseModel)]


def optional_body_model(route: APIRoute) -> bool:
    """Whether the route is a POST or PATCH whose body is one model with only optional fields:
    then no body at all is the empty object (DESIGN §3), and the OpenAPI says
    `requestBody.required: false` (`api.openapi`). Never a PUT: it replaces what it names."""
    models = body_models(route)
    return (
        bool(models)
        and bool((route.methods or set()) & COMMAND_METHODS)
        and all(not f.is_required() for m in models for f in m.model_fields.values())
    )


def takes_no_body(route: APIRoute) -> bool:
    """Whether the route is a POST, PATCH or PUT with no body parameter at all (claim, accept,
    rotate-secret, …): it refuses any body but nothing or `{}`."""
    return route.body_field is None and bool((route.methods or set()) & BODY_METHODS)


_EMPTY_OBJECT = re.compile(rb"\{\s*\}")


def _refuse_a_body(body: bytes) -> None:
    """422 PF.VALIDATION_FAILED unless `body` is nothing or the empty JSON object."""
    # matched, not parsed: a hostile body (deep JSON, megabytes) costs one linear scan here
    text = body.strip()
    if text and not _EMPTY_OBJECT.fullmatch(text):
        raise ApiError(
            "PF.VALIDATION_FAILED",
            "this route takes no body",
            [{"loc": ["body"], "msg": "no body is accepted here", "type": "extra_forbidden"}],
        )


def _with_body(request: Request, body: bytes) -> Request:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    headers = [(k, v) for k, v in request.scope["headers"] if k not in (b"content-type",)]
    headers.append((b"content-type", b"application/json"))
    return Request({**request.scope, "headers": headers}, receive)


class CommandRoute(APIRoute):
    """An APIRoute that frames POST and PATCH handlers (see the module docstring)."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        methods = {m.upper() for m in (kwargs.get("methods") or ())}
        if methods & COMMAND_METHODS:
            dependencies: Sequence[DependsParam] = kwargs.get("dependencies") or ()
            kwargs["dependencies"] = [*dependencies, Depends(idempotency_key_header)]
        super().__init__(path, endpoint, **kwargs)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        is_command = bool((self.methods or set()) & COMMAND_METHODS)
        empty_is_object = optional_body_model(self)
        no_body = takes_no_body(self)
        if not is_command and not empty_is_object and not no_body:
            return handler

        async def bodiless(request: Request) -> Response:
            _refuse_a_body(await request.body())
            return await handler(request)

        # inside idempotency, as any refusal: a replay answers first, a refusal releases the key
        inner = bodiless if no_body else handler

        async def framed(request: Request) -> Response:
            if empty_is_object and not (await request.body()).strip():
                request = _with_body(request, b"{}")
            if not is_command:
                return await inner(request)
            return await run_idempotent(request, inner)

        return framed


async def run_idempotent(
    request: Request, handler: Callable[[Request], Awaitable[Response]]
) -> Response:
    """R-X-6 around one POST/PATCH handler (see `api.idempotency`)."""
    key = request.headers.get(HEADER)
    if key is None:
        return await handler(request)
    if not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise ApiError(
            "PF.VALIDATION_FAILED",
            f"{HEADER} must be 1 to {MAX_KEY_LENGTH} characters",
            [{"loc": ["header", HEADER], "msg": "bad length", "type": "string_length"}],
        )
    try:
        principal = current_user(request)
    except ApiError:
        return await handler(request)  # the handler answers 401 itself
    settings = request.app.state.settings
    store = IdempotencyStore(
        request.app.state.sessions,
        retention=settings.idempotency_retention,
        in_flight_bound=timedelta(
            seconds=settings.update_timeout_seconds + IN_FLIGHT_MARGIN_SECONDS
        ),
    )
    await purge_now_and_then(store)
    path = request.url.path
    scope = scope_of(principal.sub, request.method, path, key)
    print_ = fingerprint(request.method, path, request.url.query, await request.body())
    taken = await store.begin(scope, print_)
    if isinstance(taken, StoredAnswer):
        return taken.response()
    request.state.idempotency = IdempotencyGuard(
        key=key, sub=principal.sub, store=store, scope=scope, attempt=taken
    )
    try:
        response = await handler(request)
    except BaseException as exc:
        await _settle_failure(store, scope, taken, _status_of(exc))
        raise
    body = getattr(response, "body", None)
    if 200 <= response.status_code < 300 and isinstance(body, bytes):
        await store.complete(
            scope,
            taken.attempt,
            StoredAnswer(
                response.status_code, response.headers.get("content-type"), without_secrets(body)
            ),
        )
    else:
        await _settle_failure(store, scope, taken, response.status_code)
    return response


def _status_of(exc: BaseException) -> int:
    """The status the one error handler will answer for `exc` (4xx: nothing was changed)."""
    if isinstance(exc, ApiError):
        return exc.status_code
    if isinstance(exc, RequestValidationError):
        return 422
    if isinstance(exc, StarletteHTTPException):
        return exc.status_code
    return 500


async def _settle_failure(
    store: IdempotencyStore, scope: str, taken: Attempt, status_code: int
) -> None:
    try:
        if status_code < 500:
            await store.release(scope, taken.attempt)
        else:
            await store.suspend(scope, taken.attempt)
    except Exception:  # the store is down too: the record goes stale after its bound
        pass


def command_router(*, prefix: str, tags: list[str]) -> APIRouter:
    """A router in the frame: `CommandRoute` for every route, the error responses once."""
    return APIRouter(
        prefix=prefix,
        tags=list(tags),
        route_class=CommandRoute,
        responses=ERROR_RESPONSES,
    )
