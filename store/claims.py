"""Business keys held by one process at a time, taken atomically (a primary-key insert).

Used where a rule makes submissions exclusive, e.g. one open PO per partner, customer and
project. Every kind of claim (`scope`) is described once in `CLAIM_SCOPES`: the process that
holds it, the fields its key is made of, what happens when they change, and the statuses in
which the holder gives it back. A claim is released in the same transaction as the transition
that closes its holder (`release_closed`, called by `store.readmodel.apply_transition`); a
stale claim (its process closed before that rule, or never started) is taken over.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, delete, update
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from domain.incentives import IncentiveStatus
from domain.invitations import DissociationStatus, InvitationStatus
from domain.opportunity import FINAL_STATUSES as PO_FINAL_STATUSES
from domain.opportunity import OpportunityStatus
from domain.resellers import ApplicationStatus
from store.db import as_utc
from store.models import Claim, utcnow


class KeyChange(StrEnum):
    """What a claim does when the fields its key is made of change while it is held."""

    fixed = "fixed"  # the fields never change after the start
    moves = "moves"  # the claim moves to the new key (taken first, or the change is refused)
    released = "released"  # the holder gives the old key back and takes the new one later


@dataclass(frozen=True)
class ClaimScope:
    """One kind of exclusive claim. `process`: the kind of process that holds it (its owner id
    is the process id, or contains it: `inc-person` holds `<partner>|<inc id>`); `rule`: the
    DESIGN rule it keeps; `key_fields`: the process fields its key is made of; `on_key_change`;
    `released_at`: the statuses in which the holder gives it back for good (none: held for
    good, as the rule wants)."""

    name: str
    process: str
    rule: str
    key_fields: tuple[str, ...]
    on_key_change: KeyChange
    released_at: frozenset[str]


def _values(*statuses: StrEnum) -> frozenset[str]:
    return frozenset(s.value for s in statuses)


PO_OPEN = ClaimScope(
    "po-open",
    "opportunity",
    "R-PO-4 one open PO per partner, customer and project",
    ("partner_id", "customer_name", "project_name"),
    KeyChange.moves,  # R-PO-7 resubmission, R-PO-9 re-verification
    _values(*PO_FINAL_STATUSES),
)
PO_APPROVED = ClaimScope(
    "po-approved",
    "opportunity",
    "R-PO-4 at most one approved PO among duplicates",
    ("customer_name", "project_name"),
    KeyChange.released,  # R-PO-9: re-verification; the next approval claims the new key
    _values(OpportunityStatus.rejected, OpportunityStatus.cancelled, OpportunityStatus.lost),
)
CLAIM_SCOPES: dict[str, ClaimScope] = {
    scope.name: scope
    for scope in (
        PO_OPEN,
        PO_APPROVED,
        ClaimScope(
            "cert",
            "certification",
            "R-CERT-1 one certification per partner and subject, for good (then /recertify)",
            ("partner_id", "subject"),
            KeyChange.fixed,
            frozenset(),
        ),
        ClaimScope(
            "inv-pending",
            "invitation",
            "R-INV-1/3/4 one pending invitation per partner and account",
            ("partner_id", "account_id"),
            KeyChange.fixed,
            _values(InvitationStatus.accepted, InvitationStatus.expired, InvitationStatus.revoked),
        ),
        ClaimScope(
            "dis-pending",
            "dissociation",
            "R-INV-6 one dissociation request waiting for its answer per partner and account",
            ("partner_id", "account_id"),
            KeyChange.fixed,
            _values(
                DissociationStatus.accepted,
                DissociationStatus.declined,
                DissociationStatus.lapsed,
            ),
        ),
        ClaimScope(
            "res-coop",
            "reseller_application",
            "R-RES-1 one application in review or approved per reseller and distributor",
            ("partner_id", "distributor_id"),
            KeyChange.fixed,
            _values(ApplicationStatus.rejected),
        ),
        ClaimScope(
            "inc-source",
            "incentive",
            "R-INC-3 one live application per source (one project, one person)",
            ("source", "opportunity_id", "certification_id", "project"),
            KeyChange.fixed,
            _values(IncentiveStatus.rejected),
        ),
        ClaimScope(
            "inc-person",
            "incentive",
            "R-INC-3 one person, one path: held for good",
            ("person",),
            KeyChange.fixed,
            frozenset(),
        ),
        ClaimScope(
            "inc-month",
            "incentive",
            "R-INC-4 the month's application slots: a rejected one still counts",
            ("partner_id", "submitted_at"),
            KeyChange.fixed,
            frozenset(),
        ),
    )
}


async def release_closed(
    session: AsyncSession, *, process: str, process_id: str, status: str
) -> int:
    """In the caller's transaction: give back every claim `process_id` holds in a scope of
    `process` that its new `status` releases (`ClaimScope.released_at`; those statuses never
    go back, so a retried or late transition releases nothing it should keep). Returns how many
    claims were released."""
    scopes = sorted(
        s.name for s in CLAIM_SCOPES.values() if s.process == process and status in s.released_at
    )
    if not scopes:
        return 0
    result = await session.exec(
        delete(Claim).where(col(Claim.scope).in_(scopes), col(Claim.owner_id) == process_id)
    )
    return int(result.rowcount or 0)


async def claim(
    sessions: async_sessionmaker[AsyncSession],
    *,
    scope: str,
    key: str,
    owner_id: str,
    holder_is_live: Callable[[str], Awaitable[bool]],
) -> str | None:
    """Take `key` for `owner_id`. Returns None on success, else the id of the live holder.
    `scope` must be one of `CLAIM_SCOPES` (every claim is described there)."""
    assert scope in CLAIM_SCOPES, f"unregistered claim scope {scope}: describe it in CLAIM_SCOPES"
    for _ in range(3):
        try:
            async with sessions() as session, session.begin():
                session.add(Claim(scope=scope, key=key, owner_id=owner_id))
            return None
        except IntegrityError:
            pass
        async with sessions() as session:
            held = await session.get(Claim, (scope, key))
        if held is None:
            continue  # released meanwhile: try again
        if held.owner_id == owner_id or not await holder_is_live(held.owner_id):
            async with sessions() as session, session.begin():
                result = await session.exec(
                    update(Claim)
                    .where(
                        col(Claim.scope) == scope,
                        col(Claim.key) == key,
                        col(Claim.owner_id) == held.owner_id,
                    )
                    .values(owner_id=owner_id, created_at=utcnow())
                )
            if result.rowcount == 1:
                return None
            continue  # somebody else took it over first: look again
        return held.owner_id
    return owner_id  # pragma: no cover - three lost races in a row


async def move(
    sessions: async_sessionmaker[AsyncSession],
    *,
    scope: str,
    old_key: str,
    new_key: str,
    owner_id: str,
    holder_is_live: Callable[[str], Awaitable[bool]],
) -> str | None:
    """Move `owner_id`'s claim from `old_key` to `new_key`: take the new key first (a primary-key
    insert: of two movers or submitters for one key, one wins), then give the old one back.
    Returns None when moved (a retry finds it moved and does it again harmlessly), else the id of
    the live holder of `new_key`, and nothing is written."""
    if old_key == new_key:
        return None
    holder = await claim(
        sessions, scope=scope, key=new_key, owner_id=owner_id, holder_is_live=holder_is_live
    )
    if holder is not None:
        return holder
    await release(sessions, scope=scope, key=old_key, owner_id=owner_id)
    return None


async def release(
    sessions: async_sessionmaker[AsyncSession], *, scope: str, key: str, owner_id: str
) -> None:
    """Give `key` back if `owner_id` holds it (idempotent)."""
    async with sessions() as session, session.begin():
        await session.exec(
            delete(Claim).where(
                col(Claim.scope) == scope, col(Claim.key) == key, col(Claim.owner_id) == owner_id
            )
        )


async def workflow_is_running(client: Client, workflow_id: str) -> bool:
    """Whether the workflow `workflow_id` runs now (a claim holder with no read-model row yet
    may be starting). False when Temporal knows no such workflow."""
    try:
        desc = await client.get_workflow_handle(workflow_id).describe()
    except RPCError as exc:
        if exc.status is RPCStatusCode.NOT_FOUND:
            return False
        raise
    return desc.status is WorkflowExecutionStatus.RUNNING


async def claimed_within(
    sessions: async_sessionmaker[AsyncSession],
    *,
    scope: str,
    key: str,
    holder: str,
    grace: timedelta,
) -> bool:
    """Whether `holder` took `key` less than `grace` ago. A caller's `holder_is_live` falls back
    on it when the holder's process cannot be seen yet: between a claim and the start of its
    workflow, the holder is live, not stale."""
    async with sessions() as session:
        row = await session.get(Claim, (scope, key))
    if row is None or row.owner_id != holder:
        return False
    taken = as_utc(row.created_at)
    return taken is not None and datetime.now(UTC) - taken < grace
