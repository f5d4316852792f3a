"""Association invitations, customer invitations and dissociations: shapes and pure rules.

R-INV-1 … R-INV-6. An account is associated with at most one partner at a time; that one fact
lives in `accounts.associated_partner_id`, set by an accepted invitation (R-INV-1) or a customer's
registration through a partner's link (R-INV-6) and cleared by an accepted dissociation (R-INV-6).
The eligibility rules here are pure, so the API (at send, R-INV-2) and the association activity
(at acceptance, R-INV-5) apply the same ones.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, NoReturn

from pydantic import BaseModel, ConfigDict, EmailStr, Field, StringConstraints

from domain.errors import refuse
from domain.policy import Policy
from domain.tasks import Command
from domain.values import UtcDateTime, utc_iso

Ref = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"),
]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]

CHINA_SITE = "china"


class Refusal(BaseModel):
    """A business refusal as data, so a route (ApiError) and a workflow (ApplicationError) can
    each raise it in their own way."""

    code: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)

    def raise_in_workflow(self) -> NoReturn:
        refuse(self.code, self.message, **self.details)


# --- eligibility (R-INV-2, R-INV-5) ----------------------------------------------------------


class AccountFacts(BaseModel):
    """What the rules need to know about a personal account (reference data)."""

    id: str
    enterprise_verified: bool
    real_name_verified: bool
    site: str
    associated_partner_id: str | None
    email: str | None = None


AssociationRules = Literal["invitation", "customer"]


def association_refusal(
    account: AccountFacts | None,
    *,
    account_id: str,
    partner_id: str,
    rules: AssociationRules,
    same_partner_is_refused: bool,
) -> Refusal | None:
    """Why `account` may not be associated with `partner_id`, or None if it may.

    `invitation`: R-INV-2 in full: not enterprise-verified, not associated with another partner,
    real-name verified on the China site. `customer` (R-INV-6 registration): only the one
    association per account. `same_partner_is_refused`: at send time an account already
    associated with this partner is refused; at acceptance that is the goal already reached.
    """
    if account is None:
        return Refusal(
            code="PF.ACCOUNT_NOT_FOUND",
            message=f"there is no account {account_id}",
            details={"account_id": account_id},
        )
    if rules == "invitation" and account.enterprise_verified:
        return Refusal(
            code="PF.ACCOUNT_ENTERPRISE_VERIFIED",
            message=f"account {account_id} is verified as an enterprise; only personal accounts "
            "can be invited (R-INV-2)",
            details={"account_id": account_id},
        )
    if account.associated_partner_id not in (None, partner_id):
        return Refusal(
            code="PF.ACCOUNT_ASSOCIATED_ELSEWHERE",
            message=f"account {account_id} is already associated with another partner",
            details={"account_id": account_id},
        )
    if rules == "invitation" and account.site == CHINA_SITE and not account.real_name_verified:
        return Refusal(
            code="PF.ACCOUNT_NOT_REAL_NAME_VERIFIED",
            message=f"account {account_id} on the China site has no real-name verification "
            "(R-INV-2)",
            details={"account_id": account_id},
        )
    if same_partner_is_refused and account.associated_partner_id == partner_id:
        return Refusal(
            code="PF.ACCOUNT_ALREADY_ASSOCIATED",
            message=f"account {account_id} is already associated with partner {partner_id}",
            details={"account_id": account_id},
        )
    return None


class AssociationRequest(BaseModel):
    """The association activity's input: associate `account_id` with `partner_id`, atomically."""

    account_id: str
    partner_id: str
    rules: AssociationRules
    process_id: str


class AssociationResult(BaseModel):
    account: AccountFacts
    newly_associated: bool  # False: it already was (a retried activity, or another path)


class DissociationRequest(BaseModel):
    account_id: str
    partner_id: str
    process_id: str


class DissociationResult(BaseModel):
    was_associated: bool


# --- association invitations (R-INV-1 … R-INV-5) ---------------------------------------------


class InvitationStatus(StrEnum):
    pending = "pending"
    accepted = "accepted"
    expired = "expired"
    revoked = "revoked"


class InvitationCreate(BaseModel):
    """R-INV-1: the personal account to invite; an unknown field is refused with 422."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"account_id": "acct-1", "message": "Join Acme's partner team"}]
        },
    )

    account_id: Ref
    message: Text | None = None


class InvitationView(BaseModel):
    id: str
    partner_id: str
    account_id: str
    status: InvitationStatus
    message: str | None
    expires_at: UtcDateTime
    invited_by: str
    accepted_at: UtcDateTime | None = None
    revoked_by: str | None = None
    revoke_reason: str | None = None
    created_at: UtcDateTime
    updated_at: UtcDateTime


class AssociationInvitationInput(BaseModel):
    invitation_id: str
    partner_id: str
    invited_by: str
    account_id: str
    account_email: str | None
    message: str | None = None
    policy: Policy


class AcceptInvitation(Command):
    pass


class RevokeInvitation(Command):
    reason: str | None = Field(default=None, max_length=2000)


_CLOSED_INVITATION = {
    InvitationStatus.accepted: ("PF.INVITATION_ACCEPTED", "has already been accepted"),
    InvitationStatus.expired: ("PF.INVITATION_EXPIRED", "has expired (R-INV-3)"),
    InvitationStatus.revoked: ("PF.INVITATION_REVOKED", "was revoked by the partner (R-INV-4)"),
}


def invitation_not_pending(
    invitation_id: str, status: InvitationStatus, expires_at: datetime, now: datetime
) -> Refusal | None:
    """Why an invitation can no longer be accepted or revoked. Expiry counts from `expires_at`
    even before the workflow's timer has fired (R-INV-3)."""
    if status is InvitationStatus.pending and now >= expires_at:
        status = InvitationStatus.expired
    if status is InvitationStatus.pending:
        return None
    code, what = _CLOSED_INVITATION[status]
    return Refusal(
        code=code,
        message=f"invitation {invitation_id} {what}",
        details={"status": status.value, "expires_at": utc_iso(expires_at)},
    )


