"""Certifications (R-CERT-*): submit, read, request a defense, recertify, history.

The experts' review and the defense are tasks in the shared inbox (`/v1/tasks`).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client

from api.auth import CurrentUser, require_partner_user
from api.deps import SessionsDep, SettingsDep, TemporalDep
from api.errors import ApiError, ErrorEnvelope
from api.idempotency import IdempotencyKey, idempotent
from api.processes import (
    load_partner_item,
    partner_update,
    process_id,
    send_update,
    start_process,
    update_id,
    workflow_is_running,
)
from api.routes.opportunities import History, read_history
from domain.certification import (
    ELIGIBLE_PARTNER_KIND,
    AnswerClarification,
    CertificationCreate,
    CertificationInput,
    CertificationView,
    ClarificationAnswerCreate,
    DefenseRequestCreate,
    RecertificationCreate,
    Recertify,
    RequestDefense,
    certification_id,
)
from domain.opportunity import RouteRequest
from domain.principal import Principal, Role
from store.claims import claim
from store.models import Partner, ProcessRow, RoutingRule
from store.readmodel import best_rule
from workflows.certification import Certification

router = APIRouter(prefix="/v1/certifications", tags=["certifications"])

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorEnvelope} for code in (400, 401, 403, 404, 409, 422, 429, 503)
}


async def load_certification(
    sessions: async_sessionmaker[AsyncSession], cert_id: str, principal: Principal
) -> ProcessRow:
    return await load_partner_item(
        sessions,
        process="certification",
        item_id=cert_id,
        noun="certification",
        principal=principal,
    )


@router.post("", status_code=201, response_model=CertificationView, responses=ERRORS)
async def submit_certification(
    body: CertificationCreate,
    request: Request,
    principal: CurrentUser,
    sessions: SessionsDep,
    settings: SettingsDep,
    temporal: TemporalDep,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """R-CERT-1 / R-CERT-2: submit a subject with evidence for the experts' review. One
    certification per partner and subject, for good: later attempts go through `/recertify`."""
    partner_id = require_partner_user(principal)
    async with sessions() as session:
        partner = await session.get(Partner, partner_id)
    if partner is None:
        raise ApiError("PF.PARTNER_NOT_REGISTERED", f"partner {partner_id} is not registered")
    eligible = ELIGIBLE_PARTNER_KIND.get(body.kind)
    if eligible is not None and partner.kind != eligible:
        raise ApiError(
            "PF.KIND_NOT_ELIGIBLE",
            f"{body.kind.value} certifications are for {eligible} partners (R-CERT-1)",
            {"partner_kind": partner.kind},
        )
    cert_id = certification_id(partner_id, body.subject)
    # Who holds the claim: this request (or its retries, which share the Idempotency-Key).
    requester = process_id("cert-submission", partner_id, idempotency_key)

    async def start() -> dict[str, Any]:
        holder = await claim(
            sessions,
            scope="cert",
            key=cert_id,
            owner_id=requester,
            holder_is_live=lambda _: _certification_exists(sessions, temporal, cert_id),
        )
        if holder is not None:
            raise ApiError(
                "PF.CERTIFICATION_EXISTS",
                "this subject is already certified or under review; use its /recertify",
                {"existing_id": cert_id},
            )
        level = f" level {body.level}" if body.level else ""
        return await start_process(
            temporal,
            settings,
            workflow=Certification.run,
            arg=CertificationInput(
                partner_id=partner_id,
                submitted_by=principal.sub,
                certification=body,
                policy=settings.policy,
            ),
            workflow_id=cert_id,
            process="certification",
            partner_id=partner_id,
            summary=f"Certification {body.kind.value}{level} '{body.subject}' of {partner_id}",
        )

    return await idempotent(
        sessions=sessions,
        request=request,
        principal=principal,
        key=idempotency_key,
        body=body.model_dump(mode="json"),
        status_code=201,
        action=start,
    )


async def _certification_exists(
    sessions: async_sessionmaker[AsyncSession], temporal: Client, cert_id: str
) -> bool:
    """A certification lives for good once started (it continues-as-new, never ends); a claim
    whose start never happened is stale and may be taken over."""
    async with sessions() as session:
        if await session.get(ProcessRow, cert_id) is not None:
            return True
    return await workflow_is_running(temporal, cert_id)


@router.get("/{cert_id}", response_model=CertificationView, responses=ERRORS)
async def get_certification(cert_id: str, principal: CurrentUser, sessions: SessionsDep) -> Any:
    """State, validity, the recertification window and the last review's items."""
    row = await load_certification(sessions, cert_id, principal)
    return row.view


# A partner user's Update on its own certification.
_partner_update = partial(
    partner_update,
    process="certification",
    noun="certification",
)


