"""Certifications (R-CERT-*): submit, read, request a defense, recertify, history.

The experts' review and the defense are tasks in the shared inbox (`/v1/tasks`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client

from api.auth import CurrentUser, require_partner_user
from api.claims import claim_or_refuse
from api.deps import Processes, SessionsDep
from api.errors import ApiError
from api.frame import command_router
from api.processes import load_partner_item
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
from store.claims import workflow_is_running
from store.models import Partner, ProcessRow, RoutingRule
from store.readmodel import best_rule
from workflows.certification import Certification

router = command_router(prefix="/v1/certifications", tags=["certifications"])


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


@router.post("", status_code=201, response_model=CertificationView)
async def submit_certification(
    body: CertificationCreate, principal: CurrentUser, processes: Processes
) -> CertificationView:
    """R-CERT-1 / R-CERT-2: submit a subject with evidence for the experts' review. One
    certification per partner and subject, for good (business key `cert-<partner>-<subject>`):
    later attempts go through `/recertify` (409 PF.CERTIFICATION_EXISTS)."""
    partner_id = require_partner_user(principal)
    async with processes.sessions() as session:
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
    # Who holds the claim: this request (its retries share the id, R-X-6).
    requester = await processes.new_id("cert-submission")
    sessions, temporal = processes.sessions, processes.temporal
    await claim_or_refuse(
        processes,
        scope="cert",
        key=cert_id,
        owner_id=requester,
        error_code="PF.CERTIFICATION_EXISTS",
        message="this subject is already certified or under review; use its /recertify",
        holder_is_live=lambda _: _certification_exists(sessions, temporal, cert_id),
        existing_id=cert_id,
    )
    level = f" level {body.level}" if body.level else ""
    return await processes.start(
        Certification.run,
        CertificationInput(
            partner_id=partner_id,
            submitted_by=principal.sub,
            certification=body,
            policy=processes.settings.policy,
        ),
        workflow_id=cert_id,
        process="certification",
        partner_id=partner_id,
        summary=f"Certification {body.kind.value}{level} '{body.subject}' of {partner_id}",
        view=CertificationView,
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


@router.get("/{cert_id}", response_model=CertificationView)
async def get_certification(cert_id: str, principal: CurrentUser, sessions: SessionsDep) -> Any:
    """State, validity, the recertification window and the last review's items."""
    row = await load_certification(sessions, cert_id, principal)
    return row.view


@router.post("/{cert_id}/defense", response_model=CertificationView)
async def request_defense(
    cert_id: str, body: DefenseRequestCreate, principal: CurrentUser, processes: Processes
) -> CertificationView:
    """R-CERT-3: dispute the criteria or the evidence in an online defense, once per attempt:
    while the review is pending, or within `cert_defense_period` after a failure. The partner
    asks, or on its behalf its PDM (one the routing table names for the partner) or
    certification operations (`cert_ops`); anyone else staff: 403 `PF.FORBIDDEN`."""
    arg = RequestDefense(actor=principal, reason=body.reason)
    if principal.is_staff:
        await _check_on_behalf(processes.sessions, cert_id, principal)
        return await processes.update(
            cert_id, Certification.request_defense, arg, view=CertificationView
        )
    return await processes.partner_update(
        process="certification",
        noun="certification",
        item_id=cert_id,
        principal=principal,
        update=Certification.request_defense,
        arg=arg,
        view=CertificationView,
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


@router.post("/{cert_id}/clarification", response_model=CertificationView)
async def answer_clarification(
    cert_id: str, body: ClarificationAnswerCreate, principal: CurrentUser, processes: Processes
) -> CertificationView:
    """R-CERT-3: the partner answers the expert's question (`cert.review` outcome `clarify`);
    the review returns to the same expert with the answer in its history. No question waiting:
    409 `PF.WRONG_STATE`."""
    return await processes.partner_update(
        process="certification",
        noun="certification",
        item_id=cert_id,
        principal=principal,
        update=Certification.answer_clarification,
        arg=AnswerClarification(actor=principal, answer=body.answer),
        view=CertificationView,
    )


@router.post("/{cert_id}/recertify", response_model=CertificationView)
async def recertify(
    cert_id: str, body: RecertificationCreate, principal: CurrentUser, processes: Processes
) -> CertificationView:
    """R-CERT-6: a new attempt with fresh evidence, accepted from `window_opens_at` on (also
    after expiry), or any time after a failed first certification. Before the window: 409
    `PF.RECERT_WINDOW_NOT_OPEN` with `details.window_opens_at` (R-CERT-9)."""
    return await processes.partner_update(
        process="certification",
        noun="certification",
        item_id=cert_id,
        principal=principal,
        update=Certification.recertify,
        arg=Recertify(actor=principal, evidence=body.evidence, comment=body.comment),
        view=CertificationView,
    )


@router.get("/{cert_id}/history", response_model=History)
async def certification_history(cert_id: str, principal: CurrentUser, sessions: SessionsDep) -> Any:
    """R-X-3 / R-CERT-4: every action and result, oldest first, across yearly cycles."""
    await load_certification(sessions, cert_id, principal)
    async with sessions() as session:
        return await read_history(session, cert_id)
