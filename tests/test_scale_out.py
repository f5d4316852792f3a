"""Scale-out on one machine (issue 12): two API processes and two worker processes, each its own
OS process, against one Temporal dev server, one fresh PostgreSQL database and one Redis rate
limit store. Whatever matters (decisions, idempotency records, duplicate claims, the rate-limit
budget) must hold across processes, so nothing that matters may be process-local.

- R-X-6 / R-X-5: concurrent completions of one task spread over both APIs → exactly one wins.
- R-PO-4: the same customer/project submitted through both APIs at once → exactly one accepted.
- R-X-6: one Idempotency-Key sent to both APIs, concurrently and then one after the other → one
  effect, and every answer is the first answer byte for byte (or 409 while it is in flight).
- R-X-1: one caller's requests spread over both APIs share one budget (the burst, not twice it).
"""

from __future__ import annotations

import asyncio
import functools
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
import redis.asyncio as aioredis
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

from config import Settings
from store.migrate import upgrade
from tests.conftest import (
    ARTIFACTS,
    TEST_DB_POOL_SIZE,
    PostgresDatabases,
    TemporalServer,
    _pg_conninfo,
    eventually,
    free_port,
    load_reference_data,
    stop_process,
    wait_for_namespace,
)
from tests.helpers import ALL_PASS, Actors, SettingsTokens, history_actions, po_body
from worker import connect

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = "redis://127.0.0.1:6379/5"
# Per caller (the token's `sub`): enough for each actor's share of the test, and a refill so
# slow (one request per 1000 s) that the budget is the burst for the test's whole run.
BURST = 40
REFILL_PER_SECOND = 0.001


@dataclass
class ScaleOut:
    settings: Settings
    apis: list[httpx.AsyncClient]
    tokens: SettingsTokens
    redis_prefix: str


