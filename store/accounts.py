"""Personal accounts and their one association with a partner (R-INV-*).

`associate` and `dissociate` are single conditional UPDATEs: the database decides which of two
concurrent writers wins, so an account is never associated with two partners.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlmodel import col, update
from sqlmodel.ext.asyncio.session import AsyncSession

from domain.invitations import CHINA_SITE, AccountFacts, AssociationRules
from store.models import Account, Partner, utcnow


async def account_facts(session: AsyncSession, account_id: str) -> AccountFacts | None:
    row = await session.get(Account, account_id, populate_existing=True)
    if row is None:
        return None
    return AccountFacts(
        id=row.id,
        enterprise_verified=row.enterprise_verified,
        real_name_verified=row.real_name_verified,
        site=row.site,
        associated_partner_id=row.associated_partner_id,
        email=row.email,
    )


async def associate(
    session: AsyncSession, *, account_id: str, partner_id: str, rules: AssociationRules
) -> bool:
    """Associate the account with the partner if it is free (and, for invitations, still
    eligible under R-INV-2) at this very moment. True if this statement did it."""
    stmt = update(Account).where(
        col(Account.id) == account_id, col(Account.associated_partner_id).is_(None)
    )
    if rules == "invitation":
        stmt = stmt.where(
            sa.not_(col(Account.enterprise_verified)),
            sa.or_(col(Account.site) != CHINA_SITE, col(Account.real_name_verified)),
        )
    result = await session.exec(stmt.values(associated_partner_id=partner_id, updated_at=utcnow()))
    return result.rowcount == 1


async def dissociate(session: AsyncSession, *, account_id: str, partner_id: str) -> bool:
    """End the account's association with this partner, if it has one. True if this did it."""
    result = await session.exec(
        update(Account)
        .where(col(Account.id) == account_id, col(Account.associated_partner_id) == partner_id)
        .values(associated_partner_id=None, updated_at=utcnow())
    )
    return result.rowcount == 1


async def partner_contact(session: AsyncSession, partner_id: str) -> str:
    """Where a partner's notifications go: its contact address, else its id (the outbox adds
    the mail domain)."""
    row = await session.get(Partner, partner_id)
    return (row.contact_email if row else None) or partner_id
