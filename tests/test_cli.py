"""The `partnerflow` ops CLI against the real stack: what it lists, what it changes, and that
its changes go the way the API's do (workflow Updates, audited) or to the outbox sender.

Commands run in-process (`cli.main` in a thread: it runs its own event loop), and once as the
installed console script.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, select

import cli
import workflows
from config import Settings
from store.db import as_utc
from store.models import OutboxMessage
from tests.changed_workflow import ChangedWithoutPatch
from tests.conftest import Stack, eventually
from tests.helpers import Actors, history_actions, submit

HISTORIES = Path(__file__).parent / "histories"


class Cli:
    def __init__(self, settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
        self.settings = settings
        self.capsys = capsys

    async def __call__(self, *argv: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = await asyncio.to_thread(cli.main, list(argv), settings=self.settings)
        out, err = self.capsys.readouterr()
        return code, out, err

    async def json(self, *argv: str) -> Any:
        code, out, err = await self(*argv, "--json")
        assert code == 0, err
        return json.loads(out)


@pytest.fixture
def run(stack: Stack, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(stack.settings, capsys)


async def test_overdue_lists_a_breached_review_and_reassign_moves_it(
    stack: Stack, run: Cli
) -> None:
    a = Actors(stack)
    po = await submit(stack.fast_http, a.acme)  # review SLA PT4S
    task_id = po["open_task_id"]

    async def listed() -> dict[str, Any] | None:
        return next((t for t in await run.json("overdue") if t["id"] == task_id), None)

    task = await eventually(listed, timeout=30, interval=0.5, what="the review in `overdue`")
    assert task["kind"] == "po.review" and task["waiting_on"] == "pdm-li"
    assert task["process_id"] == po["id"] and task["partner_id"] == "p-acme"
    code, out, _ = await run("overdue", "--kind", "po.review")
    assert code == 0 and task_id in out and "pdm-li" in out
    code, out, _ = await run("overdue", "--kind", "po.dispatch")
    assert code == 0 and task_id not in out

    code, out, err = await run("reassign", task_id, "--to", "pdm-wang", "--comment", "pdm-li away")
    assert code == 0, err
    assert f"task {task_id} is now assigned to pdm-wang" in out
    r = await stack.http.get(f"/v1/tasks/{task_id}", headers=a.admin)
    moved = r.json()
    assert moved["assignee"] == "pdm-wang" and moved["status"] == "open"
    assert moved["due_at"] > task["due_at"]  # a new clock for the new reviewer
    r = await stack.http.get(f"/v1/opportunities/{po['id']}/history", headers=a.admin)
    (entry,) = [e for e in r.json()["items"] if e["action"] == "task_reassigned"]
    assert entry["actor"].startswith("ops-cli") and entry["comment"] == "pdm-li away"
    assert entry["details"] == {"from": "pdm-li", "to": "pdm-wang"}


async def test_reassign_refuses_unknown_and_closed_tasks(stack: Stack, run: Cli) -> None:
    a = Actors(stack)
    code, _, err = await run("reassign", "po-nothing.1", "--to", "pdm-wang")
    assert code == 1 and "no task po-nothing.1" in err
    po = await submit(stack.http, a.acme)
    # a review goes only to a PDM of the routing table, as through the API
    code, _, err = await run("reassign", po["open_task_id"], "--to", "pdm-nobody")
    assert code == 1 and "PF.PERSON_UNKNOWN" in err
    r = await stack.http.post(f"/v1/opportunities/{po['id']}/cancel", json={}, headers=a.acme)
    assert r.status_code == 200, r.text
    code, _, err = await run("reassign", po["open_task_id"], "--to", "pdm-wang")
    assert code == 1 and "cancelled" in err
    assert "task_reassigned" not in await history_actions(stack.http, a.acme, po["id"])


async def test_resend_sends_a_notification_again(stack: Stack, run: Cli) -> None:
    a = Actors(stack)
    po = await submit(stack.http, a.acme)

    async def sent_notice() -> OutboxMessage | None:
        async with stack.sessions() as session:
            rows = (
                await session.exec(
                    select(OutboxMessage).where(
                        col(OutboxMessage.event_key).startswith(f"{po['id']}:")
                    )
                )
            ).all()
        return next((r for r in rows if r.status == "sent"), None)

    first = await eventually(sent_notice, timeout=30, what="the assignment notice to be sent")
    code, out, _ = await run("notifications", po["id"])
    assert code == 0 and first.event_key in out and "sent" in out

    code, out, err = await run("resend", first.event_key)
    assert code == 0, err
    assert "was sent; queued to be sent again" in out

    async def sent_again() -> OutboxMessage | None:
        async with stack.sessions() as session:
            row = (
                await session.exec(
                    select(OutboxMessage).where(OutboxMessage.event_key == first.event_key)
                )
            ).one()
        fresh, previous = as_utc(row.sent_at), as_utc(first.sent_at)
        return row if fresh and previous and fresh > previous else None

    await eventually(sent_again, timeout=30, what="the notice to be sent again")
    code, _, err = await run("resend", f"{po['id']}:999:0")
    assert code == 1 and "no notification" in err


async def test_export_history_and_replay_it_on_the_current_code(
    stack: Stack, run: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if stack.db != "sqlite":
        pytest.skip("histories live in Temporal, not our store: one database is enough")
    po = await submit(stack.http, Actors(stack).acme)
    code, out, err = await run("export-history", po["id"], str(tmp_path))
    assert code == 0, err
    exported = tmp_path / f"export__{po['id']}.json"
    assert json.loads(exported.read_text())["events"], out

    code, out, err = await run("replay", str(exported))
    assert code == 0, out + err
    assert f"ok      {exported}" in out and "1 of 1 histories replay" in out

    renamed = tmp_path / "po.json"
    renamed.write_text(exported.read_text())
    code, _, err = await run("replay", str(renamed))
    assert code == 1 and "--workflow-id" in err
    code, out, _ = await run("replay", str(renamed), "--workflow-id", po["id"])
    assert code == 0, out

    # A change made without workflow.patched is what the check is for: it must fail.
    monkeypatch.setattr(workflows, "ALL_WORKFLOWS", [ChangedWithoutPatch])
    code, out, _ = await run("replay", str(exported))
    assert code == 1
    assert "FAILED" in out and "nondetermin" in out.lower()

    code, _, err = await run("export-history", "po-never-started", str(tmp_path))
    assert code == 1 and "no workflow po-never-started" in err


def test_replay_passes_on_the_committed_histories(capsys: pytest.CaptureFixture[str]) -> None:
    files = sorted(str(p) for p in HISTORIES.glob("*__*.json"))
    assert files
    assert cli.main(["replay", *files], settings=Settings()) == 0, capsys.readouterr().out


async def test_the_installed_console_script_reads_the_settings_from_the_environment(
    stack: Stack,
) -> None:
    if stack.db != "sqlite":
        pytest.skip("one database is enough to show the entry point works")
    script = Path(sys.executable).parent / "partnerflow"
    assert script.exists(), "`make install` installs the partnerflow console script"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARTNERFLOW_")}
    env["PARTNERFLOW_DATABASE_URL"] = stack.settings.resolved_database_url
    result = await asyncio.to_thread(
        subprocess.run,
        [str(script), "overdue", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert isinstance(json.loads(result.stdout), list)
    usage = await asyncio.to_thread(
        subprocess.run, [str(script), "frobnicate"], env=env, capture_output=True, timeout=120
    )
    assert usage.returncode == 2
