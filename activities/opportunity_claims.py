"""R-PO-4: of a set of duplicate POs at most one is ever approved, even when two PDMs approve at
the same moment. An approval first claims its normalised (customer, project) key in the claims
table (`store.claims`: a primary-key insert, exactly one succeeds); the holder keeps it while it
is approved (approved, won, delivered) under that key, or, while its approval is not recorded
yet, for a short grace after its claim. A PO approved and then moved to another customer or
project (R-PO-9) no longer holds its old key. Built once in `worker.py` with a session factory."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, delete
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity

from domain.opportunity import OpportunityStatus
from store.claims import claim, claimed_within
from store.db import transaction
from store.models import Claim, ProcessRow

SCOPE = "po-approved"
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
