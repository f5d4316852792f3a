"""Partner opportunity (PO) shapes and pure rules: R-PO-1, R-PO-4, R-PO-7, R-PO-10, R-PO-11."""

from __future__ import annotations

import re
import unicodedata
from datetime import date
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from domain.policy import Policy
from domain.principal import Role
from domain.tasks import Command, NamesPerson, OutcomeSpec, TaskKind
from domain.values import CalendarDate, Money, NotPastDate, PositiveMoney, UtcDateTime

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Code = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
# R-PO-1: CNY, > 0, two decimals. Strings in JSON; floats never reach a calculation.
Amount = PositiveMoney


class OpportunityStatus(StrEnum):
    submitted = "submitted"
    dispatching = "dispatching"
    in_review = "in_review"
    returned = "returned"
    approved = "approved"
    rejected = "rejected"
    cancelled = "cancelled"
    won = "won"
    lost = "lost"
    delivered = "delivered"


FINAL_STATUSES = frozenset(
    {
        OpportunityStatus.rejected,
        OpportunityStatus.cancelled,
        OpportunityStatus.lost,
        OpportunityStatus.delivered,
    }
)
UNDECIDED_STATUSES = frozenset(
    {
        OpportunityStatus.submitted,
        OpportunityStatus.dispatching,
        OpportunityStatus.in_review,
        OpportunityStatus.returned,
    }
)
# R-PO-11: an approved PO moves on; delivered makes it eligible for an incentive (R-INC-1).
STAGE_MOVES: dict[OpportunityStatus, frozenset[OpportunityStatus]] = {
    OpportunityStatus.approved: frozenset({OpportunityStatus.won, OpportunityStatus.lost}),
    OpportunityStatus.won: frozenset({OpportunityStatus.delivered, OpportunityStatus.lost}),
}


class OpportunityFields(BaseModel):
    """A PO's fields (R-PO-1) as its workflow keeps them: in its input, its resubmissions and its
    history. Tolerant on purpose (unknown fields ignored, no check that depends on the clock), so
    a history recorded before a field was dropped or a rule tightened still decodes. What a
    partner may SEND is `OpportunityCreate`."""

    model_config = ConfigDict(extra="ignore")

    customer_name: Name
    project_name: Name
    offerings: list[Code] = Field(default_factory=list, max_length=50)
    amount: Amount
    region: Code | None = None
    industry: Code | None = None
    expected_close_date: date


class OpportunityCreate(OpportunityFields):
    """What a partner may send (R-PO-1), at submission and resubmission. An unknown field (a
    typo such as `amout`, or `status`, `partner_id`) is refused with 422 naming it.

    `expected_close_date` is a day (`YYYY-MM-DD`; a time or a number is refused) that is not
    over yet: a PO expected to close yesterday is a data-entry error when it is submitted or
    resubmitted for review (a returned PO whose date has passed meanwhile must be corrected).
    "Yesterday" is judged for the caller's benefit: a day still current anywhere on Earth
    (`domain.values.earliest_today`) is accepted, so no time zone sees today refused."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "customer_name": "Hangzhou Lakeside Logistics",
                    "project_name": "Warehouse data platform",
                    "offerings": ["ecs", "rds"],
                    "amount": "1250000.00",
                    "region": "east-china",
                    "industry": "logistics",
                    "expected_close_date": "2027-03-31",
                }
            ]
        },
    )

    expected_close_date: NotPastDate


class OpportunityProgressFields(BaseModel):
    """A progress update (R-PO-9, R-PO-11) as the workflow keeps it (tolerant, as
    `OpportunityFields`). What a partner may send is `OpportunityProgress`."""

    model_config = ConfigDict(extra="ignore")

    stage: Literal["won", "lost", "delivered"] | None = None
    customer_name: Name | None = None
    project_name: Name | None = None
    offerings: list[Code] | None = Field(default=None, max_length=50)
    amount: Amount | None = None
    expected_close_date: date | None = None


class OpportunityProgress(OpportunityProgressFields):
    """PATCH body (R-PO-9, R-PO-11): stage and the editable fields, all optional (at least one
    must be sent); an unknown field is refused with 422.

    `expected_close_date` is a day (`YYYY-MM-DD`). It may be in the past when the PATCH records
    a stage (won, lost, delivered: the date says when the deal actually closed, which is often
    entered late) or the PO is already won (its deal is closed; correcting the date corrects
    history). On an approved PO still open, a past date is a data-entry error (422), judged as at
    submission (`domain.values.earliest_today`). The route applies this
    (`progress_close_date_refusal`): it needs the PO's status."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"stage": "won", "amount": "1300000.00"}]},
    )

    expected_close_date: CalendarDate | None = None


def progress_close_date_refusal(
    progress: OpportunityProgressFields, *, status: str, today: date
) -> str | None:
    """Why a PATCH's `expected_close_date` is refused (see `OpportunityProgress`), or None."""
    day = progress.expected_close_date
    if day is None or day >= today:
        return None
    if progress.stage is not None or status == OpportunityStatus.won:
        return None
    return (
        f"{day.isoformat()} is in the past; an open opportunity's expected close date is still "
        "ahead (send a stage to record when it closed)"
    )


# R-PO-10: what the PDM checked, criterion -> pass (true) or fail (false). Which criteria is
# policy (`po_review_criteria`); `criteria_refusal` holds a decision to exactly that list.
Criteria = dict[Code, bool]


class ReviewData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    criteria: Criteria = Field(max_length=20)


class OptionalReviewData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    criteria: Criteria | None = Field(default=None, max_length=20)


