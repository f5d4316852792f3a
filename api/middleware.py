"""Cross-cutting HTTP concerns: body size limit, per-caller rate limit (R-X-1), request metrics,
request ids."""

from __future__ import annotations

import collections
import logging
import math
import re
import time
import uuid
from typing import Any
from urllib.parse import parse_qsl

from limits import RateLimitItemPerSecond
from limits.aio.storage import Storage as AsyncStorage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string
from prometheus_client import Counter, Histogram
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import principal_from_token
from api.errors import ApiError, envelope
from config import RateLimit
from telemetry import REQUEST_ID

access_log = logging.getLogger("partnerflow.access")

REQUESTS = Counter(
    "partnerflow_http_requests_total", "HTTP requests", ["method", "route", "status"]
)
RATE_LIMIT_STORAGE_ERRORS = Counter(
    "partnerflow_rate_limit_storage_errors_total",
    "requests let through because the rate limiter's shared store was unreachable (R-X-1)",
)
LATENCY = Histogram(
    "partnerflow_http_request_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


class RateLimiter:
    """R-X-1 through the `limits` library: a moving window per caller, at most `burst`
    requests in any `burst / requests_per_second` seconds (rounded up to whole seconds), in the
    storage `limit.storage_url` names (`memory://`: this process; `redis://…`: shared by every
    replica, keys under `limit.key_prefix`).

    A shared store that cannot be reached fails open: the request is served, the failure is
    logged and counted in `partnerflow_rate_limit_storage_errors_total` (an outage of the
    limiter's store must not take the API down; the vendor's gateway still limits in front).
    """

    def __init__(self, limit: RateLimit) -> None:
        window = max(1, math.ceil(limit.burst / limit.requests_per_second))
        self.item = RateLimitItemPerSecond(limit.burst, window)
        url = limit.storage_url
        options: dict[str, Any] = {}
        if url.startswith(("redis://", "rediss://")):
            url = f"async+{url}"
            options = {"implementation": "redispy", "key_prefix": limit.key_prefix}
        elif url.startswith("memory://"):
            url = "async+memory://"
        storage = storage_from_string(url, **options)
        if not isinstance(storage, AsyncStorage):
            raise ValueError(f"rate_limit.storage_url {limit.storage_url!r} is not supported")
        # A moving window is exact: a sliding-window counter weighs the previous window and
        # admits burst + 1 when a run of requests straddles a window boundary.
        self.limiter = MovingWindowRateLimiter(storage)

    async def take(self, caller: str) -> float:
        """0 if allowed, else seconds until the caller may try again."""
        try:
            if await self.limiter.hit(self.item, caller):
                return 0.0
            stats = await self.limiter.get_window_stats(self.item, caller)
        except Exception:  # the store is down: fail open (see the class docstring)
            RATE_LIMIT_STORAGE_ERRORS.inc()
            access_log.warning("rate limit storage unreachable; request let through", exc_info=True)
            return 0.0
        return max(1.0, stats.reset_time - time.time())


class GuardMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware buffering), before authentication: refuses callers over
    their rate with 429 + Retry-After (keyed by the bearer's verified `sub`, else the client
    address, so rotating invalid tokens does not escape it), bodies over `max_body_bytes`
    with 413 — whether announced by Content-Length or streamed chunked —, a single-valued
    header sent twice or a query parameter named twice with 400 (`repeated_single_headers`,
    `repeated_query_parameters`) and control characters with 422;
    records request metrics. Every refusal is in the error envelope, before any handler runs."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        rate_limit: RateLimit,
        jwt_secret: str = "",
        jwt_leeway_seconds: float = 30.0,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.limiter = RateLimiter(rate_limit)
        self.jwt_secret = jwt_secret
        self.jwt_leeway_seconds = jwt_leeway_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status_holder = {"status": 500}
        method = scope["method"]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
            await send(message)

        try:
            rejection = await self._reject(scope)
            if rejection is None:
                rejection = repeated_single_headers(scope)
            if rejection is None:
                rejection = repeated_query_parameters(scope)
            if rejection is None:
                rejection = control_characters_in_url(scope)
            if rejection is None:
                receive, too_large, body = await self._read_body(receive)
                if too_large:
                    rejection = self._too_large()
                else:
                    rejection = control_characters_in_body(body, scope)
            if rejection is not None:
                await rejection(scope, receive, send_wrapper)
                return
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            REQUESTS.labels(method, path, str(status_holder["status"])).inc()
            LATENCY.labels(method, path).observe(time.perf_counter() - started)

    def _too_large(self) -> Any:
        return envelope(
            "PF.PAYLOAD_TOO_LARGE", f"the body is larger than {self.max_body_bytes} bytes"
        )

    async def _reject(self, scope: Scope) -> Any:
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            return self._too_large()
        if scope["path"] in ("/healthz", "/readyz", "/metrics"):
            return None
        wait = await self.limiter.take(self._caller(scope, headers))
        if wait > 0:
            return envelope(
                "PF.RATE_LIMITED",
                "too many requests; retry after the given seconds",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
        return None

    def _caller(self, scope: Scope, headers: dict[bytes, bytes]) -> str:
        """`sub:<sub>` for a bearer that verifies, else `addr:<client address>`."""
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and token.strip() and self.jwt_secret:
            try:  # the same check as authentication: a degenerate token is no caller
                principal = principal_from_token(
                    token.strip(), self.jwt_secret, leeway_seconds=self.jwt_leeway_seconds
                )
                # verified once per request: `api.auth.current_user` reads it from the state
                scope.setdefault("state", {})["principal"] = principal
                return f"sub:{principal.sub}"
            except ApiError:
                pass
        client = scope.get("client")
        return f"addr:{client[0] if client else 'unknown'}"

    async def _read_body(self, receive: Receive) -> tuple[Receive, bool, bytes]:
        """Reads the whole body, counting bytes as they stream in (a chunked body has no
        Content-Length to check up front): (a `receive` that hands the app the buffered body,
        whether it passed the limit, the body read)."""
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return _replay([message], receive), False, b""  # the client went away
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_body_bytes:
                return receive, True, b""
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        whole = {"type": "http.request", "body": body, "more_body": False}
        return _replay([whole], receive), False, body


# Headers we read that carry ONE value. Sent twice, which one counts depends on who reads it (the
# rate limiter reads the last, the auth the first), so the request is refused (400): the
# Idempotency-Key is a single sf-string (draft-ietf-httpapi-idempotency-key-header), and
# Authorization, Content-Type and Host are singletons (RFC 9110 §5.3, RFC 9112 §3.2).
# Content-Length is the HTTP server's (h11 refuses conflicting ones before we see them).
SINGLE_VALUED_HEADERS: tuple[str, ...] = (
    "authorization",
    "idempotency-key",
    "content-type",
    "host",
    "x-request-id",
)


def repeated_single_headers(scope: Scope) -> Any:
    """The refusal (400 PF.BAD_REQUEST, naming the headers) of a request that sends a
    single-valued header (`SINGLE_VALUED_HEADERS`) on more than one line; None otherwise."""
    seen = collections.Counter(name.lower() for name, _ in scope.get("headers") or [])
    repeated = [h for h in SINGLE_VALUED_HEADERS if seen[h.encode()] > 1]
    return _sent_more_than_once("header", repeated, what="", kind="repeated_header")


def repeated_query_parameters(scope: Scope) -> Any:
    """The refusal (400 PF.BAD_REQUEST, naming the parameters) of a query string that names a
    parameter more than once (`?status=approved&status=returned`): every query parameter of the
    API takes one value, and reading only the last one would answer another question than the
    caller asked. None otherwise."""
    query = (scope.get("query_string") or b"").decode("latin-1")
    counts = collections.Counter(
        n for n, _ in parse_qsl(query, keep_blank_values=True, errors="replace")
    )
    repeated = sorted(name for name, n in counts.items() if n > 1)
    return _sent_more_than_once(
        "query", repeated, what="query parameter ", kind="repeated_parameter"
    )


def _sent_more_than_once(where: str, names: list[str], *, what: str, kind: str) -> Any:
    if not names:
        return None
    return envelope(
        "PF.BAD_REQUEST",
        f"{what}{', '.join(names)} must be sent once",
        [{"loc": [where, name], "msg": "sent more than once", "type": kind} for name in names],
    )


# C0 control characters other than TAB, LF and CR. PostgreSQL refuses NUL in text and jsonb (a
# 500 there, silently kept on SQLite) and no field of ours means any of them: every request
# carrying one, in the path, the query string or a JSON body, is 422 PF.VALIDATION_FAILED.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
# In a JSON text they can only arrive escaped (raw ones are not valid JSON, refused anyway):
# `\u0000`…`\u001f` (except 0009, 000a, 000d) or `\b` / `\f`, after an even run of
# backslashes (`\\u0000` is a backslash followed by the text "u0000", which is allowed).
_JSON_CONTROL = re.compile(rb"(?<!\\)(?:\\\\)*\\(?:u00(?:0[0-8bBcCeEfF]|1[0-9a-fA-F])|[bf])")


def _refuse_control(where: str) -> Any:
    return envelope(
        "PF.VALIDATION_FAILED",
        f"the {where} contains a control character (NUL, U+0001..U+001F other than tab, "
        "line feed and carriage return)",
        [{"loc": [where], "msg": "control characters are not allowed", "type": "control_char"}],
    )


def control_characters_in_url(scope: Scope) -> Any:
    """The refusal of a request whose decoded path or query string has a control character."""
    if _CONTROL.search(scope.get("path", "")):
        return _refuse_control("path")
    query = scope.get("query_string", b"").decode("latin-1")
    if "%" in query or _CONTROL.search(query):
        for name, value in parse_qsl(query, keep_blank_values=True, errors="replace"):
            if _CONTROL.search(name) or _CONTROL.search(value):
                return _refuse_control("query")
    return None


def control_characters_in_body(body: bytes, scope: Scope) -> Any:
    """The refusal of a JSON body with a control character in a string; bodies that are not
    JSON are the app's to refuse."""
    headers = dict(scope.get("headers") or [])
    content_type = headers.get(b"content-type", b"application/json").lower()
    if b"json" not in content_type:
        return None
    if _JSON_CONTROL.search(body):
        return _refuse_control("body")
    return None


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed


class BodyTooLarge(Exception):
    """A body passed the limit while being read (the app's handler answers 413)."""


# A caller's id is kept only if it cannot garble a log line or a header.
_CALLER_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


class RequestIdMiddleware:
    """Every request gets an id: the caller's `X-Request-ID` when it is sane, a new one otherwise.
    It is returned in the response and carried by every log line written while the request runs,
    so a caller's report can be matched to our logs. Writes the access log line, with the task
    and workflow the request was about."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        request_id = sent if _CALLER_REQUEST_ID.fullmatch(sent) else uuid.uuid4().hex
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        token = REQUEST_ID.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if scope["path"] not in ("/healthz", "/readyz", "/metrics"):
                access_log.info(
                    "%s %s %d",
                    scope["method"],
                    scope["path"],
                    status,
                    extra={
                        "request_id": request_id,
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                        **_subject(scope.get("path_params") or {}),
                    },
                )
            REQUEST_ID.reset(token)


# Path parameters by what they name. Only these name a workflow (a process id); `{task_id}`
# names a task (`<workflow id>.<n>`); the rest name reference data, never a workflow. A route
# with a parameter in none of these sets fails tests/test_access_log_subject.py: classify it.
WORKFLOW_ID_PARAMS = frozenset(
    {"po_id", "cert_id", "inc_id", "inv_id", "cinv_id", "dis_id", "app_id", "process_id", "item_id"}
)
TASK_ID_PARAM = "task_id"
OTHER_ID_PARAMS = frozenset({"partner_id", "account_id", "subscription_id"})


def _subject(path_params: dict[str, object]) -> dict[str, str]:
    """The task and workflow a request is about, for the access log: `{task_id}` (ids are
    `<workflow id>.<n>`) or a parameter of `WORKFLOW_ID_PARAMS`. Other parameters (an admin
    route's `{partner_id}`) name no workflow and set none."""
    task_id = path_params.get(TASK_ID_PARAM)
    if task_id:
        task = str(task_id)
        return {"task_id": task, "workflow_id": task.rpartition(".")[0] or task}
    for name, value in path_params.items():
        if name in WORKFLOW_ID_PARAMS:
            return {"workflow_id": str(value)}
    return {}
