"""The task inbox over the read model: who sees which tasks, most urgent first, keyset-paginated."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from api import access
from domain.principal import Principal
from store.db import as_utc
from store.lists import BadCursor, cursor_id, cursor_json, cursor_time
from store.models import ProcessRow, TaskRow


def offered_to(principal: Principal) -> Any:
    """Unassigned tasks offered to one of the caller's roles (R-X-8: `api.access`)."""
    return access.offered_filter(principal)


def visible_to(principal: Principal) -> Any:
    """The tasks the caller may see (R-X-8: decided in `api.access.task_filter`)."""
    return access.task_filter(principal)


# Who holds a task, as one value: its assignee, else its claimer, else `role:<candidate_role>`
# while it is offered. The same expression as the index ix_tasks_holder (migration 0007),
# written out so the query matches it on PostgreSQL and SQLite (the literal inlined, never a
# bound parameter).
HOLDER_ROLE_PREFIX = "role:"


def holder() -> Any:
    """`coalesce(assignee, claimed_by, 'role:' || candidate_role)`, indexed by ix_tasks_holder."""
    prefix = sa.literal_column(f"'{HOLDER_ROLE_PREFIX}'", sa.String)
    return sa.func.coalesce(
        col(TaskRow.assignee), col(TaskRow.claimed_by), prefix + col(TaskRow.candidate_role)
    )


def mine(principal: Principal) -> Any:
    """Tasks for the caller to work: assigned to them, claimed by them, or offered to one of
    their roles and not claimed by someone else (a claim only exists on an unassigned task: a
    reassignment clears it).

    Written as `holder IN (me, role:r, ...)`, which ix_tasks_holder (migration 0007) serves for
    every kind of row, plus the conditions that make it exact, each true of almost every row
    so the planner's estimate stays the index's: an assignee or claimer id that merely looks
    like `role:r` is not a role; an unclaimed offer reaches a caller only through a role they
    hold, within their partner (`api.access.offered_filter`). A PDM's inbox at 100,000 tasks on
    PostgreSQL then reads his ~100 rows instead of walking every open task by due date
    (docs/performance.md, issue 11)."""
    roles = sorted(str(r) for r in access.effective_roles(principal))
    keys = [principal.sub, *(f"{HOLDER_ROLE_PREFIX}{r}" for r in roles)]
    assignee, claimer = col(TaskRow.assignee), col(TaskRow.claimed_by)

    def not_a_role(person: Any) -> Any:
        return sa.or_(
            person.is_(None),
            sa.not_(person.startswith(HOLDER_ROLE_PREFIX, autoescape=True)),
            person == principal.sub,
        )

    return sa.and_(
        holder().in_(keys),
        not_a_role(assignee),
        not_a_role(claimer),
        sa.or_(assignee.is_not(None), claimer.is_not(None), offered_to(principal)),
    )


class InboxSort(StrEnum):
    """Inbox orders. `urgency` (the default) is `due_at`: earliest due first, so overdue tasks
    come first (their due time has passed), undated tasks last. `-due_at`: latest due first,
    undated last. `created_at` / `-created_at`: oldest / newest first. Ties by id."""

    urgency = "urgency"
    due_at = "due_at"
    due_at_desc = "-due_at"
    created_at = "created_at"
    created_at_desc = "-created_at"


def encode_cursor(row: TaskRow, sort: InboxSort) -> str:
    """Opaque: url-safe base64 of {"s": sort, "k": the sort key (ISO 8601 UTC or null), "i": id}."""
    key = as_utc(row.created_at if sort.value.lstrip("-") == "created_at" else row.due_at)
    raw = json.dumps({"s": _family(sort), "k": key.isoformat() if key else None, "i": row.id})
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _family(sort: InboxSort) -> str:
    return "due_at" if sort is InboxSort.urgency else sort.value


def decode_cursor(cursor: str, sort: InboxSort) -> tuple[datetime | None, str]:
    raw = cursor_json(cursor)
    if not isinstance(raw, dict) or not {"k", "i", "s"} <= raw.keys():
        raise BadCursor("the cursor is not valid")
    key = cursor_time(raw["k"]) if raw["k"] else None
    last_id = cursor_id(raw["i"])
    if raw["s"] != _family(sort):
        raise BadCursor("the cursor belongs to another sort order")
    return key, last_id


@dataclass(frozen=True)
class InboxFilters:
    """The inbox's filters. Times are UTC. `overdue`: True → due before `now`; False → due at or
    after `now`, or undated. `process`: the read model's process name (opportunity, …)."""

    kind: str | None = None
    status: str | None = None
    assignee: str | None = None
    process_id: str | None = None
    process: str | None = None
    partner_id: str | None = None
    due_before: datetime | None = None
    overdue: bool | None = None
    escalated: bool | None = None
    now: datetime | None = None


