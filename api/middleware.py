"""Cross-cutting HTTP concerns: body size limit, per-caller rate limit (R-X-1), request metrics,
request ids."""

from __future__ import annotations

import hashlib
import logging
import math
import re
import time
import uuid
from dataclasses import dataclass

from prometheus_client import Counter, Histogram
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import envelope
from config import RateLimit
from telemetry import REQUEST_ID

access_log = logging.getLogger("partnerflow.access")

REQUESTS = Counter(
    "partnerflow_http_requests_total", "HTTP requests", ["method", "route", "status"]
)
LATENCY = Histogram(
    "partnerflow_http_request_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """A token bucket per caller (bearer token, else client address), in this process.

    Behind several API replicas each replica limits on its own; the vendor's gateway limits
    globally in front (DESIGN R-X-1).
    """

    def __init__(self, limit: RateLimit, max_callers: int = 100_000) -> None:
        self.rate = limit.requests_per_second
        self.burst = limit.burst
        self.max_callers = max_callers
        self.buckets: dict[str, _Bucket] = {}

    def take(self, caller: str) -> float:
        """0 if allowed, else seconds until a token is free."""
        now = time.monotonic()
        bucket = self.buckets.get(caller)
        if bucket is None:
            if len(self.buckets) >= self.max_callers:
                self.buckets.clear()
            bucket = self.buckets[caller] = _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self.rate


class GuardMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware buffering): rejects over-large bodies with 413 and
    callers over their rate with 429 + Retry-After, and records request metrics."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, rate_limit: RateLimit) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.limiter = RateLimiter(rate_limit)

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
            rejection = self._reject(scope)
            if rejection is not None:
                await rejection(scope, receive, send_wrapper)
                return
            await self.app(scope, self._limited_receive(receive), send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            REQUESTS.labels(method, path, str(status_holder["status"])).inc()
            LATENCY.labels(method, path).observe(time.perf_counter() - started)

    def _reject(self, scope: Scope):  # type: ignore[no-untyped-def]
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            return envelope(
                "PF.PAYLOAD_TOO_LARGE", f"the body is larger than {self.max_body_bytes} bytes"
            )
        if scope["path"] in ("/healthz", "/readyz", "/metrics"):
            return None
        auth = headers.get(b"authorization")
        client = scope.get("client")
        caller = (
            hashlib.sha256(auth).hexdigest()
            if auth
            else f"addr:{client[0] if client else 'unknown'}"
        )
        wait = self.limiter.take(caller)
        if wait > 0:
            return envelope(
                "PF.RATE_LIMITED",
                "too many requests; retry after the given seconds",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
        return None

    def _limited_receive(self, receive: Receive) -> Receive:
        seen = 0
        limit = self.max_body_bytes

        async def wrapped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge()
            return message

        return wrapped


class BodyTooLarge(Exception):
    """A chunked body passed the limit while being read."""


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


def _subject(path_params: dict[str, object]) -> dict[str, str]:
    """The task and workflow a request is about: `{task_id}` (ids are `<workflow id>.<n>`) or
    any other `{..._id}` path parameter, which names a process, i.e. a workflow."""
    task_id = path_params.get("task_id")
    if task_id:
        task = str(task_id)
        return {"task_id": task, "workflow_id": task.rpartition(".")[0] or task}
    for name, value in path_params.items():
        if name.endswith("_id"):
            return {"workflow_id": str(value)}
    return {}
