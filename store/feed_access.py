"""Who sees which event of the feed (R-X-8): the one rule for `GET /v1/events` and for webhook
deliveries, built on the access policy (`api.access`).

A caller sees the events of the processes it may read (`event_scope`: its own partner's, the
processes addressed to its partner or its account, the kinds its staff roles read), and of
those, a `task.*` event only if it may see the task (`visible_events`). A webhook subscription
sees exactly what its subscriber (`subscriber`: the token that created it) sees in the feed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from api import access
from domain.principal import Principal, Role
from store.events import EventScope, read_feed
from store.models import Event, TaskRow, WebhookSubscription


def event_scope(principal: Principal) -> EventScope:
    """Whose events `principal` sees: the events of the processes the access policy lets it
    read (R-X-8, `api.access`). A partner-scoped token: its own partner's and those
    addressed to its partner (`access.sees_addressed`); staff: the process kinds its roles read
    (`ops_admin`: all); a personal account: the invitations and dissociations addressed to it. A
    task's events go with its process (then `visible_events`). Empty (`.empty`) for a caller who
    may read none."""
    roles = access.effective_roles(principal)
    scope = EventScope(
        account_id=principal.sub if Role.account in roles else None,
        account_kinds=access.ACCOUNT_PROCESSES,
    )
    if access.is_partner_scoped(principal):
        if access.sees_own_partner(principal):
            scope = replace(scope, partner_id=principal.partner_id)
        if access.sees_addressed(principal):
            scope = replace(scope, addressed_partner_id=principal.partner_id)
    else:
        kinds = {k for k, readers in access.PROCESS_READERS.items() if roles & readers}
        scope = replace(scope, kinds=frozenset(kinds))
    return scope


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


@dataclass(frozen=True)
class FeedPage:
    """One read of the feed for a caller: `visible`, the rows it may see of the `read` rows in
    its scope; `cursor`, (txid, id) past every row read, shown or not (None if none was)."""

    visible: list[Event]
    read: int
    cursor: tuple[int, int] | None


async def read_visible(
    session: AsyncSession,
    principal: Principal,
    *,
    after: tuple[int, int] | None,
    limit: int,
) -> FeedPage:
    """Up to `limit` feed rows in the caller's scope after the cursor (txid, id), and of them
    the ones it may see. A page of only hidden rows has nothing visible and its cursor moved:
    read again from it."""
    rows = await read_feed(session, event_scope(principal), after=after, limit=limit)
    visible = await visible_events(session, principal, rows)
    last = rows[-1] if rows else None
    cursor = (last.txid, last.id) if last is not None and last.id is not None else None
    return FeedPage(visible=visible, read=len(rows), cursor=cursor)


# The role creating a subscription required, for rows made before their creator's roles were
# kept (migration 0008).
_LEGACY_PARTNER_ROLES = [Role.partner_admin]
_LEGACY_STAFF_ROLES = [Role.ops_admin]


def subscriber(sub: WebhookSubscription) -> Principal:
    """The principal a webhook subscription delivers for: its creator (`created_by`), with the
    roles and partner its token had (R-X-8). Its deliveries are that principal's feed."""
    if sub.subscriber_roles is not None:
        known = {r.value for r in Role}
        roles = [Role(r) for r in sub.subscriber_roles if r in known]
    elif sub.partner_id is not None:
        roles = list(_LEGACY_PARTNER_ROLES)
    else:
        roles = list(_LEGACY_STAFF_ROLES)
    return Principal(sub=sub.created_by, roles=roles, partner_id=sub.partner_id)
