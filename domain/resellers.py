"""Reseller cooperation applications (R-RES-1): a reseller applies to a distributor, whose users
review it one by one or in a batch (`POST /v1/tasks/bulk-complete`)."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from domain.invitations import Ref, Text
from domain.principal import Role
from domain.tasks import OutcomeSpec, TaskKind
from domain.values import UtcDateTime

RESELLER_KIND = "reseller"
DISTRIBUTOR_KIND = "distributor"


class ApplicationStatus(StrEnum):
    in_review = "in_review"
    approved = "approved"
    rejected = "rejected"


# An application in review or approved holds the (reseller, distributor) pair: a second one is
# refused; after a rejection the reseller may apply again.
LIVE_STATUSES = frozenset({ApplicationStatus.in_review, ApplicationStatus.approved})

RES_REVIEW = TaskKind(
    name="res.review",
    outcomes={
        "approve": OutcomeSpec(),
        "reject": OutcomeSpec(comment_required=True),
    },
    reassign_roles=frozenset({Role.ops_admin}),
)
RES_TASK_KINDS = {RES_REVIEW.name: RES_REVIEW}


class ResellerApplicationFields(BaseModel):
    """A cooperation application (R-RES-1) as its workflow keeps it (input, history): tolerant
    (unknown fields ignored), so histories recorded under older rules still decode. What a
    reseller may send is `ResellerApplicationCreate`."""

    model_config = ConfigDict(extra="ignore")

    distributor_id: Ref
    message: Text | None = None


class ResellerApplicationCreate(ResellerApplicationFields):
    """What a reseller may send (R-RES-1): the distributor and a message; an unknown field is
    refused with 422 naming it."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "distributor_id": "p-bright",
                    "message": "We resell ECS and RDS in Zhejiang; 40 active customers.",
                }
            ]
        },
    )


class ApplicationDecision(BaseModel):
    outcome: str
    by: str
    at: UtcDateTime
    comment: str | None = None


class ResellerApplicationView(BaseModel):
    id: str
    partner_id: str  # the reseller
    distributor_id: str
    status: ApplicationStatus
    message: str | None
    decision: ApplicationDecision | None = None
    open_task_id: str | None = None
    submitted_by: str
    created_at: UtcDateTime
    updated_at: UtcDateTime


class ResellerApplicationInput(BaseModel):
    application_id: str
    reseller_id: str
    reseller_name: str
    submitted_by: str
    distributor_id: str
    distributor_contact: str
    application: ResellerApplicationFields


def claim_key(reseller_id: str, distributor_id: str) -> str:
    return f"{reseller_id}|{distributor_id}"
