"""Notifications go out once per event from the real workflow (R-X-4); the worker process
drains and exits cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from sqlmodel import col, select

from store.models import OutboxMessage
from tests.conftest import Stack, TemporalServer, eventually
from tests.helpers import ALL_PASS, Actors, complete, submit

ROOT = Path(__file__).resolve().parent.parent


async def outbox_for(stack: Stack, needle: str) -> list[OutboxMessage]:
    async with stack.sessions() as session:
        rows = (
            await session.exec(
                select(OutboxMessage).where(col(OutboxMessage.event_key).startswith(needle))
            )
        ).all()
    return list(rows)


async def test_r_x_4_each_event_notifies_once_and_is_sent(stack: Stack) -> None:
    a = Actors(stack)
    po = await submit(stack.http, a.acme)
    await complete(stack.http, a.pdm_li, po["open_task_id"], "approve", data={"criteria": ALL_PASS})

    async def all_sent() -> list[OutboxMessage] | None:
        rows = await outbox_for(stack, po["id"] + ":")
        return rows if len(rows) == 2 and all(r.status == "sent" for r in rows) else None

    rows = await eventually(all_sent, timeout=20, what="both notifications sent")
    by_recipient = {r.recipient: r for r in rows}
    assert set(by_recipient) == {"pdm-li", "u-acme-1"}  # the assignee, then the submitter
    assert po["open_task_id"] in by_recipient["pdm-li"].subject
    assert "approved" in by_recipient["u-acme-1"].subject


async def test_worker_stops_cleanly_on_sigterm(
    temporal_server: TemporalServer, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "PARTNERFLOW_TEMPORAL_ADDRESS": temporal_server.address,
        "PARTNERFLOW_DATABASE_URL": f"sqlite:///{tmp_path / 'w.db'}",
        "PARTNERFLOW_TASK_QUEUE": "pf-sigterm-test",
        "PARTNERFLOW_WORKER_METRICS_PORT": "0",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "worker.py"),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    seen = b""

    async def polling() -> bool:
        nonlocal seen
        try:
            seen += await asyncio.wait_for(proc.stdout.readline(), timeout=1)  # type: ignore[union-attr]
        except TimeoutError:
            pass
        return b"worker polling" in seen

    await eventually(polling, timeout=30, what="the worker to start polling")
    proc.send_signal(signal.SIGTERM)
    rest, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 0, (seen + rest).decode()
    assert b"shutting down" in seen + rest
