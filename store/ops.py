"""Read-model queries for operations: overdue tasks, open-task counts and SLA breaches.

Shared by the business gauges on `/metrics` and the `partnerflow` CLI, so both count the same.
Every query here is served by an index on `tasks` (status, due_at) except the breach count,
which reads the audit trail's escalation rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from store.db import as_utc
from store.models import AuditEvent, OutboxMessage, ProcessRow, TaskRow

OPEN = "open"
ESCALATED = "task_escalated"  # the audit action the human-task primitive writes on an SLA breach


@dataclass(frozen=True)
class TaskCounts:
    open: int
    overdue: int


@dataclass(frozen=True)
class OverdueTask:
    id: str
    kind: str
    process: str
    process_id: str
    partner_id: str | None
    waiting_on: str
    due_at: datetime
    escalated: bool


async def task_counts_by_kind(session: AsyncSession, now: datetime) -> dict[str, TaskCounts]:
    """Open tasks per kind, and how many of them are past their due time."""
    overdue = sa.func.sum(sa.case((col(TaskRow.due_at) < now, 1), else_=0))
    stmt = (
        select(TaskRow.kind, sa.func.count(), overdue)
        .where(TaskRow.status == OPEN)
        .group_by(TaskRow.kind)
    )
    rows = (await session.exec(stmt)).all()
    return {kind: TaskCounts(open=int(n), overdue=int(late or 0)) for kind, n, late in rows}


async def sla_breaches_by_process(session: AsyncSession) -> dict[str, int]:
    """Every escalation ever recorded, per process kind (a task breached its SLA)."""
    stmt = (
        select(ProcessRow.process, sa.func.count())
        .select_from(AuditEvent)
        .join(ProcessRow, col(ProcessRow.id) == col(AuditEvent.subject_id))
        .where(AuditEvent.action == ESCALATED)
        .group_by(ProcessRow.process)
    )
    return {process: int(n) for process, n in (await session.exec(stmt)).all()}


async def overdue_tasks(
    session: AsyncSession, now: datetime, *, kind: str | None = None, limit: int = 500
) -> list[OverdueTask]:
    """Open tasks past their due time, the longest overdue first."""
    stmt = select(TaskRow).where(TaskRow.status == OPEN, col(TaskRow.due_at) < now)
    if kind:
        stmt = stmt.where(TaskRow.kind == kind)
    stmt = stmt.order_by(col(TaskRow.due_at), col(TaskRow.id)).limit(limit)
    result = []
    for row in (await session.exec(stmt)).all():
        due = as_utc(row.due_at)
        assert due is not None  # filtered on due_at above
        result.append(
            OverdueTask(
                id=row.id,
                kind=row.kind,
                process=row.process,
                process_id=row.process_id,
                partner_id=row.partner_id,
                waiting_on=row.assignee or f"any {row.candidate_role}",
                due_at=due,
                escalated=row.escalated,
            )
        )
    return result


async def notifications_of(session: AsyncSession, process_id: str) -> list[OutboxMessage]:
    """The outbox rows of one process (event keys are `<process id>:<version>:<position>`)."""
    prefix = process_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    stmt = (
        select(OutboxMessage)
        .where(col(OutboxMessage.event_key).like(f"{prefix}:%", escape="\\"))
        .order_by(col(OutboxMessage.id))
    )
    return list((await session.exec(stmt)).all())
