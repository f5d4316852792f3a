"""Association invitations (R-INV-1 … R-INV-5): invite, read, accept, revoke, history.

Eligibility is checked here, read-only, before an invitation starts (R-INV-2), so a refused one
never becomes a process; the workflow checks again at acceptance (R-INV-5), atomically with the
association (see `workflows.invitation`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from api import access
from api.auth import CurrentUser, require_partner_admin
from api.claims import claim_or_refuse
from api.deps import Processes, SessionsDep
from api.errors import ApiError
from api.frame import command_router
from api.processes import load_process
from api.routes.opportunities import History, read_history
from domain.invitations import (
    AcceptInvitation,
    AssociationInvitationInput,
    InvitationCreate,
    InvitationView,
    Refusal,
    RevokeInvitation,
    association_refusal,
    invitation_not_pending,
)
from domain.principal import Principal, Role
from store.accounts import account_facts
from store.models import Partner, ProcessRow
from workflows.invitation import AssociationInvitation

router = command_router(prefix="/v1/invitations", tags=["invitations"])
Sessions = async_sessionmaker[AsyncSession]


class RevokeBody(BaseModel):
    """R-INV-4: an optional reason, nothing else (an unknown field is 422)."""

    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(default=None, max_length=2000)


# --- shared by the invitation, customer and reseller routes ------------------------------------


def refused(refusal: Refusal) -> ApiError:
    return ApiError(refusal.code, refusal.message, refusal.details or None)


async def registered_partner(sessions: Sessions, partner_id: str) -> Partner:
    async with sessions() as session:
        partner = await session.get(Partner, partner_id)
    if partner is None:
        raise ApiError("PF.PARTNER_NOT_REGISTERED", f"partner {partner_id} is not registered")
    return partner


async def process_row(sessions: Sessions, process: str, item_id: str, noun: str) -> ProcessRow:
    return await load_process(sessions, process=process, item_id=item_id, noun=noun)


def now() -> datetime:
    return datetime.now(UTC)


# --- routes -------------------------------------------------------------------------------------


async def load_invitation(sessions: Sessions, inv_id: str, principal: Principal) -> ProcessRow:
    row = await process_row(sessions, "invitation", inv_id, "invitation")
    return access.check_may_see(principal, row, "invitation")


@router.post("", status_code=201, response_model=InvitationView)
async def invite_account(
    body: InvitationCreate, principal: CurrentUser, processes: Processes
) -> InvitationView:
    """R-INV-1: a partner admin invites a personal account; R-INV-2 eligibility is checked
    before anything starts. The account has `invite_ttl` (P7D) to accept (R-INV-3). One pending
    invitation per partner and account (409 PF.INVITATION_PENDING)."""
    partner_id = require_partner_admin(principal)
    sessions = processes.sessions
    await registered_partner(sessions, partner_id)
    inv_id = await processes.new_id("inv")
    async with sessions() as session:
        facts = await account_facts(session, body.account_id)
    refusal = association_refusal(
        facts,
        account_id=body.account_id,
        partner_id=partner_id,
        rules="invitation",
        same_partner_is_refused=True,
    )
    if refusal is not None:
        raise refused(refusal)
    assert facts is not None
    # One pending invitation per partner and account; after expiry or revocation the
    # partner may invite again (a new invitation, R-INV-3 / R-INV-4).
    await claim_or_refuse(
        processes,
        scope="inv-pending",
        key=f"{partner_id}|{body.account_id}",
        owner_id=inv_id,
        error_code="PF.INVITATION_PENDING",
        message=f"partner {partner_id} already has a pending invitation to {body.account_id}",
    )
    return await processes.start(
        AssociationInvitation.run,
        AssociationInvitationInput(
            invitation_id=inv_id,
            partner_id=partner_id,
            invited_by=principal.sub,
            account_id=body.account_id,
            account_email=facts.email,
            message=body.message,
            policy=processes.settings.policy,
        ),
        workflow_id=inv_id,
        process="invitation",
        partner_id=partner_id,
        summary=f"invitation of account {body.account_id} by {partner_id}",
        view=InvitationView,
    )


@router.get("/{inv_id}", response_model=InvitationView)
async def get_invitation(inv_id: str, principal: CurrentUser, sessions: SessionsDep) -> Any:
    row = await load_invitation(sessions, inv_id, principal)
    return row.view


@router.post("/{inv_id}/accept", response_model=InvitationView)
async def accept_invitation(
    inv_id: str, principal: CurrentUser, processes: Processes
) -> InvitationView:
    """R-INV-3 / R-INV-5: the invited account accepts within the TTL, if still eligible."""
    row = await process_row(processes.sessions, "invitation", inv_id, "invitation")
    view = InvitationView.model_validate(row.view)
    if not principal.has(Role.account) or principal.sub != view.account_id:
        raise ApiError("PF.NOT_INVITEE", "only the invited account may accept this invitation")
    refusal = invitation_not_pending(inv_id, view.status, view.expires_at, now())
    if refusal is not None:
        raise refused(refusal)
    return await processes.update(
        inv_id,
        AssociationInvitation.accept,
        AcceptInvitation(actor=principal),
        view=InvitationView,
        what=f"accepting invitation {inv_id}",
    )


@router.post("/{inv_id}/revoke", response_model=InvitationView)
async def revoke_invitation(
    inv_id: str, body: RevokeBody, principal: CurrentUser, processes: Processes
) -> InvitationView:
    """R-INV-4: the inviting partner's admin withdraws a pending invitation. The body is
    optional."""
    row = await load_invitation(processes.sessions, inv_id, principal)
    view = InvitationView.model_validate(row.view)
    if principal.partner_id != view.partner_id or not principal.has(Role.partner_admin):
        raise ApiError("PF.NOT_OWNER", "only an admin of the inviting partner may revoke (R-INV-4)")
    refusal = invitation_not_pending(inv_id, view.status, view.expires_at, now())
    if refusal is not None:
        raise refused(refusal)
    return await processes.update(
        inv_id,
        AssociationInvitation.revoke,
        RevokeInvitation(actor=principal, reason=body.reason),
        view=InvitationView,
        what=f"revoking invitation {inv_id}",
    )


@router.get("/{inv_id}/history", response_model=History)
async def invitation_history(inv_id: str, principal: CurrentUser, sessions: SessionsDep) -> Any:
    """R-X-3: every action on the invitation, oldest first."""
    await load_invitation(sessions, inv_id, principal)
    async with sessions() as session:
        return await read_history(session, inv_id)
