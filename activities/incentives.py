"""Look-ups the incentive workflow makes when a command arrives (R-INC-6, R-CERT-7): read-only,
so retries are harmless. Built once in `worker.py` with a session factory."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity

from domain.incentives import PaymentEligibility, PaymentEligibilityQuery
from store.certifications import certified
from store.models import Partner


class IncentiveActivities:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    @activity.defn
    async def payment_eligibility(self, query: PaymentEligibilityQuery) -> PaymentEligibility:
        """Read when the payment request arrives: ops may complete the partner's business
        information certification any time before (`PUT /v1/admin/partners/{id}`), and a label
        may have expired since the application (then its incentive is no longer eligible)."""
        async with self.sessions() as session:
            partner = await session.get(Partner, query.partner_id)
            label = None
            if query.label is not None:
                label = await certified(
                    session,
                    partner_id=query.partner_id,
                    subject=query.label.subject,
                    kind="capability_label",
                    level=query.label.level,
                    at=datetime.now(UTC),
                )
        if partner is None:
            return PaymentEligibility(partner_found=False, label_certified=label)
        return PaymentEligibility(
            partner_found=True,
            partner_name=partner.name,
            business_info_certified=partner.business_info_certified,
            label_certified=label,
        )
