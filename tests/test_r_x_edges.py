"""The edges of the API (issue 12, finding 3), each as a kind:

- tokens are checked with a clock leeway (`jwt_leeway`, PT30S) on iat, nbf and exp; `exp` is
  required;
- a body over `max_body_bytes` is 413 in the error envelope however it arrives (with a
  Content-Length, or chunked without one);
- R-X-1: the rate limit applies before authentication, by the verified token's `sub` or else the
  client address (rotating invalid tokens does not escape it), and is shared by every API
  replica through `rate_limit.storage_url` (tested with two servers against the local Redis).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from api.middleware import RateLimiter
from config import RateLimit, Settings
from tests.conftest import ApiServer, Stack, free_port
from tests.test_api_contract import assert_envelope

REDIS_URL = "redis://127.0.0.1:6379/5"


def raw_token(stack: Stack, **claims: Any) -> dict[str, str]:
    token = jwt.encode(
        {"sub": "pdm-li", "roles": ["pdm"], **claims}, stack.settings.jwt_secret, "HS256"
    )
    return {"Authorization": f"Bearer {token}"}


# --- JWT leeway ---------------------------------------------------------------------------------


def test_jwt_leeway_setting_is_an_iso_duration(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().jwt_leeway == "PT30S" and Settings().jwt_leeway_seconds == 30
    monkeypatch.setenv("PARTNERFLOW_JWT_LEEWAY", "PT1M")
    assert Settings().jwt_leeway_seconds == 60
    monkeypatch.setenv("PARTNERFLOW_JWT_LEEWAY", "thirty seconds")
    with pytest.raises(ValueError):
        Settings()


@pytest.mark.parametrize(
    ("claims", "status"),
    [
        # the finding: a valid token whose iat is 5 s ahead of the server's clock → was 401
        ({"iat": 5, "exp": 3600}, 200),
        ({"iat": 120, "exp": 3600}, 401),
        ({"nbf": 5, "exp": 3600}, 200),
        ({"nbf": 120, "exp": 3600}, 401),
        ({"exp": -10}, 200),  # expired 10 s ago: within the leeway
        ({"exp": -120}, 401),
        ({"iat": 0}, 401),  # no exp: refused
    ],
)
async def test_tokens_are_checked_with_a_clock_leeway(
    stack: Stack, claims: dict[str, int], status: int
) -> None:
    now = int(time.time())
    r = await stack.http.get(
        "/v1/tasks", headers=raw_token(stack, **{k: now + v for k, v in claims.items()})
    )
    assert r.status_code == status, r.text
    if status == 401:
        assert_envelope(r, 401, "PF.UNAUTHENTICATED")


# --- 413 however the body arrives ---------------------------------------------------------------


async def test_r_x_2_oversized_body_is_413_however_it_arrives(stack: Stack) -> None:
    headers = {
        **stack.auth("u-acme-1", ["partner_admin"], "p-acme"),
        "Content-Type": "application/json",
    }
    size = 295 * 1024  # the finding: 295 KB chunked → was 400 PF.BAD_REQUEST
    assert size > stack.settings.max_body_bytes
    payload = b'{"customer_name": "' + b"x" * size + b'"}'

    async def chunked() -> AsyncIterator[bytes]:
        for start in range(0, len(payload), 16 * 1024):
            yield payload[start : start + 16 * 1024]

    with_length = await stack.http.post("/v1/opportunities", content=payload, headers=headers)
    assert_envelope(with_length, 413, "PF.PAYLOAD_TOO_LARGE")
    streamed = await stack.http.post("/v1/opportunities", content=chunked(), headers=headers)
    assert "content-length" not in streamed.request.headers
    assert streamed.request.headers["transfer-encoding"] == "chunked"
    assert_envelope(streamed, 413, "PF.PAYLOAD_TOO_LARGE")

    async def small() -> AsyncIterator[bytes]:
        yield b'{"customer_name": '
        yield b'"x"}'

    # a small chunked body still reaches the route (422: the rest of the PO is missing)
    ok = await stack.http.post("/v1/opportunities", content=small(), headers=headers)
    assert_envelope(ok, 422)


# --- R-X-1 before authentication, shared across replicas ------------------------------------------


async def limited_server(stack: Stack, limit: RateLimit) -> ApiServer:
    server = ApiServer(stack.settings.model_copy(update={"rate_limit": limit}))
    await server.start()
    return server


async def test_r_x_1_rotating_invalid_tokens_does_not_escape_the_limit(stack: Stack) -> None:
    server = await limited_server(stack, RateLimit(requests_per_second=1, burst=20))
    try:
        async with httpx.AsyncClient(base_url=server.url) as http:
            codes: list[httpx.Response] = []
            started = time.monotonic()
            for _ in range(400):  # the finding: 400 answers of 401, never a 429
                bogus = {"Authorization": f"Bearer not-a-jwt-{uuid.uuid4().hex}"}
                codes.append(await http.get("/v1/tasks", headers=bogus))
            # the bucket refills at 1/s: a slow (loaded) run earns one more token per second
            refilled = int(time.monotonic() - started) + 1
        statuses = [r.status_code for r in codes]
        assert statuses.count(401) <= 20 + refilled, statuses
        assert statuses.count(429) >= 380 - refilled, statuses
        refused = next(r for r in codes if r.status_code == 429)
        assert_envelope(refused, 429, "PF.RATE_LIMITED")
        assert int(refused.headers["Retry-After"]) >= 1
    finally:
        await server.stop()


@pytest.mark.parametrize("before_boundary_s", [49.9, 25.0, 0.0])
async def test_r_x_1_at_most_burst_in_any_window_across_a_window_boundary(
    monkeypatch: pytest.MonkeyPatch, before_boundary_s: float
) -> None:
    """R-X-1: at most `burst` requests in any window, also when a run of requests straddles a
    boundary of the library's windows (a sliding-window counter admitted burst + 1 there: the
    flake that showed it). The clock is the library's `time.time`, stepped by hand."""
    now = [1_000_000.0 + before_boundary_s]  # windows of 50 s: 1,000,050 is a boundary
    monkeypatch.setattr(time, "time", lambda: now[0])
    limiter = RateLimiter(RateLimit(requests_per_second=0.1, burst=5))
    allowed = []
    for _ in range(8):
        allowed.append(await limiter.take("sub:pdm-li") == 0.0)
        now[0] += 0.05
    assert allowed == [True] * 5 + [False] * 3
    now[0] += 50  # a whole window later the caller has its burst again
    assert await limiter.take("sub:pdm-li") == 0.0


