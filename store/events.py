"""The event feed (DESIGN §3 `event`): written with each transition, read in commit order.

Writing: `append_events` runs inside `store.readmodel.apply_transition`'s transaction, before the
process row is upserted, and compares the transition with the row it replaces:

* the process status changed (or the process is new) → `<process>.<status>`
  (`opportunity.approved`); the public view changed otherwise → `<process>.updated`;
* a task appeared open → `task.opened`; a task left `open` → `task.completed` / `task.cancelled`;
  an open task escalated → `task.escalated`, moved to another person → `task.reassigned`.

Events are keyed by (process_id, version, position) and inserted with ON CONFLICT DO NOTHING; a
transition the store already holds (a retried or duplicated activity) writes none at all. So an
event exists iff its change was committed, once.

Reading in commit order. An increasing `id` alone is not a safe cursor on PostgreSQL: ids are
drawn when a row is inserted, not when its transaction commits, so a reader that has passed id 7
can later see id 5 commit and never read it. Each row therefore records the writing
transaction's id (`txid`, `pg_current_xact_id()`), and the feed serves only rows whose
transaction is older than the oldest transaction still running
(`txid < pg_snapshot_xmin(pg_current_snapshot())`), in (`txid`, `id`) order. Every transaction
below that horizon has finished, and every row that becomes servable later has a `txid` at or
above it, so later rows always sort after everything already served: nothing is skipped, nothing
repeats, and one process's events keep their order (its transitions commit one after another).
The cost: an event waits for every older transaction that has written and is still open
anywhere on the PostgreSQL server (other databases included: transaction ids are server-wide), so
a long write transaction, or a session left idle in one, delays the feed and webhooks until it
ends. Ours are short. The alternative, serialising event inserts behind a lock held to commit,
would make the ids follow commit order with no such delay, but would also serialise every
transition's commit; we chose to keep writers parallel. On SQLite writers are serialised by the
database's write lock, ids are assigned in commit order, `txid` is 0 and `id` alone orders.

The public event id is `evt_` + 16 hex digits of `txid` + 16 of `id`: opaque, increasing in feed
order, the feed's cursor and a webhook delivery's `webhook-id`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from domain.events import public_task_data, without_secret_keys
from domain.projection import Transition
from domain.tasks import TaskStatus
from store.db import as_utc
from store.models import Event, ProcessRow, TaskRow

_EVENT_ID = re.compile(r"evt_([0-9a-f]{16})([0-9a-f]{16})")
MAX_CURSOR_INT = 2**63 - 1  # the largest BIGINT
# view keys that change with every transition and are no change of their own
_VOLATILE_VIEW_KEYS = frozenset({"updated_at"})


def encode_event_id(txid: int, row_id: int) -> str:
    """The public, opaque event id; lexicographic order is feed order."""
    return f"evt_{txid:016x}{row_id:016x}"


def decode_event_id(event_id: str) -> tuple[int, int] | None:
    """(txid, id) of a public event id, or None if it is not one."""
    match = _EVENT_ID.fullmatch(event_id)
    if match is None:
        return None
    txid, row_id = int(match.group(1), 16), int(match.group(2), 16)
    if txid > MAX_CURSOR_INT or row_id > MAX_CURSOR_INT:
        return None  # no row has it, and SQLite/PostgreSQL integers are signed 64-bit
    return txid, row_id


def utc_z(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC with `Z` (R-X-7)."""
    moment = as_utc(moment)
    if moment is None:
        return None
    return moment.isoformat().replace("+00:00", "Z")


def public_event(row: Event) -> dict[str, Any]:
    """The DESIGN §3 event: id, type, process, process_id, partner_id, occurred_at, data."""
    assert row.id is not None
    return {
        "id": encode_event_id(row.txid, row.id),
        "type": row.type,
        "process": row.process,
        "process_id": row.process_id,
        "partner_id": row.partner_id,
        "occurred_at": utc_z(row.occurred_at),
        "data": public_data(row.type, row.data),
    }