@router.post("/{cert_id}/defense", response_model=CertificationView, responses=ERRORS)
async def request_defense(
    cert_id: str,
    body: DefenseRequestCreate,
    request: Request,
    principal: CurrentUser,
    sessions: SessionsDep,
    settings: SettingsDep,
    temporal: TemporalDep,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """R-CERT-3: dispute the criteria or the evidence in an online defense, once per attempt:
    while the review is pending, or within `cert_defense_period` after a failure. The partner
    asks, or on its behalf its PDM (one the routing table names for the partner) or
    certification operations (`cert_ops`); anyone else staff: 403 `PF.FORBIDDEN`."""

    async def act() -> dict[str, Any]:
        if principal.is_staff:
            await _check_on_behalf(sessions, cert_id, principal)
            return await send_update(
                temporal,
                settings,
                workflow_id=cert_id,
                update="request_defense",
                arg=RequestDefense(actor=principal, reason=body.reason),
                update_id=update_id("request_defense", cert_id, idempotency_key),
                what=f"request_defense of {cert_id}",
            )
        return await _partner_update(
            item_id=cert_id,
            principal=principal,
            sessions=sessions,
            settings=settings,
            temporal=temporal,
            update="request_defense",
            arg=RequestDefense(actor=principal, reason=body.reason),
            key=idempotency_key,
        )

    return await idempotent(
        sessions=sessions,
        request=request,
        principal=principal,
        key=idempotency_key,
        body=body.model_dump(mode="json"),
        status_code=200,
        action=act,
    )


async def _check_on_behalf(
    sessions: async_sessionmaker[AsyncSession], cert_id: str, principal: Principal
) -> None:
    """R-CERT-3: certification operations, or the partner's own PDM, may ask for a defense on
    the partner's behalf. The partner's PDMs are those the routing table names for it: rules
    for the partner itself, and the rule a PO of the partner's region would be routed by."""
    row = await load_certification(sessions, cert_id, principal)
    if principal.has(Role.cert_ops):
        return
    if principal.has(Role.pdm) and row.partner_id is not None:
        async with sessions() as session:
            partner = await session.get(Partner, row.partner_id)
            rules = (await session.exec(select(RoutingRule))).all()
        region = partner.region if partner else None
        pdms = {r.pdm for r in rules if r.partner_id == row.partner_id}
        best = best_rule(
            rules,
            RouteRequest(partner_id=row.partner_id, region=region, industry=None, offerings=[]),
        )
        if best is not None:
            pdms.add(best.pdm)
        if principal.sub in pdms:
            return
        raise ApiError("PF.FORBIDDEN", f"{principal.sub} is not a PDM of partner {row.partner_id}")
    raise ApiError(
        "PF.FORBIDDEN",
        "a defense is requested by the partner, its PDM or certification operations",
    )


@router.post("/{cert_id}/clarification", response_model=CertificationView, responses=ERRORS)
async def answer_clarification(
    cert_id: str,
    body: ClarificationAnswerCreate,
    request: Request,
    principal: CurrentUser,
    sessions: SessionsDep,
    settings: SettingsDep,
    temporal: TemporalDep,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """R-CERT-3: the partner answers the expert's question (`cert.review` outcome `clarify`);
    the review returns to the same expert with the answer in its history. No question waiting:
    409 `PF.WRONG_STATE`."""

    async def act() -> dict[str, Any]:
        return await _partner_update(
            item_id=cert_id,
            principal=principal,
            sessions=sessions,
            settings=settings,
            temporal=temporal,
            update="answer_clarification",
            arg=AnswerClarification(actor=principal, answer=body.answer),
            key=idempotency_key,
        )

    return await idempotent(
        sessions=sessions,
        request=request,
        principal=principal,
        key=idempotency_key,
        body=body.model_dump(mode="json"),
        status_code=200,
        action=act,
    )


@router.post("/{cert_id}/recertify", response_model=CertificationView, responses=ERRORS)
async def recertify(
    cert_id: str,
    body: RecertificationCreate,
    request: Request,
    principal: CurrentUser,
    sessions: SessionsDep,
    settings: SettingsDep,
    temporal: TemporalDep,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """R-CERT-6: a new attempt with fresh evidence, accepted from `window_opens_at` on (also
    after expiry), or any time after a failed first certification. Before the window: 409
    `PF.RECERT_WINDOW_NOT_OPEN` with `details.window_opens_at` (R-CERT-9)."""

    async def act() -> dict[str, Any]:
        return await _partner_update(
            item_id=cert_id,
            principal=principal,
            sessions=sessions,
            settings=settings,
            temporal=temporal,
            update="recertify",
            arg=Recertify(actor=principal, evidence=body.evidence, comment=body.comment),
            key=idempotency_key,
        )

    return await idempotent(
        sessions=sessions,
        request=request,
        principal=principal,
        key=idempotency_key,
        body=body.model_dump(mode="json"),
        status_code=200,
        action=act,
    )


@router.get("/{cert_id}/history", response_model=History, responses=ERRORS)
async def certification_history(cert_id: str, principal: CurrentUser, sessions: SessionsDep) -> Any:
    """R-X-3 / R-CERT-4: every action and result, oldest first, across yearly cycles."""
    await load_certification(sessions, cert_id, principal)
    async with sessions() as session:
        return await read_history(session, cert_id)
