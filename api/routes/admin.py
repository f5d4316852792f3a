"""Reference data, kept by ops_admin: partners, personal accounts, routing rules, offerings."""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Annotated, Any

from fastapi import Body
from pydantic import BaseModel, ConfigDict, EmailStr, Field
from sqlmodel import col, delete, select
from sqlmodel.ext.asyncio.session import AsyncSession

from api.auth import CurrentUser, require_roles
from api.deps import SessionsDep
from api.errors import ApiError
from api.frame import command_router
from domain.principal import Principal, Role
from store.models import Account, AuditEvent, Offering, Partner, RoutingRule, utcnow

router = command_router(prefix="/v1/admin", tags=["admin"])
Id = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")]
Code = Annotated[str, Field(min_length=1, max_length=64)]


class PartnerKind(StrEnum):
    solution_provider = "solution_provider"
    distributor = "distributor"
    reseller = "reseller"
    software = "software"
    service = "service"


class Site(StrEnum):
    china = "china"
    international = "international"


class PartnerIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "Acme Cloud Services",
                    "kind": "solution_provider",
                    "tier": "core",
                    "region": "east-china",
                    "business_info_certified": True,
                    "contact_email": "alliances@acme.example",
                }
            ]
        },
    )
    name: str = Field(min_length=1, max_length=200)
    kind: PartnerKind
    tier: Code | None = None
    region: Code | None = None
    business_info_certified: bool = False
    contact_email: EmailStr | None = None


class PartnerOut(PartnerIn):
    id: str


class AccountIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "enterprise_verified": False,
                    "real_name_verified": True,
                    "site": "china",
                    "associated_partner_id": None,
                    "email": "li.ming@example.com",
                }
            ]
        },
    )
    enterprise_verified: bool = False
    real_name_verified: bool = False
    site: Site = Site.china
    associated_partner_id: Id | None = None
    email: EmailStr | None = None


class AccountOut(AccountIn):
    id: str


class RoutingRuleIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "partner_id": None,
                    "region": "east-china",
                    "industry": None,
                    "pdm": "pdm-li",
                    "psm": "psm-zhao",
                }
            ]
        },
    )
    partner_id: Id | None = None
    region: Code | None = None
    industry: Code | None = None
    pdm: Code
    psm: Code | None = None


class OfferingIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: Code
    name: str = Field(min_length=1, max_length=200)


async def _audit(
    session: AsyncSession, principal: Principal, subject: str, action: str, details: dict[str, Any]
) -> None:
    session.add(
        AuditEvent(
            subject_id=subject,
            version=time.time_ns() // 1000,
            position=0,
            at=utcnow(),
            actor=principal.sub,
            action=action,
            details=details,
        )
    )


@router.put("/partners/{partner_id}", response_model=PartnerOut)
async def put_partner(
    partner_id: Id, body: PartnerIn, principal: CurrentUser, sessions: SessionsDep
) -> Any:
    require_roles(principal, Role.ops_admin)
    async with sessions() as session, session.begin():
        row = await session.get(Partner, partner_id) or Partner(
            id=partner_id, name=body.name, kind=body.kind
        )
        for field, value in body.model_dump().items():
            setattr(row, field, value)
        row.updated_at = utcnow()
        session.add(row)
        await _audit(
            session,
            principal,
            f"partner:{partner_id}",
            "partner_saved",
            body.model_dump(mode="json"),
        )
    return PartnerOut(id=partner_id, **body.model_dump())


@router.put("/accounts/{account_id}", response_model=AccountOut)
async def put_account(
    account_id: Id, body: AccountIn, principal: CurrentUser, sessions: SessionsDep
) -> Any:
    require_roles(principal, Role.ops_admin)
    async with sessions() as session, session.begin():
        partner_id = body.associated_partner_id
        if partner_id is not None and await session.get(Partner, partner_id) is None:
            raise ApiError(
                "PF.VALIDATION_FAILED",
                f"associated_partner_id names no registered partner: {partner_id}",
                [
                    {
                        "loc": ["body", "associated_partner_id"],
                        "msg": "no such partner",
                        "type": "value_error",
                    }
                ],
            )
        row = await session.get(Account, account_id) or Account(id=account_id)
        for field, value in body.model_dump().items():
            setattr(row, field, value)
        row.updated_at = utcnow()
        session.add(row)
        await _audit(
            session,
            principal,
            f"account:{account_id}",
            "account_saved",
            body.model_dump(mode="json"),
        )
    return AccountOut(id=account_id, **body.model_dump())


@router.put("/routing-rules", response_model=list[RoutingRuleIn])
async def replace_routing_rules(
    principal: CurrentUser,
    sessions: SessionsDep,
    rules: Annotated[list[RoutingRuleIn], Body(max_length=5000)],
) -> Any:
    """Replace the whole routing table (R-PO-2) in one transaction."""
    require_roles(principal, Role.ops_admin)
    async with sessions() as session, session.begin():
        await session.exec(delete(RoutingRule))
        for position, rule in enumerate(rules):
            session.add(RoutingRule(position=position, **rule.model_dump()))
        await _audit(
            session,
            principal,
            "routing-rules",
            "routing_rules_replaced",
            {"rules": [r.model_dump() for r in rules]},
        )
    return rules


@router.get("/routing-rules", response_model=list[RoutingRuleIn])
async def get_routing_rules(principal: CurrentUser, sessions: SessionsDep) -> Any:
    require_roles(principal, Role.ops_admin, Role.dispatcher)
    async with sessions() as session:
        rows = (await session.exec(select(RoutingRule).order_by(col(RoutingRule.position)))).all()
    return [RoutingRuleIn.model_validate(r.model_dump(exclude={"id", "position"})) for r in rows]


@router.put("/offerings", response_model=list[OfferingIn])
async def replace_offerings(
    principal: CurrentUser,
    sessions: SessionsDep,
    offerings: Annotated[list[OfferingIn], Body(max_length=5000)],
) -> Any:
    """Replace the offering catalogue a PO's offerings are recognised against (R-PO-8)."""
    require_roles(principal, Role.ops_admin)
    async with sessions() as session, session.begin():
        await session.exec(delete(Offering))
        for offering in {o.code: o for o in offerings}.values():
            session.add(Offering(**offering.model_dump()))
        await _audit(
            session,
            principal,
            "offerings",
            "offerings_replaced",
            {"codes": [o.code for o in offerings]},
        )
    return offerings