def public_data(type_: str, data: dict[str, Any]) -> dict[str, Any]:
    """An event's `data` as it may leave (also for rows written before this rule): a task's
    public shape for `task.*`, a process view without credential-named keys otherwise."""
    if type_.startswith("task."):
        return public_task_data(data)
    return without_secret_keys(data)


# --- writing -----------------------------------------------------------------------------------


def _txid_expression(session: AsyncSession) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        return sa.cast(sa.cast(sa.func.pg_current_xact_id(), sa.Text), sa.BigInteger)
    return sa.literal(0, sa.BigInteger)


def _insert(session: AsyncSession) -> Any:
    """The dialect's INSERT on the Core table (no ORM value coercion: the rows are built here)."""
    table = Event.__table__  # type: ignore[attr-defined]
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def _comparable(view: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (view or {}).items() if k not in _VOLATILE_VIEW_KEYS}


def _audience_account(view: dict[str, Any]) -> str | None:
    account = view.get("account_id") or view.get("customer_account_id")
    return str(account) if account else None


@dataclass(frozen=True)
class TaskBefore:
    """What a task's stored row said before the transition."""

    status: str
    assignee: str | None
    escalated: bool


def events_for(
    t: Transition,
    *,
    previous: ProcessRow | None,
    previous_tasks: dict[str, TaskBefore],
) -> list[dict[str, Any]]:
    """The event rows (without `id`/`txid`) one transition produces, given what it replaces."""
    rec = t.record
    types: list[tuple[str, str, dict[str, Any], str | None]] = []
    status = str(rec.status)
    distributor = rec.view.get("distributor_id")
    if previous is None or previous.status != status:
        types.append((f"{rec.process}.{status}", rec.process, rec.view, distributor))
    elif _comparable(previous.view) != _comparable(rec.view):
        types.append((f"{rec.process}.updated", rec.process, rec.view, distributor))
    for task in t.tasks:
        before = previous_tasks.get(task.id)
        now = str(task.status)
        data = task.model_dump(mode="json")
        audience = task.assignee_partner_id
        if before is None:
            types.append(("task.opened", rec.process, data, audience))
            if task.status is not TaskStatus.open:
                types.append((f"task.{now}", rec.process, data, audience))
        elif before.status != now:
            if before.status == TaskStatus.open.value:
                types.append((f"task.{now}", rec.process, data, audience))
        elif task.status is TaskStatus.open:
            if task.escalated and not before.escalated:
                types.append(("task.escalated", rec.process, data, audience))
            if task.assignee != before.assignee:
                types.append(("task.reassigned", rec.process, data, audience))
    account = _audience_account(rec.view)
    return [
        {
            "type": type_,
            "process": process,
            "process_id": rec.id,
            "partner_id": rec.partner_id,
            "audience_partner_id": str(audience) if audience else None,
            "audience_account_id": account,
            "version": rec.version,
            "position": position,
            "occurred_at": rec.updated_at,
            "data": data,
        }
        for position, (type_, process, data, audience) in enumerate(
            (type_, process, public_data(type_, data), audience)
            for type_, process, data, audience in types
        )
    ]


async def append_events(session: AsyncSession, t: Transition) -> int:
    """Write the transition's events in the caller's transaction; return how many were new.

    Call before the transition's own rows are written: it reads the state they replace.
    """
    rec = t.record
    if session.get_bind().dialect.name == "sqlite":
        # Take the write lock before reading: a WAL reader that writes after another connection
        # committed fails at once (SQLITE_BUSY_SNAPSHOT) instead of waiting its turn.
        await session.exec(
            sa.update(ProcessRow)
            .where(col(ProcessRow.id) == rec.id)
            .values(version=ProcessRow.version)
            .execution_options(synchronize_session=False)
        )
    previous = await session.get(ProcessRow, rec.id)
    if previous is not None and previous.version >= rec.version:
        return 0  # already applied (a retry) or superseded: its events exist already
    task_ids = [task.id for task in t.tasks]
    previous_tasks: dict[str, TaskBefore] = {}
    if task_ids:
        rows = await session.exec(
            select(TaskRow.id, TaskRow.status, TaskRow.assignee, TaskRow.escalated).where(
                col(TaskRow.id).in_(task_ids)
            )
        )
        previous_tasks = {r[0]: TaskBefore(r[1], r[2], bool(r[3])) for r in rows.all()}
    written = 0
    txid = _txid_expression(session)
    for values in events_for(t, previous=previous, previous_tasks=previous_tasks):
        stmt = _insert(session).values(txid=txid, **values)
        stmt = stmt.on_conflict_do_nothing(index_elements=["process_id", "version", "position"])
        result = await session.exec(stmt)
        written += result.rowcount or 0
    return written


