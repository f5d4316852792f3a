"""Customer invitations and dissociation requests (R-INV-6).

- `POST /v1/customer-invitations`: a partner admin sends a registration link (valid
  `customer_link_ttl`); `POST /v1/customer-invitations/{id}/register` with the link's token, by
  the customer's own account, associates it with the partner.
- `POST /v1/dissociations`: a partner admin asks, with a reason, to end an account's association;
  the account answers with `/accept` or `/decline`; both sides are notified.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api import access
from api.auth import CurrentUser, require_partner_admin
from api.claims import claim_or_refuse
from api.deps import Processes, SessionsDep
from api.errors import ApiError
from api.frame import command_router
from api.processes import ProcessGateway
from api.routes.invitations import (
    Sessions,
    now,
    process_row,
    refused,
    registered_partner,
)
from api.routes.opportunities import History, read_history
from domain.invitations import (
    AnswerDissociation,
    CustomerInvitationCreate,
    CustomerInvitationCreated,
    CustomerInvitationInput,
    CustomerInvitationPublic,
    CustomerInvitationView,
    DissociationCreate,
    DissociationInput,
    DissociationView,
    RegisterCustomer,
    dissociation_answered,
    link_not_open,
)
from domain.principal import Principal, Role
from store.accounts import account_facts
from store.models import ProcessRow
from workflows.customer_invitation import CustomerInvitation
from workflows.dissociation import Dissociation

router = command_router(prefix="", tags=["customers"])


class RegistrationBody(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"token": "the token from the link"}]}
    )
    token: str = Field(min_length=1, max_length=200)


class AnswerBody(BaseModel):
    """A customer's answer to a dissociation request: an optional comment, nothing else."""

    model_config = ConfigDict(extra="forbid")
    comment: str | None = Field(default=None, max_length=2000)


# --- customer invitations -----------------------------------------------------------------------


async def load_customer_invitation(
    sessions: Sessions, cinv_id: str, principal: Principal
) -> ProcessRow:
    row = await process_row(sessions, "customer_invitation", cinv_id, "customer invitation")
    return access.check_may_see(principal, row, "customer invitation")


@router.post("/v1/customer-invitations", status_code=201, response_model=CustomerInvitationCreated)
async def invite_customer(
    body: CustomerInvitationCreate, principal: CurrentUser, processes: Processes
) -> CustomerInvitationView:
    """R-INV-6: send a customer a registration link, valid `customer_link_ttl` (P30D)."""
    partner_id = require_partner_admin(principal)
    await registered_partner(processes.sessions, partner_id)
    cinv_id = await processes.new_id("cinv")
    # Drawn here, not in the workflow: workflow randomness is replayable, a link's secret
    # must not be. A retried start joins the workflow and answers with its first token.
    token = secrets.token_urlsafe(24)
    return await processes.start(
        CustomerInvitation.run,
        CustomerInvitationInput(
            invitation_id=cinv_id,
            partner_id=partner_id,
            invited_by=principal.sub,
            email=body.email,
            customer_name=body.customer_name,
            message=body.message,
            token=token,
            policy=processes.settings.policy,
        ),
        workflow_id=cinv_id,
        process="customer_invitation",
        partner_id=partner_id,
        summary=f"customer registration link of {partner_id} for {body.email}",
        view=CustomerInvitationView,
    )


@router.get("/v1/customer-invitations/{cinv_id}", response_model=CustomerInvitationPublic)
async def get_customer_invitation(
    cinv_id: str, principal: CurrentUser, sessions: SessionsDep
) -> Any:
    row = await load_customer_invitation(sessions, cinv_id, principal)
    return row.view


@router.post("/v1/customer-invitations/{cinv_id}/register", response_model=CustomerInvitationPublic)
async def register_customer(
    cinv_id: str, body: RegistrationBody, principal: CurrentUser, processes: Processes
) -> CustomerInvitationPublic:
    """R-INV-6: the customer, signed in with their own account, registers through the link
    within its validity; the account is associated with the partner."""
    if not principal.has(Role.account):
        raise ApiError("PF.FORBIDDEN", "a customer registers with a personal account (account)")
    row = await process_row(
        processes.sessions, "customer_invitation", cinv_id, "customer invitation"
    )
    view = CustomerInvitationView.model_validate(row.view)
    # The token first: without it, a caller learns nothing about the link.
    if not hmac.compare_digest(body.token.encode(), view.token.encode()):
        raise ApiError("PF.LINK_TOKEN_INVALID", "this is not the token of this link")
    refusal = link_not_open(cinv_id, view.status, view.expires_at, now())
    if refusal is not None:
        raise refused(refusal)
    return await processes.update(
        cinv_id,
        CustomerInvitation.register,
        RegisterCustomer(actor=principal, token=body.token),
        view=CustomerInvitationView,
        what=f"registering through {cinv_id}",
    )