def _filtered(principal: Principal, f: InboxFilters) -> Any:
    stmt = select(TaskRow).where(visible_to(principal))
    if f.kind is not None:
        stmt = stmt.where(TaskRow.kind == f.kind)
    if f.status is not None:
        stmt = stmt.where(TaskRow.status == f.status)
    if f.assignee == "me":
        stmt = stmt.where(mine(principal))
    elif f.assignee is not None:
        stmt = stmt.where(TaskRow.assignee == f.assignee)
    if f.process_id is not None:
        stmt = stmt.where(TaskRow.process_id == f.process_id)
    if f.process is not None:
        stmt = stmt.where(TaskRow.process == f.process)
    if f.partner_id is not None:
        stmt = stmt.where(TaskRow.partner_id == f.partner_id)
    if f.due_before is not None:
        stmt = stmt.where(col(TaskRow.due_at) < f.due_before)
    if f.overdue is not None:
        assert f.now is not None, "overdue needs now"
        if f.overdue:
            stmt = stmt.where(col(TaskRow.due_at) < f.now)
        else:
            stmt = stmt.where(sa.or_(col(TaskRow.due_at).is_(None), col(TaskRow.due_at) >= f.now))
    if f.escalated is not None:
        stmt = stmt.where(col(TaskRow.escalated).is_(f.escalated))
    return stmt


async def list_tasks(
    session: AsyncSession,
    principal: Principal,
    *,
    filters: InboxFilters,
    sort: InboxSort = InboxSort.urgency,
    cursor: str | None,
    limit: int,
) -> tuple[list[TaskRow], str | None]:
    """One page of the tasks the caller may see, in `sort` order, and the next page's cursor.

    Keyset pagination on (sort key, id): no row is skipped or repeated across pages, ties
    included. Raises BadCursor.
    """
    stmt = _filtered(principal, filters)
    if sort in (InboxSort.created_at, InboxSort.created_at_desc):
        rows = await _by_created(session, stmt, sort, cursor, limit)
    else:
        rows = await _by_due(session, stmt, sort, cursor, limit)
    next_cursor = encode_cursor(rows[limit - 1], sort) if len(rows) > limit else None
    return rows[:limit], next_cursor


async def _by_due(
    session: AsyncSession, stmt: Any, sort: InboxSort, cursor: str | None, limit: int
) -> list[TaskRow]:
    # Dated rows by due time (ascending for urgency, descending for -due_at), then undated rows,
    # each direction's ties by id. Dated and undated rows are read by two queries rather than
    # one ORDER BY (due_at IS NULL), ...: that expression no index can serve, so the one query
    # sorted every visible open task (69 ms at 100,000 tasks on PostgreSQL), while each of these
    # walks an index and stops at the page (under 1 ms; docs/performance.md).
    ascending = sort is not InboxSort.due_at_desc
    due, last_id, undated_only = None, None, False
    if cursor is not None:
        due, last_id = decode_cursor(cursor, sort)
        undated_only = due is None
    due_col, id_col = col(TaskRow.due_at), col(TaskRow.id)
    rows: list[TaskRow] = []
    if not undated_only:
        dated = stmt.where(due_col.is_not(None))
        if due is not None:
            after = sa.tuple_(due_col, id_col) > (due, last_id)
            before = sa.tuple_(due_col, id_col) < (due, last_id)
            dated = dated.where(after if ascending else before)
        order = (due_col.asc(), id_col.asc()) if ascending else (due_col.desc(), id_col.desc())
        rows = list((await session.exec(dated.order_by(*order).limit(limit + 1))).all())
    if len(rows) <= limit:
        undated = stmt.where(due_col.is_(None))
        if undated_only:
            undated = undated.where(id_col > last_id if ascending else id_col < last_id)
        undated = undated.order_by(id_col.asc() if ascending else id_col.desc())
        rows += list((await session.exec(undated.limit(limit + 1 - len(rows)))).all())
    return rows


async def _by_created(
    session: AsyncSession, stmt: Any, sort: InboxSort, cursor: str | None, limit: int
) -> list[TaskRow]:
    ascending = sort is InboxSort.created_at
    created_col, id_col = col(TaskRow.created_at), col(TaskRow.id)
    if cursor is not None:
        created, last_id = decode_cursor(cursor, sort)
        if created is None:
            raise BadCursor("the cursor is not valid")
        key = sa.tuple_(created_col, id_col)
        stmt = stmt.where(key > (created, last_id) if ascending else key < (created, last_id))
    order = (created_col.asc(), id_col.asc()) if ascending else (created_col.desc(), id_col.desc())
    return list((await session.exec(stmt.order_by(*order).limit(limit + 1))).all())


async def summaries_of(session: AsyncSession, process_ids: set[str]) -> dict[str, str]:
    """The one-line summary of each process (ProcessRow.summary), by process id."""
    if not process_ids:
        return {}
    rows = await session.exec(
        select(ProcessRow.id, ProcessRow.summary).where(col(ProcessRow.id).in_(process_ids))
    )
    return {pid: summary or "" for pid, summary in rows.all()}