async def test_r_x_1_a_verified_caller_is_limited_by_sub_not_by_token(stack: Stack) -> None:
    server = await limited_server(stack, RateLimit(requests_per_second=0.1, burst=5))
    try:
        async with httpx.AsyncClient(base_url=server.url) as http:
            # a fresh token per request for the same person: one bucket (its sub)
            statuses = [
                (
                    await http.get(
                        "/v1/tasks", headers=raw_token(stack, exp=int(time.time()) + i + 60)
                    )
                ).status_code
                for i in range(8)
            ]
            assert statuses == [200] * 5 + [429] * 3, statuses
            other = await http.get("/v1/tasks", headers=stack.auth("pdm-wang", ["pdm"]))
            assert other.status_code == 200
    finally:
        await server.stop()


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    prefix = f"pf-test-rl-{uuid.uuid4().hex[:10]}"
    yield prefix
    client = aioredis.from_url(REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def test_r_x_1_two_api_servers_share_one_limit_through_redis(
    stack: Stack, redis_prefix: str
) -> None:
    limit = RateLimit(
        requests_per_second=0.1, burst=10, storage_url=REDIS_URL, key_prefix=redis_prefix
    )
    a, b = await limited_server(stack, limit), await limited_server(stack, limit)
    try:
        async with (
            httpx.AsyncClient(base_url=a.url) as ha,
            httpx.AsyncClient(base_url=b.url) as hb,
        ):
            headers = stack.auth("pdm-li", ["pdm"])
            statuses = []
            for i in range(16):
                statuses.append(
                    (await (ha if i % 2 else hb).get("/v1/tasks", headers=headers)).status_code
                )
            # one limit of 10 for both servers (each alone would have let 16 through)
            assert statuses.count(200) == 10 and statuses[10:] == [429] * 6, statuses
            # invalid tokens from one address share the address's bucket across servers too
            bogus = [
                (
                    await (ha if i % 2 else hb).get(
                        "/v1/tasks", headers={"Authorization": f"Bearer x{i}"}
                    )
                ).status_code
                for i in range(14)
            ]
            assert bogus.count(401) == 10 and bogus.count(429) == 4, bogus
    finally:
        await a.stop()
        await b.stop()


def storage_errors() -> float:
    return REGISTRY.get_sample_value("partnerflow_rate_limit_storage_errors_total") or 0.0


async def test_r_x_1_an_unreachable_limit_store_fails_open_and_is_counted(stack: Stack) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    server = await limited_server(
        stack, RateLimit(requests_per_second=0.1, burst=1, storage_url=dead)
    )
    try:
        before = storage_errors()
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            statuses = await asyncio.gather(
                *(http.get("/v1/tasks", headers=stack.auth("pdm-li", ["pdm"])) for _ in range(3))
            )
        assert [r.status_code for r in statuses] == [200, 200, 200]
        assert storage_errors() >= before + 3
    finally:
        await server.stop()
