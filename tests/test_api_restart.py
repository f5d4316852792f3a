"""The API killed (SIGKILL) and restarted during load (issue 8): every request is either fully
applied or answered with an error, and retrying it with its Idempotency-Key gives one
consistent result; nothing is half-applied."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from functools import partial
from pathlib import Path

import httpx
from sqlmodel import col, select

from config import Settings
from store.db import create_engine, session_factory
from store.migrate import upgrade
from store.models import AuditEvent, ProcessRow
from tests.conftest import (
    ARTIFACTS,
    TemporalServer,
    eventually,
    free_port,
    load_reference_data,
    stop_process,
)
from tests.helpers import Actors, SettingsTokens, po_body
from worker import connect, running_worker

ROOT = Path(__file__).resolve().parent.parent


def start_api(settings: Settings, port: int, log_name: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PARTNERFLOW_DATABASE_URL": settings.resolved_database_url,
        "PARTNERFLOW_TEMPORAL_ADDRESS": settings.resolved_temporal_address,
        "PARTNERFLOW_TASK_QUEUE": settings.task_queue,
        "PARTNERFLOW_RATE_LIMIT__REQUESTS_PER_SECOND": "100000",
        "PARTNERFLOW_RATE_LIMIT__BURST": "100000",
    }
    ARTIFACTS.mkdir(exist_ok=True)
    with (ARTIFACTS / log_name).open("wb") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "api.main:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def ready(base: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=2) as http:
            return (await http.get(f"{base}/readyz")).status_code == 200
    except httpx.HTTPError:
        return False


async def test_api_killed_under_load_leaves_nothing_half_applied(
    temporal_server: TemporalServer, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'pf.db'}"
    upgrade(url)
    settings = Settings(
        database_url=url,
        temporal_address=temporal_server.address,
        task_queue=f"pf-apikill-{uuid.uuid4().hex[:8]}",
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    a = Actors(SettingsTokens(settings))
    client = await connect(settings)
    api = start_api(settings, port, "api-restart-1.log")
    try:
        async with running_worker(settings, client, send_notifications=False):
            await eventually(lambda: ready(base), timeout=60, what="the API")
            async with httpx.AsyncClient(base_url=base, timeout=60) as http:
                await load_reference_data(http, a.admin)
                requests = [(f"load-{uuid.uuid4()}", po_body()) for _ in range(30)]

                async def send(key: str, body: dict[str, object]) -> httpx.Response | None:
                    try:
                        return await http.post(
                            "/v1/opportunities",
                            json=body,
                            headers={**a.acme, "Idempotency-Key": key},
                        )
                    except httpx.HTTPError:
                        return None  # the connection died with the API

                inflight = [asyncio.create_task(send(k, b)) for k, b in requests]
                await eventually(lambda: _some_done(inflight, 3), timeout=60, what="some answers")
                api.send_signal(signal.SIGKILL)
                api.wait()
                first = await asyncio.gather(*inflight)
            answered = [r for r in first if r is not None and r.status_code == 201]
            assert answered, "the API was killed before answering anything"
            assert any(r is None or r.status_code >= 500 for r in first), (
                "the kill interrupted nothing; the test proves nothing"
            )

            api = start_api(settings, port, "api-restart-2.log")
            await eventually(lambda: ready(base), timeout=60, what="the restarted API")
            async with httpx.AsyncClient(base_url=base, timeout=60) as http:
                # R-X-6: a key whose attempt died with the API stays in flight (409
                # PF.IDEMPOTENCY_KEY_IN_FLIGHT, Retry-After) until its bound, then the retry
                # takes it over and joins the process the dead attempt may have started.
                async def retry(k: str, b: dict[str, object]) -> httpx.Response | None:
                    r = await http.post(
                        "/v1/opportunities", json=b, headers={**a.acme, "Idempotency-Key": k}
                    )
                    if r.status_code == 409:
                        assert r.json()["error_code"] == "PF.IDEMPOTENCY_KEY_IN_FLIGHT", r.text
                        return None
                    return r

                retried = []
                for k, b in requests:
                    retried.append(
                        await eventually(partial(retry, k, b), timeout=90, what="the key's answer")
                    )
            assert [r.status_code for r in retried] == [201] * len(requests), [
                r.text for r in retried if r.status_code != 201
            ]
            for before, after in zip(first, retried, strict=True):
                if before is not None and before.status_code == 201:
                    assert after.json() == before.json()  # the first answer, replayed
            ids = [r.json()["id"] for r in retried]
            assert len(set(ids)) == len(requests)
        engine = create_engine(url)
        try:
            async with session_factory(engine)() as session:
                rows = (
                    await session.exec(select(ProcessRow.id).where(col(ProcessRow.id).in_(ids)))
                ).all()
                audit = (
                    await session.exec(
                        select(AuditEvent.subject_id, AuditEvent.action).where(
                            col(AuditEvent.subject_id).in_(ids)
                        )
                    )
                ).all()
        finally:
            await engine.dispose()
        assert sorted(rows) == sorted(ids)
        for po_id in ids:  # each PO submitted and routed exactly once
            assert sorted(act for sid, act in audit if sid == po_id) == ["routed", "submitted"]
    finally:
        stop_process(api)


async def _some_done(tasks: list[asyncio.Task[httpx.Response | None]], n: int) -> bool:
    return sum(t.done() for t in tasks) >= n