# --- reading -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventScope:
    """Whose events a reader sees; the union of what each field admits. The feed and webhooks
    build it from the access policy (`store.feed_access.event_scope`, R-X-8):

    - `everything`: all events (tests and tools; no caller's scope);
    - `kinds`: events of these process kinds (staff roles that read them);
    - `partner_id`: one partner's own processes' events;
    - `addressed_partner_id`: events addressed to a partner (a reseller's application to a
      distributor, and the review task offered to it);
    - `account_id` (with `account_kinds`): events of processes addressed to a personal account.
    """

    everything: bool = False
    kinds: frozenset[str] = frozenset()
    partner_id: str | None = None
    addressed_partner_id: str | None = None
    account_id: str | None = None
    account_kinds: frozenset[str] = frozenset()

    @property
    def empty(self) -> bool:
        return not (
            self.everything
            or self.kinds
            or self.partner_id
            or self.addressed_partner_id
            or self.account_id
        )

    def clause(self) -> Any:
        if self.everything:
            return sa.true()
        clauses: list[Any] = []
        if self.kinds:
            clauses.append(col(Event.process).in_(sorted(self.kinds)))
        if self.partner_id is not None:
            clauses.append(col(Event.partner_id) == self.partner_id)
        if self.addressed_partner_id is not None:
            clauses.append(col(Event.audience_partner_id) == self.addressed_partner_id)
        if self.account_id is not None:
            own = col(Event.audience_account_id) == self.account_id
            if self.account_kinds:
                own = sa.and_(own, col(Event.process).in_(sorted(self.account_kinds)))
            clauses.append(own)
        return sa.or_(*clauses) if clauses else sa.false()


def _horizon(session: AsyncSession) -> Any:
    """Rows at or past this txid may still have older-id siblings in flight: not served yet."""
    if session.get_bind().dialect.name == "postgresql":
        return sa.cast(
            sa.cast(sa.func.pg_snapshot_xmin(sa.func.pg_current_snapshot()), sa.Text),
            sa.BigInteger,
        )
    return sa.literal(1, sa.BigInteger)  # SQLite: every committed row (txid 0) is servable


async def read_feed(
    session: AsyncSession,
    scope: EventScope,
    *,
    after: tuple[int, int] | None,
    limit: int,
) -> Sequence[Event]:
    """Up to `limit` servable events in `scope` after the cursor (txid, id), in feed order."""
    stmt = select(Event).where(scope.clause()).where(col(Event.txid) < _horizon(session))
    if after is not None:
        txid, row_id = after
        stmt = stmt.where(
            sa.or_(col(Event.txid) > txid, sa.and_(col(Event.txid) == txid, col(Event.id) > row_id))
        )
    stmt = stmt.order_by(col(Event.txid), col(Event.id)).limit(limit)
    return (await session.exec(stmt)).all()


async def feed_head(session: AsyncSession) -> tuple[int, int]:
    """The (txid, id) of the newest servable event, (0, 0) if none: reading `after` it returns
    only what becomes servable later (where a new webhook subscription starts)."""
    row = (
        await session.exec(
            select(Event.txid, Event.id)
            .where(col(Event.txid) < _horizon(session))
            .order_by(col(Event.txid).desc(), col(Event.id).desc())
            .limit(1)
        )
    ).first()
    if row is None:
        return (0, 0)
    return (int(row[0]), int(row[1] or 0))
