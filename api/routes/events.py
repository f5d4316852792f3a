"""The event feed: `GET /v1/events?after=<cursor>&limit=` (DESIGN §3 `event`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query
from pydantic import BaseModel, Field

from api.auth import CurrentUser
from api.deps import SessionsDep
from api.errors import ApiError
from api.frame import command_router
from domain.principal import Principal
from store import feed_access
from store.events import EventScope, decode_event_id, encode_event_id, public_event

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
    """`store.feed_access.event_scope`: whose events the caller sees (R-X-8), the same rule its
    webhook subscriptions deliver by. Raises PF.FORBIDDEN for a caller who may read none."""
    scope = feed_access.event_scope(principal)
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
    event_scope(principal)  # PF.FORBIDDEN for a caller who may read none
    cursor = parse_cursor(after)
    items: list[dict[str, Any]] = []
    async with sessions() as session:
        # Hidden task events are skipped: read on until a page shows something or the feed
        # ends, so an empty page still means "nothing more for you yet".
        while True:
            page = await feed_access.read_visible(session, principal, after=cursor, limit=limit)
            items = [public_event(row) for row in page.visible]
            if page.cursor is not None:
                cursor = page.cursor
            if items or page.read < limit:
                break
    # The cursor moves past every row read, shown or not.
    return {
        "items": items,
        "next_cursor": encode_event_id(*cursor) if cursor is not None else after,
    }
