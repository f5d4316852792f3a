"""The task inbox over the read model: who sees which tasks, newest due first, keyset-paginated."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from domain.principal import Principal, Role
from store.db import as_utc
from store.models import TaskRow

# Rows without a due time sort after every dated one.
_FAR = datetime(9999, 12, 31)


def offered_to(principal: Principal) -> Any:
    """Unassigned tasks offered to one of the caller's roles; a task offered to a role within one
    partner (`assignee_partner_id`, e.g. a distributor's review) only to that partner's users."""
    roles = [str(r) for r in principal.roles]
    own_partner: Any = col(TaskRow.assignee_partner_id).is_(None)
    if principal.partner_id is not None:
        own_partner = sa.or_(own_partner, col(TaskRow.assignee_partner_id) == principal.partner_id)
    return sa.and_(
        col(TaskRow.assignee).is_(None), col(TaskRow.candidate_role).in_(roles), own_partner
    )


def visible_to(principal: Principal) -> Any:
    """Staff see tasks assigned to them, offered to one of their roles, or escalated to one of
    their roles; ops_admin sees all; partner users see their own partner's tasks."""
    if principal.has(Role.ops_admin):
        return sa.true()
    clauses: list[Any] = []
    if principal.is_staff:
        roles = [str(r) for r in principal.roles]
        clauses += [
            col(TaskRow.assignee) == principal.sub,
            offered_to(principal),
            col(TaskRow.escalate_to_role).in_(roles),
        ]
    if principal.partner_id is not None and principal.is_partner_user:
        clauses.append(col(TaskRow.partner_id) == principal.partner_id)
    return sa.or_(*clauses) if clauses else sa.false()


# Who holds a task, as one value: its assignee, or `role:<candidate_role>` while it is offered.
# The same expression as the index ix_tasks_holder (migration 0007), written out so the query
# matches it on PostgreSQL and SQLite (the literal inlined, never a bound parameter).
HOLDER_ROLE_PREFIX = "role:"


def holder() -> Any:
    """`coalesce(assignee, 'role:' || candidate_role)`, the expression ix_tasks_holder indexes."""
    prefix = sa.literal_column(f"'{HOLDER_ROLE_PREFIX}'", sa.String)
    return sa.func.coalesce(col(TaskRow.assignee), prefix + col(TaskRow.candidate_role))


def mine(principal: Principal) -> Any:
    """Assigned to the caller or offered to one of their roles (`GET /v1/tasks?assignee=me`):
    exactly `assignee = me OR offered_to(me)`.

    Written as `holder IN (me, role:r, ...)`, which ix_tasks_holder (migration 0007) serves for
    both kinds of row, plus the three conditions that make it exact, each true of almost every
    row so the planner's row estimate stays that of the index: an assignee whose id merely
    looks like `role:r` is not a role; an unassigned task reaches a caller only through a role
    they hold (not through an id spelled `role:r`); an offer scoped to a partner only reaches
    that partner's users. A PDM's inbox at 100,000 tasks on PostgreSQL then reads his ~100 rows
    instead of walking every open task by due date (docs/performance.md)."""
    roles = [str(r) for r in principal.roles]
    keys = [principal.sub, *(f"{HOLDER_ROLE_PREFIX}{r}" for r in roles)]
    assignee, role = col(TaskRow.assignee), col(TaskRow.candidate_role)
    partner = col(TaskRow.assignee_partner_id)
    own_partner: Any = partner.is_(None)
    if principal.partner_id is not None:
        own_partner = sa.or_(own_partner, partner == principal.partner_id)
    return sa.and_(
        holder().in_(keys),
        sa.or_(
            assignee.is_(None),
            sa.not_(assignee.startswith(HOLDER_ROLE_PREFIX, autoescape=True)),
            assignee == principal.sub,
        ),
        sa.or_(assignee.is_not(None), role.in_(roles)),
        sa.or_(assignee.is_not(None), own_partner),
    )


def encode_cursor(row: TaskRow) -> str:
    due = as_utc(row.due_at)
    raw = json.dumps({"d": due.isoformat() if due else None, "i": row.id})
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime | None, str]:
    raw = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    due = datetime.fromisoformat(raw["d"]) if raw["d"] else None
    return due, str(raw["i"])


async def list_tasks(
    session: AsyncSession,
    principal: Principal,
    *,
    kind: str | None,
    status: str | None,
    assignee: str | None,
    process_id: str | None,
    cursor: str | None,
    limit: int,
) -> tuple[list[TaskRow], str | None]:
    stmt = select(TaskRow).where(visible_to(principal))
    if kind:
        stmt = stmt.where(TaskRow.kind == kind)
    if status:
        stmt = stmt.where(TaskRow.status == status)
    if assignee == "me":
        stmt = stmt.where(mine(principal))
    elif assignee:
        stmt = stmt.where(TaskRow.assignee == assignee)
    if process_id:
        stmt = stmt.where(TaskRow.process_id == process_id)
    # Newest due first: due_at descending, undated last, then id descending. Dated and undated
    # rows are read by two queries rather than one ORDER BY (due_at IS NULL), ...: that
    # expression no index can serve, so the one query sorted every visible open task (all PO
    # reviews for a dispatcher: 69 ms at 100,000 tasks on PostgreSQL), while each of these walks
    # an index and stops at the page (under 1 ms; docs/performance.md).
    due, last_id, undated_only = None, None, False
    if cursor:
        due, last_id = decode_cursor(cursor)
        undated_only = due is None
    rows: list[TaskRow] = []
    if not undated_only:
        dated = stmt.where(col(TaskRow.due_at).is_not(None))
        if due is not None:
            dated = dated.where(
                sa.or_(
                    col(TaskRow.due_at) < due,
                    sa.and_(col(TaskRow.due_at) == due, col(TaskRow.id) < last_id),
                )
            )
        dated = dated.order_by(col(TaskRow.due_at).desc(), col(TaskRow.id).desc())
        rows = list((await session.exec(dated.limit(limit + 1))).all())
    if len(rows) <= limit:
        undated = stmt.where(col(TaskRow.due_at).is_(None))
        if undated_only:
            undated = undated.where(col(TaskRow.id) < last_id)
        undated = undated.order_by(col(TaskRow.id).desc()).limit(limit + 1 - len(rows))
        rows += list((await session.exec(undated)).all())
    next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor
