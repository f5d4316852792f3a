"""R-PO-4's two claims on a PO's normalised (customer, project) key (`store.claims`: a
primary-key insert, exactly one succeeds):

- `po-approved`: of a set of duplicate POs at most one is ever approved, even when two PDMs
  approve at the same moment. An approval first claims the key; the holder keeps it while it is
  approved (approved, won, delivered) under that key, or, while its approval is not recorded
  yet, for a short grace after its claim. A PO approved and then moved to another customer or
  project (R-PO-9) gives its old key back when it moves.
- `po-open`: one open PO per partner, customer and project (`<partner>|<match key>`), taken at
  submission (`api.routes.opportunities`) and moved with the PO when a resubmission (R-PO-7) or
  a re-verification (R-PO-9) changes its customer or project: the new key first, refused
  (PF.OPPORTUNITY_EXISTS) if another open PO of the partner holds it, then the old one back.

Built once in `worker.py` with a session factory."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, delete
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity

from domain.opportunity import FINAL_STATUSES, OpportunityStatus, claim_key
from store.claims import (
    PO_APPROVED,
    PO_OPEN,
    claim,
    claimed_within,
    move,
    release,
    workflow_is_running,
)
from store.db import transaction
from store.models import Claim, ProcessRow

SCOPE = PO_APPROVED.name
# Longer than a claim-then-commit takes; an approval that never got recorded frees its key then.
GRACE = timedelta(minutes=2)
_APPROVED = frozenset(
    s.value
    for s in (OpportunityStatus.approved, OpportunityStatus.won, OpportunityStatus.delivered)
)


class ApprovalClaim(BaseModel):
    """The PO about to be approved (`po-…`) and its `match_key` (`domain.opportunity`)."""

    po_id: str
    match_key: str


class OpenClaimMove(BaseModel):
    """A PO (`po-…` of `partner_id`) whose customer or project changes from `old_match_key` to
    `new_match_key` (`domain.opportunity.match_key`)."""

    po_id: str
    partner_id: str
    old_match_key: str
    new_match_key: str


_CLOSED = frozenset(s.value for s in FINAL_STATUSES)


async def open_po_holds(
    sessions: async_sessionmaker[AsyncSession],
    *,
    holder: str,
    key: str,
    grace: timedelta,
    running: Callable[[str], Awaitable[bool]],
) -> bool:
    """R-PO-4: whether the PO `holder` still holds its `po-open` claim on `key`: it is open and
    recorded under that key, or it took the key less than `grace` ago (being started, or moving
    to it and not recorded yet); with no row, its workflow runs (being started). A closed PO, a
    PO now under another key, a start that never happened: stale, the key may be taken over."""
    async with sessions() as session:
        row = await session.get(ProcessRow, holder)
    if row is not None and row.status in _CLOSED:
        return False
    if row is not None and claim_key(row.partner_id or "", row.match_key or "") == key:
        return True
    if await claimed_within(sessions, scope=PO_OPEN.name, key=key, holder=holder, grace=grace):
        return True
    return row is None and await running(holder)


class OpportunityClaimActivities:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    @activity.defn
    async def claim_approval(self, req: ApprovalClaim) -> str | None:
        """Take `po-approved:<match_key>` for `req.po_id`. None: taken (or already held, so a
        retry is harmless); else the id of the approved duplicate that holds it."""

        async def holder_is_live(other: str) -> bool:
            async with self.sessions() as session:
                row = await session.get(ProcessRow, other)
            if row is not None and row.status in _APPROVED:
                # approved: it holds the key it is approved under, not one it has left
                return row.match_key == req.match_key
            # its approval not recorded yet: in flight for a short while, then stale
            return await claimed_within(
                self.sessions, scope=SCOPE, key=req.match_key, holder=other, grace=GRACE
            )

        return await claim(
            self.sessions,
            scope=SCOPE,
            key=req.match_key,
            owner_id=req.po_id,
            holder_is_live=holder_is_live,
        )

    @activity.defn
    async def move_open_claim(self, req: OpenClaimMove) -> str | None:
        """R-PO-4 with R-PO-7 / R-PO-9: the PO's `po-open` claim follows its new customer or
        project. None: moved (the old key given back; its `po-approved` claim on the old key
        too: it is not approved under the new one). Else the id of the other open PO of the
        partner that holds the new key; nothing is written. Idempotent (a retry finds it
        moved)."""
        client = activity.client()
        new = claim_key(req.partner_id, req.new_match_key)

        async def running(workflow_id: str) -> bool:
            return await workflow_is_running(client, workflow_id)

        holder = await move(
            self.sessions,
            scope=PO_OPEN.name,
            old_key=claim_key(req.partner_id, req.old_match_key),
            new_key=new,
            owner_id=req.po_id,
            holder_is_live=lambda other: open_po_holds(
                self.sessions, holder=other, key=new, grace=GRACE, running=running
            ),
        )
        if holder is None:
            await release(
                self.sessions, scope=PO_APPROVED.name, key=req.old_match_key, owner_id=req.po_id
            )
        return holder

    @activity.defn
    async def release_approval(self, req: ApprovalClaim) -> None:
        """Give the key back when the approval it was taken for did not happen (idempotent)."""
        async with transaction(self.sessions) as session:
            await session.exec(
                delete(Claim).where(
                    col(Claim.scope) == SCOPE,
                    col(Claim.key) == req.match_key,
                    col(Claim.owner_id) == req.po_id,
                )
            )
