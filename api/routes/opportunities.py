"""Partner opportunities (R-PO-*): submit, read, cancel, resubmit, progress, history."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from activities.opportunity_claims import open_po_holds
from api.auth import CurrentUser, require_partner_user
from api.claims import claim_or_refuse
from api.deps import Processes, SessionsDep
from api.errors import ApiError
from api.frame import command_router
from api.processes import load_partner_item
from domain.opportunity import (
    FINAL_STATUSES,
    CancelOpportunity,
    OpportunityCreate,
    OpportunityFields,
    OpportunityProgress,
    OpportunityReviewInput,
    OpportunityView,
    ResubmitOpportunity,
    UpdateProgress,
    claim_key,
    match_key,
    progress_close_date_refusal,
)
from domain.principal import Principal
from domain.values import UtcDateTime, earliest_today
from store.claims import PO_OPEN, workflow_is_running
from store.db import as_utc
from store.models import AuditEvent, Partner, ProcessRow
from workflows.opportunity import OpportunityReview

router = command_router(prefix="/v1/opportunities", tags=["opportunities"])


class CancelBody(BaseModel):
    """R-PO-6: an optional reason, nothing else (an unknown field is 422)."""

    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(default=None, max_length=4000)


class ResubmitBody(OpportunityCreate):
    comment: str | None = Field(default=None, max_length=4000)


class AuditEntryPublic(BaseModel):
    at: UtcDateTime
    actor: str
    action: str
    comment: str | None
    task_id: str | None
    details: dict[str, Any]


class History(BaseModel):
    id: str
    items: list[AuditEntryPublic]


async def load_opportunity(
    sessions: async_sessionmaker[AsyncSession], po_id: str, principal: Principal
) -> ProcessRow:
    return await load_partner_item(
        sessions, process="opportunity", item_id=po_id, noun="opportunity", principal=principal
    )


@router.post("", status_code=201, response_model=OpportunityView)
async def submit_opportunity(
    body: OpportunityCreate, principal: CurrentUser, processes: Processes
) -> OpportunityView:
    """R-PO-1: submit a PO. It is routed (R-PO-2/3) and flagged (R-PO-4/8) before the answer.
    One open PO per partner, customer and project (409 PF.OPPORTUNITY_EXISTS, `existing_id`);
    the claim follows the PO when its customer or project changes (R-PO-7, R-PO-9)."""
    partner_id = require_partner_user(principal)
    async with processes.sessions() as session:
        partner = await session.get(Partner, partner_id)
    if partner is None:
        raise ApiError("PF.PARTNER_NOT_REGISTERED", f"partner {partner_id} is not registered")
    po_id = await processes.new_id("po")
    key = claim_key(partner_id, match_key(body.customer_name, body.project_name))
    # longer than a start can take: until then an unrecorded holder is starting, not stale
    grace = timedelta(seconds=2 * processes.settings.update_timeout_seconds + 10)
    sessions, temporal = processes.sessions, processes.temporal

    async def running(workflow_id: str) -> bool:
        return await workflow_is_running(temporal, workflow_id)

    await claim_or_refuse(
        processes,
        scope=PO_OPEN.name,
        key=key,
        owner_id=po_id,
        error_code="PF.OPPORTUNITY_EXISTS",
        message="this partner already has an open opportunity for the same customer and project",
        holder_is_live=lambda other: open_po_holds(
            sessions, holder=other, key=key, grace=grace, running=running
        ),
    )
    return await processes.start(
        OpportunityReview.run,
        OpportunityReviewInput(
            po_id=po_id,
            partner_id=partner_id,
            submitted_by=principal.sub,
            opportunity=body,
            policy=processes.settings.policy,
        ),
        workflow_id=po_id,
        process="opportunity",
        partner_id=partner_id,
        summary=f"PO {body.customer_name} / {body.project_name} from {partner_id}, "
        f"{body.amount} CNY",
        view=OpportunityView,
    )


@router.get("/{po_id}", response_model=OpportunityView)
async def get_opportunity(po_id: str, principal: CurrentUser, sessions: SessionsDep) -> Any:
    row = await load_opportunity(sessions, po_id, principal)
    return row.view


CLOSED = frozenset(s.value for s in FINAL_STATUSES)


@router.post("/{po_id}/cancel", response_model=OpportunityView)
async def cancel_opportunity(
    po_id: str, body: CancelBody, principal: CurrentUser, processes: Processes
) -> OpportunityView:
    """R-PO-6: the partner withdraws its PO until a decision is taken. The body is optional."""
    return await processes.partner_update(
        process="opportunity",
        noun="opportunity",
        item_id=po_id,
        principal=principal,
        update=OpportunityReview.cancel,
        arg=CancelOpportunity(actor=principal, reason=body.reason),
        view=OpportunityView,
        closed=CLOSED,
    )


@router.post("/{po_id}/resubmit", response_model=OpportunityView)
async def resubmit_opportunity(
    po_id: str, body: ResubmitBody, principal: CurrentUser, processes: Processes
) -> OpportunityView:
    """R-PO-7: after a return for information, the edited PO goes back to the same PDM."""
    edited = OpportunityFields.model_validate(body.model_dump(exclude={"comment"}))
    return await processes.partner_update(
        process="opportunity",
        noun="opportunity",
        item_id=po_id,
        principal=principal,
        update=OpportunityReview.resubmit,
        arg=ResubmitOpportunity(actor=principal, opportunity=edited, comment=body.comment),
        view=OpportunityView,
        closed=CLOSED,
    )


@router.patch("/{po_id}", response_model=OpportunityView)
async def update_opportunity_progress(
    po_id: str, body: OpportunityProgress, principal: CurrentUser, processes: Processes
) -> OpportunityView:
    """R-PO-9 / R-PO-11: stage (won, lost, delivered) and edits after approval; a new customer
    or project re-opens verification. A past `expected_close_date` is 422 unless the PATCH
    records a stage or the PO is already won (`OpportunityProgress`)."""
    if not body.model_dump(exclude_none=True):
        raise ApiError("PF.VALIDATION_FAILED", "send at least one field to change")
    if body.expected_close_date is not None:
        row = await load_opportunity(processes.sessions, po_id, principal)
        why = progress_close_date_refusal(body, status=row.status, today=earliest_today())
        if why is not None:
            raise ApiError(
                "PF.VALIDATION_FAILED",
                why,
                [{"loc": ["body", "expected_close_date"], "msg": why, "type": "date_in_past"}],
            )
    return await processes.partner_update(
        process="opportunity",
        noun="opportunity",
        item_id=po_id,
        principal=principal,
        update=OpportunityReview.update_progress,
        arg=UpdateProgress(actor=principal, progress=body),
        view=OpportunityView,
        closed=CLOSED,
    )


@router.get("/{po_id}/history", response_model=History)
async def opportunity_history(po_id: str, principal: CurrentUser, sessions: SessionsDep) -> Any:
    """R-X-3: every action on the PO, oldest first."""
    await load_opportunity(sessions, po_id, principal)
    async with sessions() as session:
        return await read_history(session, po_id)


async def read_history(session: Any, subject_id: str) -> History:
    rows = (
        await session.exec(
            select(AuditEvent)
            .where(AuditEvent.subject_id == subject_id)
            .order_by(col(AuditEvent.version), col(AuditEvent.position))
        )
    ).all()
    return History(
        id=subject_id,
        items=[
            AuditEntryPublic(
                at=as_utc(r.at),
                actor=r.actor,
                action=r.action,
                comment=r.comment,
                task_id=r.task_id,
                details=r.details,
            )
            for r in rows
        ],
    )
