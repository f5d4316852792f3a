"""Faults survived with nothing lost and nothing done twice (issue 8): the worker SIGKILLed
mid-transition while the database is away, the database cut and back, the Temporal server
killed and restarted on its SQLite file."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url
from sqlmodel import col, func, select

from api.processes import UPDATE_GRACE_SECONDS
from config import Settings
from store.migrate import upgrade
from store.models import AuditEvent, OutboxMessage
from tests.conftest import (
    ARTIFACTS,
    TEST_DB_POOL_SIZE,
    ApiServer,
    PostgresDatabases,
    TemporalServer,
    eventually,
    free_port,
    load_reference_data,
    start_temporal,
    stop_process,
    wait_for_namespace,
)
from tests.faults import CuttableProxy
from tests.helpers import ALL_PASS, Actors, SettingsTokens, history_actions, submit
from worker import connect, running_worker
from workflows.human_task import STORE_LOCAL_TIMEOUT, STORE_RETRY

ROOT = Path(__file__).resolve().parent.parent


# A worker interpreter importing temporalio, SQLAlchemy and the service while the other xdist
# worker and its servers share the 2 cores: tens of seconds at worst (as in test_scale_out.py).
WORKER_START_BOUND = 120.0

# Once a worker that held the PO's workflow is killed and a replacement polls, the decision is
# applied at the latest when: the store activity's pending retry timer fires (its backoff is at
# most STORE_RETRY.maximum_interval), the workflow task leaves the dead worker's sticky queue
# (the SDK's sticky schedule-to-start timeout) or, if it was running there, times out (the
# server's default workflow task timeout), and one attempt runs (STORE_LOCAL_TIMEOUT). The POST
# that reads the outcome then waits for the Update at most update_timeout_seconds plus the
# API's grace.
STICKY_SCHEDULE_TO_START = timedelta(seconds=10)  # temporalio Worker default
WORKFLOW_TASK_TIMEOUT = timedelta(seconds=10)  # server default; the API sets none
DECISION_APPLIED_BOUND = (
    (STORE_RETRY.maximum_interval or timedelta())
    + STICKY_SCHEDULE_TO_START
    + WORKFLOW_TASK_TIMEOUT
    + STORE_LOCAL_TIMEOUT
)


class WorkerProcess:
    """`python worker.py` as its own process, so it can be SIGKILLed."""

    def __init__(self, settings: Settings) -> None:
        self.env = {
            **os.environ,
            "PARTNERFLOW_TEMPORAL_ADDRESS": settings.resolved_temporal_address,
            "PARTNERFLOW_DATABASE_URL": settings.resolved_database_url,
            "PARTNERFLOW_TASK_QUEUE": settings.task_queue,
            "PARTNERFLOW_DATABASE_POOL_SIZE": str(settings.database_pool_size),
            "PARTNERFLOW_WORKER_METRICS_PORT": "0",  # several workers share this machine
        }
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        # Its output goes to test-artifacts/ for whoever reads a failure; the test polls it.
        ARTIFACTS.mkdir(exist_ok=True)
        self.log_path = ARTIFACTS / f"worker-{uuid.uuid4().hex[:8]}.log"
        log = await asyncio.to_thread(self.log_path.open, "wb")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(ROOT / "worker.py"),
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        finally:
            log.close()

        async def polling() -> bool:
            text = await asyncio.to_thread(self.log_path.read_bytes)
            if self.proc is not None and self.proc.returncode is not None:
                raise AssertionError(f"the worker process exited with {self.proc.returncode}")
            return b"worker polling" in text

        try:
            await eventually(polling, timeout=WORKER_START_BOUND, what="the worker process to poll")
        except AssertionError as exc:
            text = (await asyncio.to_thread(self.log_path.read_bytes)).decode()[-2000:]
            raise AssertionError(f"{exc}; it printed: {text}") from None

    async def kill(self) -> None:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()


StartWorker = Callable[[Settings], Awaitable[WorkerProcess]]


@pytest.fixture
async def worker_processes() -> AsyncIterator[StartWorker]:
    """Starts `worker.py` processes; whatever the test did not kill is killed after it."""
    started: list[WorkerProcess] = []

    async def start(settings: Settings) -> WorkerProcess:
        worker = WorkerProcess(settings)
        started.append(worker)
        await worker.start()
        return worker

    yield start
    for worker in started:
        if worker.proc is not None:
            await worker.kill()


@asynccontextmanager
async def api_for(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    api = ApiServer(settings)
    await api.start()
    try:
        async with httpx.AsyncClient(base_url=api.url, timeout=60) as http:
            yield http
    finally:
        await api.stop()


async def count_rows(http_settings: Settings, model: type, where: object) -> int:
    from store.db import create_engine, session_factory

    engine = create_engine(http_settings.resolved_database_url)
    try:
        async with session_factory(engine)() as session:
            stmt = select(func.count()).select_from(model).where(where)  # type: ignore[arg-type]
            return int((await session.exec(stmt)).one())
    finally:
        await engine.dispose()


async def test_worker_killed_while_the_database_is_away_loses_and_repeats_nothing(
    temporal_server: TemporalServer,
    postgres_databases: PostgresDatabases,
    worker_processes: StartWorker,
) -> None:
    direct = postgres_databases.create()
    upgrade(direct)
    parsed = make_url(direct)
    proxy = CuttableProxy(parsed.host or "127.0.0.1", parsed.port or 5432)
    await proxy.start()
    try:
        await _worker_killed_while_the_database_is_away(
            temporal_server, direct, proxy, worker_processes
        )
    finally:
        await proxy.cut()


async def _worker_killed_while_the_database_is_away(
    temporal_server: TemporalServer, direct: str, proxy: CuttableProxy, start_worker: StartWorker
) -> None:
    parsed = make_url(direct)
    proxied = parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    base = Settings(
        temporal_address=temporal_server.address,
        task_queue=f"pf-faults-{uuid.uuid4().hex[:8]}",
        update_timeout_seconds=8,
        rate_limit={"requests_per_second": 10_000, "burst": 10_000},
        database_pool_size=TEST_DB_POOL_SIZE,
    )
    api_settings = base.model_copy(update={"database_url": direct})
    worker_settings = base.model_copy(update={"database_url": proxied})
    worker = await start_worker(worker_settings)
    async with api_for(api_settings) as http, api_for(worker_settings) as cut_http:
        a = Actors(SettingsTokens(api_settings))
        await load_reference_data(http, a.admin)
        po = await submit(http, a.acme)
        decision = {"outcome": "approve", "data": {"criteria": ALL_PASS}}
        key = {"Idempotency-Key": f"d-{uuid.uuid4()}"}
        path = f"/v1/tasks/{po['open_task_id']}/complete"

        await proxy.cut()
        # the API whose database is away answers reads with 503 in the envelope
        r = await cut_http.get(f"/v1/opportunities/{po['id']}", headers=a.acme)
        assert r.status_code == 503 and r.json()["error_code"] == "PF.STORE_UNAVAILABLE"
        # the decision is accepted, but its transition cannot be written yet
        r = await http.post(path, json=decision, headers={**a.pdm_li, **key})
        assert r.status_code == 503, r.text
        assert r.json()["error_code"] == "PF.OUTCOME_PENDING"
        await worker.kill()  # SIGKILL, mid-transition
        await proxy.restore()
        replacement = await start_worker(worker_settings)

        async def outcome() -> httpx.Response | None:
            r = await http.post(path, json=decision, headers={**a.pdm_li, **key})
            return r if r.status_code == 200 else None

        bound = DECISION_APPLIED_BOUND.total_seconds() + base.update_timeout_seconds
        bound += UPDATE_GRACE_SECONDS
        r = await eventually(outcome, timeout=bound, what="the decision to be applied")
        assert r.json()["status"] == "approved"
        assert (await history_actions(http, a.acme, po["id"])).count("review_approve") == 1
        assert (
            await count_rows(api_settings, AuditEvent, col(AuditEvent.subject_id) == po["id"]) == 3
        )
        assert (
            await count_rows(
                api_settings, OutboxMessage, col(OutboxMessage.event_key).startswith(po["id"] + ":")
            )
            == 2
        )
        await replacement.kill()


StartTemporal = Callable[..., TemporalServer]


@pytest.fixture
def own_temporal(tmp_path: Path) -> Iterator[StartTemporal]:
    """Starts dev servers of this test's own (`start_temporal`'s arguments); each is stopped with
    its process group after the test, however it ended."""
    started: list[TemporalServer] = []

    def start(**kwargs: Any) -> TemporalServer:
        server = start_temporal(tmp_path, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        stop_process(server.process)


async def test_temporal_restart_on_the_same_file_keeps_open_tasks(
    own_temporal: StartTemporal, tmp_path: Path
) -> None:
    server = own_temporal(port=free_port(), ui_port=free_port())
    url = f"sqlite:///{tmp_path / 'pf.db'}"
    upgrade(url)
    settings = Settings(
        database_url=url,
        temporal_address=server.address,
        task_queue=f"pf-restart-{uuid.uuid4().hex[:8]}",
        rate_limit={"requests_per_second": 10_000, "burst": 10_000},
    )
    client = await connect(settings)
    await wait_for_namespace(client)
    port = int(server.address.rsplit(":", 1)[1])
    ui_port = int(server.ui_url.rsplit(":", 1)[1])
    async with running_worker(settings, client), api_for(settings) as http:
        a = Actors(SettingsTokens(settings))
        await load_reference_data(http, a.admin)
        po = await submit(http, a.acme)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
        server = own_temporal(db_file=server.db_file, port=port, ui_port=ui_port)
        await wait_for_namespace(client)

        async def decided() -> httpx.Response | None:
            r = await http.post(
                f"/v1/tasks/{po['open_task_id']}/complete",
                json={"outcome": "approve", "data": {"criteria": ALL_PASS}},
                headers={**a.pdm_li, "Idempotency-Key": "after-restart"},
            )
            return r if r.status_code == 200 else None

        r = await eventually(decided, timeout=60, what="a decision after the restart")
        assert r.json()["status"] == "approved"