# --- customer invitations (R-INV-6) ----------------------------------------------------------


class CustomerInvitationStatus(StrEnum):
    sent = "sent"
    registered = "registered"
    expired = "expired"


class CustomerInvitationCreate(BaseModel):
    """R-INV-6: whom to send a registration link; an unknown field is refused with 422."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "email": "it-director@lakeside.example",
                    "customer_name": "Hangzhou Lakeside Logistics",
                    "message": "Register through our link to buy cloud services with us",
                }
            ]
        },
    )

    email: EmailStr
    customer_name: (
        Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
        | None
    ) = None
    message: Text | None = None


class CustomerInvitationPublic(BaseModel):
    """A registration link as reads, lists and events show it: without its `token` (a secret:
    whoever holds it registers through the link; it is e-mailed to the customer)."""

    id: str
    partner_id: str
    email: str
    customer_name: str | None
    message: str | None
    status: CustomerInvitationStatus
    expires_at: UtcDateTime
    # The registration link is this path plus the token (e-mailed; shown once to its creator).
    registration_path: str
    customer_account_id: str | None = None
    registered_at: UtcDateTime | None = None
    invited_by: str
    created_at: UtcDateTime
    updated_at: UtcDateTime


class CustomerInvitationCreated(CustomerInvitationPublic):
    """The creator's POST answer: the link's `token`, once. An idempotent replay of that answer
    carries `token: null` (`api.idempotency` never stores a one-time secret), so the schema
    says `str | None`."""

    token: str | None = None


class CustomerInvitationView(CustomerInvitationPublic):
    """The workflow's view, with the `token`: the creator's POST answer shows it once (a replay
    of that answer does not, `api.idempotency.without_secrets`)."""

    token: str


class CustomerInvitationInput(BaseModel):
    # Plain strings: the API validated them (CustomerInvitationCreate), and the workflow sandbox
    # need not load an e-mail validator to decode its own input.
    invitation_id: str
    partner_id: str
    invited_by: str
    email: str
    customer_name: str | None = None
    message: str | None = None
    token: str
    policy: Policy


class RegisterCustomer(Command):
    """The registering customer is the actor: a personal account (role `account`)."""

    token: str = Field(min_length=1, max_length=200)


_CLOSED_LINK = {
    CustomerInvitationStatus.registered: ("PF.LINK_USED", "has already been used to register"),
    CustomerInvitationStatus.expired: ("PF.LINK_EXPIRED", "has expired"),
}


def link_not_open(
    invitation_id: str, status: CustomerInvitationStatus, expires_at: datetime, now: datetime
) -> Refusal | None:
    if status is CustomerInvitationStatus.sent and now >= expires_at:
        status = CustomerInvitationStatus.expired
    if status is CustomerInvitationStatus.sent:
        return None
    code, what = _CLOSED_LINK[status]
    return Refusal(
        code=code,
        message=f"the registration link of {invitation_id} {what}",
        details={"status": status.value, "expires_at": utc_iso(expires_at)},
    )


# --- dissociation (R-INV-6) ------------------------------------------------------------------


class DissociationStatus(StrEnum):
    requested = "requested"
    accepted = "accepted"
    declined = "declined"
    lapsed = "lapsed"  # R-INV-6: no answer within `dissociation_answer_ttl`


class DissociationCreate(BaseModel):
    """R-INV-6: the customer account to dissociate and why; an unknown field is refused (422)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"account_id": "acct-1", "reason": "The customer moved to a new region"}]
        },
    )

    account_id: Ref
    reason: Text


class DissociationView(BaseModel):
    id: str
    partner_id: str
    account_id: str
    reason: str
    status: DissociationStatus
    requested_by: str
    answered_at: UtcDateTime | None = None
    answer_comment: str | None = None
    # R-INV-6: unanswered by then (UTC), the request lapses; None for requests made before
    lapses_at: UtcDateTime | None = None
    created_at: UtcDateTime
    updated_at: UtcDateTime


class DissociationInput(BaseModel):
    dissociation_id: str
    partner_id: str
    requested_by: str
    account_id: str
    account_email: str | None
    reason: str
    # R-INV-6's `dissociation_answer_ttl`; absent from requests started before it existed
    policy: Policy | None = None


class AnswerDissociation(Command):
    decision: Literal["accept", "decline"]
    comment: str | None = Field(default=None, max_length=2000)


def dissociation_answered(dissociation_id: str, status: DissociationStatus) -> Refusal | None:
    """R-INV-6: only a request still waiting may be answered (PF.DISSOCIATION_ANSWERED, or
    PF.DISSOCIATION_LAPSED once its `dissociation_answer_ttl` has passed)."""
    if status is DissociationStatus.requested:
        return None
    if status is DissociationStatus.lapsed:
        return Refusal(
            code="PF.DISSOCIATION_LAPSED",
            message=f"dissociation {dissociation_id} lapsed unanswered; the partner may ask again",
            details={"status": status.value},
        )
    return Refusal(
        code="PF.DISSOCIATION_ANSWERED",
        message=f"dissociation {dissociation_id} was already {status.value}",
        details={"status": status.value},
    )
