"""Exclusive claims at submission: the one way a route takes a business key for the process it is
about to start, or refuses with the rule's 409 and the holder (`store.claims`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from api.errors import ApiError
from api.processes import ProcessGateway
from store.claims import CLAIM_SCOPES, claim, workflow_is_running
from store.models import ProcessRow

HolderIsLive = Callable[[str], Awaitable[bool]]


def holder_in_scope(processes: ProcessGateway, scope: str) -> HolderIsLive:
    """Whether the process holding a claim of `scope` still holds it: its recorded status is
    not one `CLAIM_SCOPES[scope].released_at` gives it back in; with no row yet, its workflow
    runs (it is being started)."""
    released = CLAIM_SCOPES[scope].released_at
    sessions, temporal = processes.sessions, processes.temporal

    async def live(holder: str) -> bool:
        async with sessions() as session:
            row = await session.get(ProcessRow, holder)
        if row is not None:
            return row.status not in released
        return await workflow_is_running(temporal, holder)

    return live


async def claim_or_refuse(
    processes: ProcessGateway,
    *,
    scope: str,
    key: str,
    owner_id: str,
    error_code: str,
    message: str,
    holder_is_live: HolderIsLive | None = None,
    existing_id: str | None = None,
) -> None:
    """Take `key` of `scope` (one of `store.claims.CLAIM_SCOPES`) for `owner_id`, the process
    about to start. A live holder → `ApiError(error_code, message, {"existing_id": …})` (409 for
    every code used so far: PF.OPPORTUNITY_EXISTS, PF.INVITATION_PENDING,
    PF.DISSOCIATION_PENDING, PF.APPLICATION_EXISTS, PF.CERTIFICATION_EXISTS), naming the holder
    or `existing_id`; nothing is written then. `holder_is_live` defaults to `holder_in_scope`."""
    holder = await claim(
        processes.sessions,
        scope=scope,
        key=key,
        owner_id=owner_id,
        holder_is_live=holder_is_live or holder_in_scope(processes, scope),
    )
    if holder is not None:
        raise ApiError(error_code, message, {"existing_id": existing_id or holder})
