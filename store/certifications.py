"""What other processes ask about certifications, read from the read model (`processes` rows of
process "certification"): is a partner certified at a moment (R-CERT-7, R-INC-1), and which of
its certifications passed in a given year (capability-label incentives, R-INC-1).

A certification's view keeps every validity period it has had (one per pass), so the answer
for a past moment is as right as for now.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from domain.certification import CertificationKind, CertificationView, certification_match_key
from store.models import ProcessRow


async def partner_certifications(
    session: AsyncSession,
    *,
    partner_id: str,
    subject: str | None = None,
    kind: CertificationKind | str | None = None,
    level: int | None = None,
) -> list[CertificationView]:
    """A partner's certifications, optionally of one subject, kind and (label) level exactly."""
    stmt = (
        select(ProcessRow.view)
        .where(ProcessRow.process == "certification")
        .where(ProcessRow.partner_id == partner_id)
        .order_by(col(ProcessRow.id))
    )
    if subject is not None:
        stmt = stmt.where(ProcessRow.match_key == certification_match_key(partner_id, subject))
    views = [CertificationView.model_validate(v) for v in (await session.exec(stmt)).all()]
    return [
        v for v in views if (kind is None or v.kind == kind) and (level is None or v.level == level)
    ]


async def certified(
    session: AsyncSession,
    *,
    partner_id: str,
    subject: str | None = None,
    kind: CertificationKind | str | None = None,
    level: int | None = None,
    at: datetime,
) -> bool:
    """Whether the partner held a matching certificate at `at` (naive means UTC): some pass
    before it whose validity had not yet run out (R-CERT-5, R-CERT-7)."""
    moment = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    views = await partner_certifications(
        session, partner_id=partner_id, subject=subject, kind=kind, level=level
    )
    return any(v.certified_at(moment) for v in views)


async def passed_in_year(
    session: AsyncSession,
    *,
    partner_id: str,
    year: int,
    kind: CertificationKind | str | None = None,
    level: int | None = None,
) -> list[CertificationView]:
    """The partner's certifications with a pass (first or recertification) in calendar `year`,
    UTC: e.g. the labels certified in the current year (R-INC-1)."""
    views = await partner_certifications(session, partner_id=partner_id, kind=kind, level=level)
    return [v for v in views if any(p.passed_at.astimezone(UTC).year == year for p in v.periods)]