def child_env(settings: Settings, redis_prefix: str, **extra: str) -> dict[str, str]:
    """The processes read their settings from the environment, as in a deployment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARTNERFLOW_")}
    env.update(
        PARTNERFLOW_DATABASE_URL=settings.resolved_database_url,
        PARTNERFLOW_TEMPORAL_ADDRESS=settings.resolved_temporal_address,
        PARTNERFLOW_TASK_QUEUE=settings.task_queue,
        PARTNERFLOW_DATABASE_POOL_SIZE=str(TEST_DB_POOL_SIZE),
        PARTNERFLOW_JWT_SECRET=settings.jwt_secret,
        PARTNERFLOW_UPDATE_TIMEOUT_SECONDS="20",
        PARTNERFLOW_RATE_LIMIT__STORAGE_URL=REDIS_URL,
        PARTNERFLOW_RATE_LIMIT__KEY_PREFIX=redis_prefix,
        PARTNERFLOW_RATE_LIMIT__BURST=str(BURST),
        PARTNERFLOW_RATE_LIMIT__REQUESTS_PER_SECOND=str(REFILL_PER_SECOND),
        **extra,
    )
    return env


def spawn(command: list[str], env: dict[str, str], log_name: str) -> subprocess.Popen[bytes]:
    ARTIFACTS.mkdir(exist_ok=True)
    log = open(ARTIFACTS / log_name, "wb")
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


@pytest.fixture
def scale_database(postgres_databases: PostgresDatabases) -> str:
    url = postgres_databases.create()
    upgrade(url)
    return url


@pytest.fixture
async def scale_out(
    temporal_server: TemporalServer, scale_database: str
) -> AsyncIterator[ScaleOut]:
    prefix = f"pf-test-scale-{uuid.uuid4().hex[:10]}"
    settings = Settings(
        database_url=scale_database,
        temporal_address=temporal_server.address,
        task_queue=f"pf-scale-{uuid.uuid4().hex[:8]}",
    )
    client = await connect(settings)
    await wait_for_namespace(client)
    processes: list[subprocess.Popen[bytes]] = []
    clients: list[httpx.AsyncClient] = []
    try:
        for i in range(2):
            env = child_env(settings, prefix, PARTNERFLOW_WORKER_METRICS_PORT=str(free_port()))
            processes.append(
                spawn([sys.executable, "worker.py"], env, f"scale-worker-{i}-{prefix}.log")
            )
        ports = [free_port(), free_port()]
        for i, port in enumerate(ports):
            command = [sys.executable, "-m", "uvicorn", "api.main:app"]
            command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
            processes.append(spawn(command, child_env(settings, prefix), f"scale-api-{i}.log"))
            clients.append(httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30))

        def alive() -> None:
            for proc in processes:
                assert proc.poll() is None, f"{proc.args!r} exited with {proc.returncode}"

        async def ready(http: httpx.AsyncClient) -> bool:
            alive()
            try:
                return (await http.get("/readyz")).status_code == 200
            except httpx.TransportError:
                return False

        for http in clients:
            # bounded: four interpreters importing at once on a loaded 2-core box take a while
            await eventually(
                functools.partial(ready, http), timeout=120, what=f"{http.base_url}/readyz"
            )

        async def two_workers_polling() -> bool:
            alive()
            described = await client.workflow_service.describe_task_queue(
                DescribeTaskQueueRequest(
                    namespace=settings.temporal_namespace,
                    task_queue=TaskQueue(name=settings.task_queue),
                    task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
                )
            )
            return len({p.identity for p in described.pollers}) >= 2

        await eventually(two_workers_polling, timeout=120, what="both workers polling")
        tokens = SettingsTokens(settings)
        await load_reference_data(clients[0], tokens.auth("ops-1", ["ops_admin"]))
        yield ScaleOut(settings, clients, tokens, prefix)
    finally:
        for http in clients:
            await http.aclose()
        for proc in processes:  # SIGTERM: each drains and exits; killed after 15 s
            proc.terminate()
        for proc in processes:
            stop_process(proc, grace=15)
        redis = aioredis.from_url(REDIS_URL)
        try:
            keys = [k async for k in redis.scan_iter(match=f"{prefix}*")]
            if keys:
                await redis.delete(*keys)
        finally:
            await redis.aclose()


def spread(apis: list[httpx.AsyncClient], n: int) -> Iterator[httpx.AsyncClient]:
    """n clients, alternating between the two API processes."""
    return (apis[i % len(apis)] for i in range(n))


async def test_scale_out_two_apis_two_workers_share_everything(scale_out: ScaleOut) -> None:
    a = Actors(scale_out.tokens)
    api_a, api_b = scale_out.apis

    # --- R-X-6 / R-X-5: 20 concurrent completions of one task over both APIs: one winner ----
    r = await api_a.post("/v1/opportunities", json=po_body(), headers=a.acme)
    assert r.status_code == 201, r.text
    po = r.json()
    body = {"outcome": "approve", "data": {"criteria": ALL_PASS}}
    responses = await asyncio.gather(
        *(
            http.post(f"/v1/tasks/{po['open_task_id']}/complete", json=body, headers=a.pdm_li)
            for http in spread(scale_out.apis, 20)
        )
    )
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) == 1 and codes.count(409) == 19, [r.text for r in responses]
    assert {r.json()["error_code"] for r in responses if r.status_code == 409} == {
        "PF.TASK_NOT_OPEN"
    }
    for http in scale_out.apis:  # both processes read the one outcome, and one audit row
        assert (await history_actions(http, a.acme, po["id"])).count("review_approve") == 1

    # --- R-PO-4: one customer/project from two users of one partner through both APIs -------
    same = po_body()
    responses = await asyncio.gather(
        *(
            http.post("/v1/opportunities", json=same, headers=h)
            for http, h in zip(
                spread(scale_out.apis, 12),
                [a.acme, a.acme, a.acme_member, a.acme_member] * 3,
                strict=True,
            )
        )
    )
    codes = sorted(r.status_code for r in responses)
    assert codes.count(201) == 1 and codes.count(409) == 11, [r.text for r in responses]
    winner = next(r.json()["id"] for r in responses if r.status_code == 201)
    assert {r.json()["details"]["existing_id"] for r in responses if r.status_code == 409} == {
        winner
    }

    # --- R-X-6: one Idempotency-Key to both APIs, concurrently then one after the other ------
    body = po_body()
    headers = {**a.acme, "Idempotency-Key": f"portal-{uuid.uuid4()}"}
    concurrent = await asyncio.gather(
        *(
            http.post("/v1/opportunities", json=body, headers=headers)
            for http in spread(scale_out.apis, 8)
        )
    )
    firsts = [r for r in concurrent if r.status_code == 201]
    in_flight = [r for r in concurrent if r.status_code == 409]
    assert firsts and len(firsts) + len(in_flight) == 8, [r.text for r in concurrent]
    assert {r.json()["error_code"] for r in in_flight} <= {"PF.IDEMPOTENCY_KEY_IN_FLIGHT"}
    replays = [
        await http.post("/v1/opportunities", json=body, headers=headers)
        for http in (api_b, api_a, api_b)
    ]
    answer = replays[0].content  # the stored first answer
    assert all((r.status_code, r.content) == (201, answer) for r in replays), replays
    # every concurrent twin answered with that first answer (as JSON: PostgreSQL's jsonb keeps
    # the stored answer's values, not its key order; the replays above agree byte for byte)
    first = replays[0].json()
    assert [r.json() for r in firsts] == [first] * len(firsts), [first, *(r.json() for r in firsts)]
    po_id = firsts[0].json()["id"]
    with psycopg.connect(_pg_conninfo(scale_out.settings.resolved_database_url)) as db:
        rows = db.execute(
            "SELECT id FROM processes WHERE view->>'customer_name' = %s", (body["customer_name"],)
        ).fetchall()
    assert rows == [(po_id,)], rows  # one effect in the shared read model
    assert await history_actions(api_a, a.acme, po_id) == ["submitted", "routed"]

    # --- R-X-1: one caller over both APIs has one budget (BURST), not one per process --------
    probe = scale_out.tokens.auth(f"probe-{uuid.uuid4().hex[:6]}", ["pdm"])
    started = time.monotonic()
    statuses = [
        (await http.get("/v1/tasks", headers=probe)).status_code
        for http in spread(scale_out.apis, 2 * BURST)
    ]
    elapsed = time.monotonic() - started
    refill = int(elapsed * REFILL_PER_SECOND) + 1
    assert BURST <= statuses.count(200) <= BURST + refill, statuses
    assert statuses[:BURST] == [200] * BURST and statuses[-1] == 429, statuses
    served_by = {
        str(http.base_url): [s for i, s in enumerate(statuses) if i % 2 == j]
        for j, http in enumerate(scale_out.apis)
    }
    # each process accepted only about half: alone, each would have let BURST through
    assert all(route.count(200) < BURST for route in served_by.values()), served_by
