"""`partnerflow`: the ops command line, on the same PARTNERFLOW_* settings as the API and worker.

It reads the read model and writes the way the API does (workflow Updates), so what it does is
audited and notified like any other action:

    partnerflow overdue [--kind KIND] [--json]         open tasks past their due time
    partnerflow reassign TASK --to PERSON              move a task (as ops_admin)
    partnerflow notifications PROCESS_ID               a process's outbox rows and event keys
    partnerflow resend EVENT_KEY                       send a notification again
    partnerflow export-history WORKFLOW_ID FILE        a workflow's history as JSON
    partnerflow replay FILE... [--workflow-id ID]      replay histories on the current code

Exit status: 0 done, 1 refused or failed (the reason on stderr), 2 bad usage or settings.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Replayer

import workflows
from api.errors import ApiError
from api.processes import send_update
from api.routes.tasks import task_kind_of
from config import Settings, get_settings
from domain.principal import Principal, Role
from domain.tasks import ReassignTask
from store.db import as_utc, create_engine, session_factory, transaction
from store.directory import unlisted_holder
from store.models import OutboxMessage, TaskRow
from store.ops import notifications_of, overdue_tasks
from worker import connect, workflow_runner
from workflows.human_task import ProcessWorkflow

Command = Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]]


class Refused(Exception):
    """The command could not do what was asked; the message says why."""


@asynccontextmanager
async def read_model(settings: Settings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(settings.resolved_database_url, pool_size=1)
    try:
        yield session_factory(engine)
    finally:
        await engine.dispose()


async def temporal(settings: Settings) -> Client:
    try:
        return await connect(settings)
    except RuntimeError as exc:  # the SDK's "Failed client connect"
        address = settings.resolved_temporal_address
        raise Refused(f"cannot reach Temporal at {address}: {exc}") from exc


def how_late(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {seconds}s" if minutes else f"{seconds}s"


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    for line in (header, *rows):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)))


# --- commands -------------------------------------------------------------------------------------


async def overdue(args: argparse.Namespace, settings: Settings) -> int:
    now = datetime.now(UTC)
    async with read_model(settings) as sessions, sessions() as session:
        tasks = await overdue_tasks(session, now, kind=args.kind, limit=args.limit)
    if args.json:
        print(json.dumps([asdict(task) for task in tasks], default=str, indent=2))
        return 0
    if not tasks:
        print("no overdue tasks")
        return 0
    print_table(
        ("TASK", "KIND", "PARTNER", "WAITING ON", "DUE (UTC)", "LATE", "ESCALATED"),
        [
            (
                t.id,
                t.kind,
                t.partner_id or "-",
                t.waiting_on,
                f"{t.due_at:%Y-%m-%d %H:%M}",
                how_late(now - t.due_at),
                "yes" if t.escalated else "no",
            )
            for t in tasks
        ],
    )
    return 0


async def reassign(args: argparse.Namespace, settings: Settings) -> int:
    async with read_model(settings) as sessions, sessions() as session:
        row = await session.get(TaskRow, args.task)
    if row is None:
        raise Refused(f"no task {args.task}")
    if row.status != "open":
        raise Refused(f"task {args.task} is {row.status}; only open tasks move")
    kind = task_kind_of(row)
    if kind is not None:
        async with read_model(settings) as sessions, sessions() as session:
            known = await unlisted_holder(session, kind, args.to, settings.policy)
        if known is not None:
            raise Refused(
                f"PF.PERSON_UNKNOWN: {args.to} is not a known {kind.holder_directory} "
                f"(known: {', '.join(sorted(known)[:20])})"
            )
    client = await temporal(settings)
    try:
        view = await send_update(
            client,
            settings,
            workflow_id=row.process_id,
            update=ProcessWorkflow.reassign_task,
            arg=ReassignTask(
                task_id=row.id,
                actor=Principal(sub=args.by, roles=[Role.ops_admin]),
                assignee=args.to,
                comment=args.comment,
            ),
            update_id=f"reassign_task:{row.id}:{args.by}:{uuid.uuid4().hex}",
            what=f"reassigning task {row.id}",
        )
    except ApiError as exc:
        raise Refused(f"{exc.code}: {exc.message}") from exc
    print(f"task {row.id} is now assigned to {args.to} ({row.process_id}: {view.get('status')})")
    return 0


async def notifications(args: argparse.Namespace, settings: Settings) -> int:
    async with read_model(settings) as sessions, sessions() as session:
        rows = await notifications_of(session, args.process_id)
    if not rows:
        print(f"no notifications for {args.process_id}")
        return 0
    print_table(
        ("EVENT KEY", "STATUS", "RECIPIENT", "SENT (UTC)", "SUBJECT"),
        [
            (
                r.event_key,
                r.status,
                r.recipient,
                f"{as_utc(r.sent_at):%Y-%m-%d %H:%M:%S}" if r.sent_at else "-",
                r.subject,
            )
            for r in rows
        ],
    )
    return 0


async def resend(args: argparse.Namespace, settings: Settings) -> int:
    async with read_model(settings) as sessions, transaction(sessions) as session:
        row = (
            await session.exec(select(OutboxMessage).where(OutboxMessage.event_key == args.key))
        ).first()
        if row is None:
            raise Refused(f"no notification with event key {args.key}")
        was = row.status
        # The outbox sender picks it up on its next pass, as if it had just been written.
        row.status = "pending"
        row.attempts = 0
        row.last_error = None
        row.sent_at = None
        row.next_attempt_at = datetime.now(UTC)
        session.add(row)
    print(f"{args.key} ({row.subject!r} to {row.recipient}) was {was}; queued to be sent again")
    return 0


async def export_history(args: argparse.Namespace, settings: Settings) -> int:
    client = await temporal(settings)
    try:
        history = await client.get_workflow_handle(args.workflow_id).fetch_history()
    except RPCError as exc:
        if exc.status is RPCStatusCode.NOT_FOUND:
            raise Refused(f"no workflow {args.workflow_id}") from exc
        raise
    path = write_history(Path(args.file), history)
    print(f"wrote {len(history.events)} events of {args.workflow_id} to {path}")
    return 0


def write_history(path: Path, history: WorkflowHistory) -> Path:
    if path.is_dir():
        path = path / f"export__{history.workflow_id}.json"
    path.write_text(history.to_json())
    return path


def load_history(path: Path, given_workflow_id: str | None) -> WorkflowHistory:
    workflow_id = history_workflow_id(path, given_workflow_id)
    try:
        return WorkflowHistory.from_json(workflow_id, path.read_text())
    except (OSError, ValueError) as exc:
        raise Refused(f"{path}: not a readable history ({exc})") from exc


def history_workflow_id(path: Path, given: str | None) -> str:
    if given:
        return given
    _label, separator, workflow_id = path.stem.partition("__")
    if not separator or not workflow_id:
        raise Refused(
            f"{path}: cannot tell the workflow id; name the file <label>__<workflow id>.json "
            "or pass --workflow-id"
        )
    return workflow_id


async def replay(args: argparse.Namespace, settings: Settings) -> int:
    if args.workflow_id and len(args.files) > 1:
        raise Refused("--workflow-id names one workflow: give one file with it")
    # The worker's own workflows and sandbox: what replays here is what production runs.
    replayer = Replayer(
        workflows=workflows.ALL_WORKFLOWS,
        data_converter=pydantic_data_converter,
        workflow_runner=workflow_runner(),
    )
    failed = 0
    for name in args.files:
        path = Path(name)
        history = load_history(path, args.workflow_id)
        result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
        if result.replay_failure is None:
            print(f"ok      {path}")
        else:
            failed += 1
            print(f"FAILED  {path}: {result.replay_failure}")
    print(f"{len(args.files) - failed} of {len(args.files)} histories replay on the current code")
    return 1 if failed else 0


# --- parsing ------------------------------------------------------------------------------------


def default_actor() -> str:
    try:
        return f"ops-cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no login name (a container with an unnamed uid)
        return "ops-cli"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="partnerflow",
        description="Operate partnerflow: overdue tasks, reassignment, notifications, histories.",
    )
    commands = parser.add_subparsers(dest="command_name", required=True, metavar="COMMAND")

    p = commands.add_parser("overdue", help="list open tasks past their due time")
    p.add_argument("--kind", help="only this task kind, e.g. po.review")
    p.add_argument("--limit", type=int, default=500, help="at most this many (default 500)")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.set_defaults(command=overdue)

    p = commands.add_parser("reassign", help="move an open task to another person")
    p.add_argument("task", metavar="TASK", help="task id, e.g. po-3f2a9c.1")
    p.add_argument("--to", required=True, metavar="PERSON", help="the new assignee")
    p.add_argument("--comment", help="why, for the audit trail")
    p.add_argument(
        "--by", default=default_actor(), help="who acts, recorded in the audit trail (ops_admin)"
    )
    p.set_defaults(command=reassign)

    p = commands.add_parser("notifications", help="list a process's notifications")
    p.add_argument("process_id", metavar="PROCESS_ID", help="e.g. po-3f2a9c")
    p.set_defaults(command=notifications)

    p = commands.add_parser("resend", help="send a notification again")
    p.add_argument("key", metavar="EVENT_KEY", help="from `partnerflow notifications`")
    p.set_defaults(command=resend)

    p = commands.add_parser("export-history", help="write a workflow's history to a JSON file")
    p.add_argument("workflow_id", metavar="WORKFLOW_ID")
    p.add_argument("file", metavar="FILE", help="a file, or a directory for export__<id>.json")
    p.set_defaults(command=export_history)

    p = commands.add_parser(
        "replay", help="replay exported histories on the current code (determinism check)"
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="<label>__<workflow id>.json files")
    p.add_argument("--workflow-id", help="the workflow id, when one file is named otherwise")
    p.set_defaults(command=replay)
    return parser


def main(argv: Sequence[str] | None = None, *, settings: Settings | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings or get_settings()
    except ValidationError as exc:
        print(f"partnerflow: invalid PARTNERFLOW_ settings:\n{exc}", file=sys.stderr)
        return 2
    command: Command = args.command
    try:
        return asyncio.run(command(args, settings))
    except Refused as exc:
        print(f"partnerflow: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