@router.get("/v1/customer-invitations/{cinv_id}/history", response_model=History)
async def customer_invitation_history(
    cinv_id: str, principal: CurrentUser, sessions: SessionsDep
) -> Any:
    await load_customer_invitation(sessions, cinv_id, principal)
    async with sessions() as session:
        return await read_history(session, cinv_id)


# --- dissociations ------------------------------------------------------------------------------


async def load_dissociation(sessions: Sessions, dis_id: str, principal: Principal) -> ProcessRow:
    row = await process_row(sessions, "dissociation", dis_id, "dissociation request")
    return access.check_may_see(principal, row, "dissociation request")


@router.post("/v1/dissociations", status_code=201, response_model=DissociationView)
async def request_dissociation(
    body: DissociationCreate, principal: CurrentUser, processes: Processes
) -> DissociationView:
    """R-INV-6: the partner asks, with a reason, to end an account's association with it. One
    pending request per account (409 PF.DISSOCIATION_PENDING)."""
    partner_id = require_partner_admin(principal)
    sessions = processes.sessions
    await registered_partner(sessions, partner_id)
    dis_id = await processes.new_id("dis")
    async with sessions() as session:
        facts = await account_facts(session, body.account_id)
    if facts is None:
        raise ApiError(
            "PF.ACCOUNT_NOT_FOUND",
            f"there is no account {body.account_id}",
            {"account_id": body.account_id},
        )
    if facts.associated_partner_id != partner_id:
        raise ApiError(
            "PF.ACCOUNT_NOT_ASSOCIATED",
            f"account {body.account_id} is not associated with partner {partner_id}",
            {"account_id": body.account_id},
        )
    await claim_or_refuse(
        processes,
        scope="dis-pending",
        key=f"{partner_id}|{body.account_id}",
        owner_id=dis_id,
        error_code="PF.DISSOCIATION_PENDING",
        message=f"a dissociation of {body.account_id} is already waiting for its answer",
    )
    return await processes.start(
        Dissociation.run,
        DissociationInput(
            dissociation_id=dis_id,
            partner_id=partner_id,
            requested_by=principal.sub,
            account_id=body.account_id,
            account_email=facts.email,
            reason=body.reason,
            policy=processes.settings.policy,  # R-INV-6: dissociation_answer_ttl
        ),
        workflow_id=dis_id,
        process="dissociation",
        partner_id=partner_id,
        summary=f"dissociation of account {body.account_id} from {partner_id}",
        view=DissociationView,
    )


@router.get("/v1/dissociations/{dis_id}", response_model=DissociationView)
async def get_dissociation(dis_id: str, principal: CurrentUser, sessions: SessionsDep) -> Any:
    row = await load_dissociation(sessions, dis_id, principal)
    return row.view


async def _answer(
    processes: ProcessGateway,
    *,
    dis_id: str,
    decision: Literal["accept", "decline"],
    body: AnswerBody,
    principal: Principal,
) -> DissociationView:
    row = await process_row(processes.sessions, "dissociation", dis_id, "dissociation request")
    view = DissociationView.model_validate(row.view)
    if not principal.has(Role.account) or principal.sub != view.account_id:
        raise ApiError("PF.NOT_CUSTOMER", "only the customer's own account may answer")
    refusal = dissociation_answered(dis_id, view.status)
    if refusal is not None:
        raise refused(refusal)
    return await processes.update(
        dis_id,
        Dissociation.answer,
        AnswerDissociation(actor=principal, decision=decision, comment=body.comment),
        view=DissociationView,
        what=f"answering dissociation {dis_id}",
    )


@router.post("/v1/dissociations/{dis_id}/accept", response_model=DissociationView)
async def accept_dissociation(
    dis_id: str, body: AnswerBody, principal: CurrentUser, processes: Processes
) -> DissociationView:
    """R-INV-6: the customer agrees; the association ends. The body is optional."""
    return await _answer(
        processes, dis_id=dis_id, decision="accept", body=body, principal=principal
    )


@router.post("/v1/dissociations/{dis_id}/decline", response_model=DissociationView)
async def decline_dissociation(
    dis_id: str, body: AnswerBody, principal: CurrentUser, processes: Processes
) -> DissociationView:
    """R-INV-6: the customer refuses; the association stays. The body is optional."""
    return await _answer(
        processes, dis_id=dis_id, decision="decline", body=body, principal=principal
    )


@router.get("/v1/dissociations/{dis_id}/history", response_model=History)
async def dissociation_history(dis_id: str, principal: CurrentUser, sessions: SessionsDep) -> Any:
    await load_dissociation(sessions, dis_id, principal)
    async with sessions() as session:
        return await read_history(session, dis_id)
