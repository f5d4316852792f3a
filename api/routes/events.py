"""The event feed: `GET /v1/events?after=<cursor>&limit=` (DESIGN §3 `event`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Annotated, Any

from fastapi import Query
from pydantic import BaseModel, Field
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from api import access
from api.auth import CurrentUser
from api.deps import SessionsDep
from api.errors import ApiError
from api.frame import command_router
from domain.principal import Principal, Role
from store.events import EventScope, decode_event_id, encode_event_id, public_event, read_feed
from store.models import Event, TaskRow

router = command_router(prefix="/v1/events", tags=["events"])


class EventPublic(BaseModel):
    """One committed state change. `id` is opaque and increasing: the feed's cursor and a
    webhook delivery's `webhook-id`. `type` is `<process>.<status>` (`opportunity.approved`),
    `<process>.updated` (the public view changed, the status did not) or `task.opened` /
    `task.completed` / `task.cancelled` / `task.escalated` / `task.reassigned`. `occurred_at`
    is UTC (`Z`); `data` is the process's public view after the change, or the task for task
    events."""

    id: str
    type: str
    process: str
    process_id: str
    partner_id: str | None
    occurred_at: str
    data: dict[str, Any]


class EventPage(BaseModel):
    """A page of the feed. `next_cursor` is the last event's id (or the cursor sent, when the
    page is empty): pass it as `after` to resume. The feed never ends; poll with it."""

    items: list[EventPublic]
    next_cursor: str | None = Field(description="pass as `after` for the next page")


def event_scope(principal: Principal) -> EventScope:
    """Whose events a caller sees: the events of the processes the access policy lets it read
    (R-X-8, `api.access`). A partner-scoped token: its own partner's (and, with `distributor`,
    those addressed to its partner); staff: the process kinds its roles read (`ops_admin`: all);
    a personal account: the invitations and dissociations addressed to it. A task's events go
    with its process.

    Raises PF.FORBIDDEN for a caller who may read none."""
    roles = access.effective_roles(principal)
    scope = EventScope(
        account_id=principal.sub if Role.account in roles else None,
        account_kinds=access.ACCOUNT_PROCESSES,
    )
    if access.is_partner_scoped(principal):
        if access.sees_own_partner(principal):
            scope = replace(scope, partner_id=principal.partner_id)
        if Role.distributor in roles:
            scope = replace(scope, addressed_partner_id=principal.partner_id)
    else:
        kinds = {k for k, readers in access.PROCESS_READERS.items() if roles & readers}
        scope = replace(scope, kinds=frozenset(kinds))
    if scope.empty:
        raise ApiError("PF.FORBIDDEN", "this token's roles read no process, so no events")
    return scope


def parse_cursor(after: str | None) -> tuple[int, int] | None:
    """The (txid, id) of an event id sent as `after`; PF.BAD_REQUEST (400, as every list's bad
    cursor) if it is not one."""
    if after is None:
        return None
    cursor = decode_event_id(after)
    if cursor is None:
        raise ApiError(
            "PF.BAD_REQUEST",
            "`after` must be an event id taken from this feed",
            {"after": after[:100]},
        )
    return cursor


@router.get("", response_model=EventPage)
async def list_events(
    principal: CurrentUser,
    sessions: SessionsDep,
    after: Annotated[str | None, Query(max_length=64, description="an event id")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> Any:
    """Every committed state change the caller may see, in commit order, after `after`.

    Reading from any cursor returns exactly the events after it, never skipping one that
    commits later and never repeating one (see `store.events`)."""
    scope = event_scope(principal)
    cursor = parse_cursor(after)
    items: list[dict[str, Any]] = []
    async with sessions() as session:
        # Hidden task events are skipped: read on until a page shows something or the feed
        # ends, so an empty page still means "nothing more for you yet".
        while True:
            rows = await read_feed(session, scope, after=cursor, limit=limit)
            visible = await visible_events(session, principal, rows)
            items = [public_event(row) for row in visible]
            if rows and rows[-1].id is not None:
                cursor = (rows[-1].txid, rows[-1].id)
            if items or len(rows) < limit:
                break
    # The cursor moves past every row read, shown or not.
    return {
        "items": items,
        "next_cursor": encode_event_id(*cursor) if cursor is not None else after,
    }


async def visible_events(
    session: AsyncSession, principal: Principal, rows: Sequence[Event]
) -> list[Event]:
    """`rows` without the task events of tasks the caller may not see: a `task.*` event is
    shown exactly to who may read the task (`access.may_see_task`, as GET /v1/tasks/{id}), its
    process's readers are not enough (a PDM does not see a dispatcher's task)."""
    task_ids = {str(r.data.get("id")) for r in rows if r.type.startswith("task.")}
    if not task_ids:
        return list(rows)
    found = await session.exec(select(TaskRow).where(col(TaskRow.id).in_(sorted(task_ids))))
    may_see = {t.id for t in found.all() if access.may_see_task(principal, t)}
    return [r for r in rows if not r.type.startswith("task.") or r.data.get("id") in may_see]
