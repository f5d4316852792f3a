"""Activities on personal accounts: the atomic association (R-INV-1, R-INV-5, R-INV-6) and its end.

Each is one conditional UPDATE in a transaction of its own, so two partners' invitations accepted
at the same moment end with one association. Both are idempotent: a retry after a lost answer
finds the end state already reached and reports success. Business refusals are non-retryable
ApplicationErrors whose type is the PF code the caller hears.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity

from domain.errors import refuse
from domain.invitations import (
    AssociationRequest,
    AssociationResult,
    DissociationRequest,
    DissociationResult,
    association_refusal,
)
from store import accounts
from store.db import transaction

# A refused UPDATE whose re-read shows an eligible, free account means the row changed between
# the two statements; look again a few times before giving up.
_ATTEMPTS = 5


class AccountActivities:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    @activity.defn
    async def associate_account(self, req: AssociationRequest) -> AssociationResult:
        """Associate the account with the partner, re-checking eligibility in the same statement
        (R-INV-5); refuse with the rule's own code when it no longer holds."""
        for _ in range(_ATTEMPTS):
            async with transaction(self.sessions) as session:
                won = await accounts.associate(
                    session, account_id=req.account_id, partner_id=req.partner_id, rules=req.rules
                )
            async with self.sessions() as session:
                facts = await accounts.account_facts(session, req.account_id)
            if won and facts is not None:
                activity.logger.info(
                    "account %s associated with %s by %s",
                    req.account_id,
                    req.partner_id,
                    req.process_id,
                )
                return AssociationResult(account=facts, newly_associated=True)
            if facts is not None and facts.associated_partner_id == req.partner_id:
                return AssociationResult(account=facts, newly_associated=False)
            refusal = association_refusal(
                facts,
                account_id=req.account_id,
                partner_id=req.partner_id,
                rules=req.rules,
                same_partner_is_refused=False,
            )
            if refusal is not None:
                refuse(refusal.code, refusal.message, **refusal.details)
        refuse("PF.CONFLICT", f"account {req.account_id} kept changing; try again")

    @activity.defn
    async def dissociate_account(self, req: DissociationRequest) -> DissociationResult:
        async with transaction(self.sessions) as session:
            done = await accounts.dissociate(
                session, account_id=req.account_id, partner_id=req.partner_id
            )
        activity.logger.info(
            "account %s dissociated from %s by %s (was associated: %s)",
            req.account_id,
            req.partner_id,
            req.process_id,
            done,
        )
        return DissociationResult(was_associated=done)