def criteria_refusal(criteria: Criteria | None, configured: list[str]) -> dict[str, Any] | None:
    """R-PO-10: None when `criteria` names each configured criterion, pass or fail, and nothing
    else; otherwise the details of PF.INVALID_DATA (`missing`, `unknown`, `required`)."""
    given = set(criteria or {})
    missing = [c for c in configured if c not in given]
    unknown = sorted(given - set(configured))
    if not missing and not unknown:
        return None
    return {"missing": missing, "unknown": unknown, "required": list(configured)}


class DispatchData(BaseModel):
    """R-PO-3: the dispatcher names the PDM, and the PSM (else the policy's `unmatched_psm`).
    Both must be people the routing table knows in that role (the PSM may also be the policy's
    `unmatched_psm`): 422 PF.PERSON_UNKNOWN; the PDM, who will hold the review, is never the
    PO's submitter (R-X-5, 422 PF.ASSIGNEE_NOT_ELIGIBLE)."""

    model_config = ConfigDict(extra="forbid")

    pdm: Annotated[Code, NamesPerson("pdm")]
    psm: Annotated[Code | None, NamesPerson("psm", holds_task=False)] = None


PO_DISPATCH = TaskKind(
    name="po.dispatch",
    outcomes={"dispatch": OutcomeSpec(data_model=DispatchData)},
    reassign_roles=frozenset({Role.dispatcher, Role.ops_admin}),
)
PO_REVIEW = TaskKind(
    name="po.review",
    outcomes={
        "approve": OutcomeSpec(data_model=ReviewData),
        "reject": OutcomeSpec(comment_required=True, data_model=OptionalReviewData),
        "return": OutcomeSpec(comment_required=True, data_model=OptionalReviewData),
    },
    reassign_roles=frozenset({Role.dispatcher, Role.ops_admin}),
    holder_directory="pdm",  # R-PO-2: reviewed by a PDM the routing table names
)
PO_TASK_KINDS = {kind.name: kind for kind in (PO_DISPATCH, PO_REVIEW)}


class Decision(BaseModel):
    outcome: str
    by: str
    at: UtcDateTime
    comment: str | None = None
    criteria: Criteria | None = None


class OpportunityView(BaseModel):
    """What the portal sees (OpportunityPublic)."""

    id: str
    partner_id: str
    status: OpportunityStatus
    customer_name: str
    project_name: str
    offerings: list[str]
    amount: Money
    region: str | None
    industry: str | None
    expected_close_date: date
    assignee: str | None = None
    psm: str | None = None
    duplicate_of: str | None = None
    offering_unmatched: bool = False
    decision: Decision | None = None
    open_task_id: str | None = None
    submitted_by: str
    created_at: UtcDateTime
    updated_at: UtcDateTime


class OpportunityReviewInput(BaseModel):
    po_id: str
    partner_id: str
    submitted_by: str
    opportunity: OpportunityFields
    policy: Policy


class CancelOpportunity(Command):
    reason: str | None = Field(default=None, max_length=4000)


class ResubmitOpportunity(Command):
    opportunity: OpportunityFields
    comment: str | None = Field(default=None, max_length=4000)


class UpdateProgress(Command):
    progress: OpportunityProgressFields


class RouteRequest(BaseModel):
    partner_id: str
    region: str | None
    industry: str | None
    offerings: list[str]


class RouteResult(BaseModel):
    pdm: str | None
    psm: str | None
    offering_unmatched: bool


class DuplicateQuery(BaseModel):
    po_id: str
    partner_id: str
    match_key: str
    approved_only: bool = False


_NOISE = re.compile(r"[\s\W_]+", re.UNICODE)
_WORDS = re.compile(r"\w+", re.UNICODE)
# R-PO-4: legal forms that do not tell two customers apart, casefolded. Latin ones are whole
# words at the end of the name ("Acme Co., Ltd." = "ACME"); Chinese ones are suffixes of the
# name with spaces and punctuation removed (longest first).
LEGAL_FORM_WORDS = frozenset(
    {
        "co", "ltd", "limited", "company", "inc", "incorporated", "corp", "corporation",
        "llc", "llp", "lp", "plc", "gmbh", "ag", "kg", "sa", "sarl", "srl", "spa", "bv",
        "nv", "pte", "pty", "oy", "ab", "kk", "group", "holdings",
    }
)  # fmt: skip
LEGAL_FORM_SUFFIXES = (
    "股份有限公司",
    "有限责任公司",
    "有限公司",
    "控股",
    "集团",
    "公司",
)


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def customer_key(customer_name: str) -> str:
    """A customer as R-PO-4 compares them: width (NFKC), case, spacing and punctuation folded,
    and trailing legal forms dropped (有限公司, 股份有限公司, 集团, Co., Ltd., Inc., GmbH, …).
    A name that is nothing but a legal form keeps it (never an empty key)."""
    words = _WORDS.findall(_fold(customer_name).replace("_", " "))
    while len(words) > 1 and words[-1] in LEGAL_FORM_WORDS:
        words.pop()
    compact = "".join(words)
    stripped = True
    while stripped:
        stripped = False
        for suffix in LEGAL_FORM_SUFFIXES:
            if compact.endswith(suffix) and len(compact) > len(suffix):
                compact = compact[: -len(suffix)]
                stripped = True
                break
    return compact


def match_key(customer_name: str, project_name: str) -> str:
    """R-PO-4's normalised (customer, project) `"<customer>|<project>"`: the customer by
    `customer_key`, the project with width, case, spaces and punctuation folded."""
    return f"{customer_key(customer_name)}|{_NOISE.sub('', _fold(project_name))}"


def claim_key(partner_id: str, key: str) -> str:
    """R-PO-4's `po-open` claim key for a PO of `partner_id` under `match_key` `key`: one open
    PO per partner and normalised (customer, project)."""
    return f"{partner_id}|{key}"


def jsonable(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")
