"""Incentive look-ups and business-key claims: the facts eligibility is decided on (R-INC-1/2)
and the atomic claims that keep R-INC-3 and R-INC-4 true under concurrent submissions.

Claims (`store.claims`), each held by an application id:
- `inc-source` — one live application per source: a PO, a certification, a Funding Head project
  (R-INC-3 "one project, one person"); a rejected application frees its source;
- `inc-person` — a Funding Head person is bound to the partner (the path) of the first
  application, held as `<partner>|<application id>` (R-INC-3 "one person, one path");
- `inc-month` — slots `<partner>|<YYYY-MM>|<n>`, n = 1 … the monthly limit (R-INC-4).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, delete, select, update
from sqlmodel.ext.asyncio.session import AsyncSession

from domain.certification import CertificationKind, CertificationView
from domain.incentive_caps import HeldLabel
from domain.incentives import (
    CertificationFacts,
    IncentiveFields,
    IncentiveSource,
    OpportunityFacts,
    SourceFacts,
    business_key,
)
from store.certifications import certified, partner_certifications
from store.claims import claim
from store.db import as_utc
from store.models import Claim, Partner, ProcessRow

SOURCE_SCOPE = "inc-source"
PERSON_SCOPE = "inc-person"
MONTH_SCOPE = "inc-month"
CLOUD_SOFTWARE_KINDS = ("cloud_software", "advanced_cloud_software")

HolderIsLive = Callable[[str, str, str], Awaitable[bool]]  # (scope, key, holder) -> live?


# --- facts ---------------------------------------------------------------------------------------


async def source_facts(
    session: AsyncSession, *, partner: Partner, app: IncentiveFields, at: datetime
) -> SourceFacts:
    facts = SourceFacts(
        partner_kind=partner.kind, partner_tier=partner.tier, partner_region=partner.region
    )
    if partner.kind == "service":
        # R-INC-2: a service partner's cap comes from its valid capability labels
        moment = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
        facts.labels = [
            HeldLabel(subject=v.subject, level=v.level)
            for v in await partner_certifications(
                session, partner_id=partner.id, kind=CertificationKind.capability_label
            )
            if v.certified_at(moment)
        ]
    if partner.kind == "software":
        facts.certifications = [
            kind
            for kind in CLOUD_SOFTWARE_KINDS
            if await certified(session, partner_id=partner.id, kind=kind, at=at)
        ]
    if app.source is IncentiveSource.opportunity and app.opportunity_id:
        facts.opportunity = await _opportunity_facts(session, app.opportunity_id)
    if app.source is IncentiveSource.capability_label and app.certification_id:
        facts.certification = await _certification_facts(session, app.certification_id, at)
    return facts


async def _opportunity_facts(session: AsyncSession, po_id: str) -> OpportunityFacts | None:
    row = await session.get(ProcessRow, po_id)
    if row is None or row.process != "opportunity":
        return None
    return OpportunityFacts(
        partner_id=row.partner_id,
        status=row.status,
        customer_name=row.view.get("customer_name"),
        project_name=row.view.get("project_name"),
    )


async def _certification_facts(
    session: AsyncSession, cert_id: str, at: datetime
) -> CertificationFacts | None:
    row = await session.get(ProcessRow, cert_id)
    if row is None or row.process != "certification":
        return None
    view: dict[str, Any] = row.view
    level = view.get("level")
    subject = view.get("subject")
    kind = view.get("kind")
    # this certificate itself, over every validity period it has had (R-CERT-5, R-CERT-7)
    now_certified = CertificationView.model_validate(view).certified_at(
        at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    )
    return CertificationFacts(
        partner_id=row.partner_id,
        kind=kind,
        subject=subject,
        level=int(level) if level is not None else None,
        passed_at=_moment(view.get("passed_at")),
        valid_until=_moment(view.get("valid_until")),
        certified_now=now_certified,
    )


def _moment(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return as_utc(datetime.fromisoformat(value))
    except ValueError:
        return None


async def incentive_status(sessions: async_sessionmaker[AsyncSession], inc_id: str) -> str | None:
    async with sessions() as session:
        row = await session.get(ProcessRow, inc_id)
    return row.status if row is not None and row.process == "incentive" else None


# --- claims --------------------------------------------------------------------------------------


def person_key(app: IncentiveFields) -> str | None:
    return business_key(app.person) if app.person else None


def person_holder(partner_id: str, inc_id: str) -> str:
    return f"{partner_id}|{inc_id}"


def application_of(holder: str) -> str:
    """The application id inside a claim holder (`inc-…` or `<partner>|inc-…`)."""
    return holder.rsplit("|", 1)[-1]


def month_slot_prefix(partner_id: str, month: str) -> str:
    return f"{partner_id}|{month}|"


async def take(
    sessions: async_sessionmaker[AsyncSession],
    *,
    scope: str,
    key: str,
    owner_id: str,
    holder_is_live: HolderIsLive,
) -> str | None:
    """`store.claims.claim`, then mark the claim as just taken: a claim whose application has not
    started yet counts as live for a grace period, however old the row it took over."""
    holder = await claim(
        sessions,
        scope=scope,
        key=key,
        owner_id=owner_id,
        holder_is_live=lambda other: holder_is_live(scope, key, other),
    )
    if holder is None:
        async with sessions() as session, session.begin():
            await session.exec(
                update(Claim)
                .where(
                    col(Claim.scope) == scope,
                    col(Claim.key) == key,
                    col(Claim.owner_id) == owner_id,
                )
                .values(created_at=datetime.now(UTC))
            )
    return holder


async def take_month_slot(
    sessions: async_sessionmaker[AsyncSession],
    *,
    partner_id: str,
    month: str,
    limit: int,
    owner_id: str,
    holder_is_live: HolderIsLive,
) -> bool:
    """R-INC-4: one of the month's `limit` slots, atomically; False when all are held."""
    prefix = month_slot_prefix(partner_id, month)
    async with sessions() as session:
        held = (
            await session.exec(
                select(Claim.key).where(
                    col(Claim.scope) == MONTH_SCOPE,
                    col(Claim.key).startswith(prefix, autoescape=True),
                    col(Claim.owner_id) == owner_id,
                )
            )
        ).first()
    if held is not None:  # a retried submission keeps the slot it took
        return True
    for n in range(1, limit + 1):
        holder = await take(
            sessions,
            scope=MONTH_SCOPE,
            key=f"{prefix}{n}",
            owner_id=owner_id,
            holder_is_live=holder_is_live,
        )
        if holder is None:
            return True
    return False


async def release_claims(sessions: async_sessionmaker[AsyncSession], *, owners: list[str]) -> None:
    """Give back every claim an application took (its start failed: nothing stays behind)."""
    async with sessions() as session, session.begin():
        await session.exec(delete(Claim).where(col(Claim.owner_id).in_(owners)))


async def claims_of(sessions: async_sessionmaker[AsyncSession], owners: list[str]) -> list[Claim]:
    async with sessions() as session:
        return list(
            (await session.exec(select(Claim).where(col(Claim.owner_id).in_(owners)))).all()
        )
