"""Capability and solution certification shapes, task kinds and calendar: R-CERT-1 … R-CERT-9.

Calendar (R-CERT-5, R-CERT-6, R-CERT-8): a pass on day D is valid until D + `cert_validity`
in calendar months (31 Jan + P1M is the end of February, 29 Feb + P12M is 28 Feb); the
recertification window opens `recert_window` before that and stays open after expiry;
reminders go `cert_reminders` before expiry, those already past at the pass are skipped.
Pure code: safe to import from workflows.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from domain.policy import Policy, add_duration, subtract_duration
from domain.principal import Role
from domain.tasks import CarriedProcess, Command, OutcomeSpec, TaskKind
from domain.values import UtcDateTime, url_credentials_refusal

SUBJECT_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
Subject = Annotated[str, StringConstraints(pattern=SUBJECT_PATTERN)]
Title = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Code = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
Text = Annotated[str, StringConstraints(strip_whitespace=True, max_length=4000)]
Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=4000)]


class CertificationKind(StrEnum):
    """R-CERT-1."""

    cloud_software = "cloud_software"
    advanced_cloud_software = "advanced_cloud_software"
    capability_label = "capability_label"  # level 1 or 2, service partners only


class CertificationStatus(StrEnum):
    submitted = "submitted"
    in_review = "in_review"
    defense_requested = "defense_requested"
    defense_scheduled = "defense_scheduled"
    # R-CERT-3: the expert asked the partner a question; the review waits for the answer
    clarification_requested = "clarification_requested"
    passed = "passed"
    failed = "failed"
    window_open = "window_open"
    recertifying = "recertifying"
    expired = "expired"


# The partner kind a certification kind is for, where R-CERT-1 names one.
ELIGIBLE_PARTNER_KIND: dict[CertificationKind, str] = {
    CertificationKind.capability_label: "service"
}


def certification_id(partner_id: str, subject: str) -> str:
    return f"cert-{partner_id}-{subject}"


def certification_match_key(partner_id: str, subject: str) -> str:
    return f"{partner_id}|{subject}"


# --- what the partner sends -------------------------------------------------------------------


class Evidence(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: Title
    url: str | None = Field(default=None, max_length=2000)
    description: Text | None = None


def _evidence_without_credentials(evidence: list[Evidence]) -> list[Evidence]:
    """Refuse (ValueError, 422) an evidence URL carrying credentials (`user:pass@host`)."""
    for index, item in enumerate(evidence):
        why = url_credentials_refusal(item.url) if item.url else None
        if why is not None:
            raise ValueError(f"evidence[{index}].url: {why}")
    return evidence


class CertificationFields(BaseModel):
    """A certification request (R-CERT-1, R-CERT-2) as its workflow keeps it (input, history):
    tolerant (unknown fields ignored, no new checks), so histories recorded under older rules
    still decode. What a partner may send is `CertificationCreate`."""

    model_config = ConfigDict(extra="ignore")

    kind: CertificationKind
    subject: Subject
    level: Literal[1, 2] | None = None
    evidence: list[Evidence] = Field(min_length=1, max_length=50)

    @model_validator(mode="after")
    def _level_is_for_labels(self) -> Self:
        if self.kind is CertificationKind.capability_label and self.level is None:
            raise ValueError("a capability label needs its level: 1 or 2")
        if self.kind is not CertificationKind.capability_label and self.level is not None:
            raise ValueError("level is only for capability labels")
        return self


class CertificationCreate(CertificationFields):
    """What a partner may send (R-CERT-1, R-CERT-2). An unknown field (status, partner_id, a
    typo) is refused with 422 naming it; so is an evidence URL carrying credentials."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "kind": "capability_label",
                    "subject": "container-migration",
                    "level": 2,
                    "evidence": [
                        {
                            "title": "Three delivered container migrations",
                            "url": "https://files.example/acme/cases.pdf",
                        }
                    ],
                }
            ]
        },
    )

    check_evidence_urls = field_validator("evidence")(_evidence_without_credentials)


class RecertificationCreate(BaseModel):
    """A new attempt: fresh evidence for the expert (R-CERT-6)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "evidence": [
                        {"title": "2026 delivery cases", "url": "https://files.example/c"}
                    ],
                    "comment": "Two new engineers certified this year.",
                }
            ]
        },
    )

    evidence: list[Evidence] = Field(min_length=1, max_length=50)
    comment: Text | None = None

    check_evidence_urls = field_validator("evidence")(_evidence_without_credentials)


class DefenseRequestCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"reason": "Item arch-2 overlooked the DR drill report we attached."}]
        },
    )

    reason: Reason


class ClarificationAnswerCreate(BaseModel):
    """R-CERT-3: the partner's answer to the expert's question (POST .../clarification)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"answer": "The DR drill report is attachment 3."}]},
    )

    answer: Reason


# --- Update commands ----------------------------------------------------------------------------


class RequestDefense(Command):
    reason: Reason


class AnswerClarification(Command):
    answer: Reason


class Recertify(Command):
    evidence: list[Evidence] = Field(min_length=1, max_length=50)
    comment: Text | None = None


# --- task kinds and their data ------------------------------------------------------------------


class AssessmentItem(BaseModel):
    """R-CERT-2: one assessment item, pass or fail; a fail carries an improvement note."""

    model_config = ConfigDict(extra="forbid")

    item_id: Code
    mandatory: bool
    passed: bool
    note: Text | None = None


class ReviewDecision(BaseModel):
    """`cert.review` / `decide`: data.items."""

    model_config = ConfigDict(extra="forbid")

    items: list[AssessmentItem] = Field(min_length=1, max_length=200)

    @model_validator(mode="after")
    def _one_result_per_item(self) -> Self:
        ids = [item.item_id for item in self.items]
        if len(set(ids)) != len(ids):
            raise ValueError("each item_id may appear once")
        return self

    @property
    def failed_without_note(self) -> list[str]:
        return [i.item_id for i in self.items if not i.passed and not i.note]

    @property
    def passed(self) -> bool:
        """R-CERT-2: passed only if every mandatory item passes."""
        return all(i.passed for i in self.items if i.mandatory)


class DefenseSchedule(BaseModel):
    """`cert.defense` / `schedule`: when (and where) the online defense takes place."""

    model_config = ConfigDict(extra="forbid")

    scheduled_at: AwareDatetime
    meeting: Text | None = None


class DefenseHeld(BaseModel):
    """`cert.defense` / `held`: the defense took place (at `held_at`, default now)."""

    model_config = ConfigDict(extra="forbid")

    held_at: AwareDatetime | None = None


CERT_REVIEW = TaskKind(
    name="cert.review",
    outcomes={
        "decide": OutcomeSpec(data_model=ReviewDecision),
        # R-CERT-3: a question to the partner instead of a decision; the comment is the question
        "clarify": OutcomeSpec(comment_required=True),
    },
    reassign_roles=frozenset({Role.cert_ops, Role.ops_admin}),
)
CERT_DEFENSE = TaskKind(
    name="cert.defense",
    outcomes={
        # keeps the task open: operations still have to hold it
        "schedule": OutcomeSpec(data_model=DefenseSchedule),
        "held": OutcomeSpec(data_model=DefenseHeld),
    },
    reassign_roles=frozenset({Role.cert_ops, Role.ops_admin}),
)
CERT_TASK_KINDS = {kind.name: kind for kind in (CERT_REVIEW, CERT_DEFENSE)}


# --- state ----------------------------------------------------------------------------------------


class Period(BaseModel):
    """One validity: from a (re)certification pass to `valid_until`, exclusive."""

    passed_at: UtcDateTime
    valid_until: UtcDateTime

    def covers(self, at: datetime) -> bool:
        return self.passed_at <= at < self.valid_until


NoticeKind = Literal["window_opens", "reminder", "expiry"]


class Notice(BaseModel):
    """A moment of the certificate's calendar the workflow acts on (R-CERT-6/7/8)."""

    kind: NoticeKind
    at: UtcDateTime
    state: Literal["scheduled", "sent", "skipped"] = "scheduled"


class Defense(BaseModel):
    requested_by: str
    requested_at: UtcDateTime
    reason: str
    # R-CERT-3: set when the partner's PDM or certification operations asked for the partner
    on_behalf_of: str | None = None
    scheduled_at: UtcDateTime | None = None
    meeting: str | None = None
    held_at: UtcDateTime | None = None
    held_by: str | None = None
    minutes: str | None = None


class Clarification(BaseModel):
    """R-CERT-3: an expert's question (the `clarify` outcome's comment) and the partner's
    answer; the review returns to `asked_by` with both in the attempt's history."""

    question: str
    asked_by: str
    asked_at: UtcDateTime
    task_id: str
    answer: str | None = None
    answered_by: str | None = None
    answered_at: UtcDateTime | None = None


class ReviewResult(BaseModel):
    attempt: int
    outcome: Literal["pass", "fail"]
    decided_by: str
    decided_at: UtcDateTime
    comment: str | None = None
    items: list[AssessmentItem]


class Attempt(BaseModel):
    """One submission to the experts: the first, a retry after a failure, a recertification."""

    number: int
    kind: Literal["certification", "recertification"]
    submitted_by: str
    submitted_at: UtcDateTime
    evidence: list[Evidence]
    comment: str | None = None
    defense: Defense | None = None
    clarifications: list[Clarification] = Field(default_factory=list)  # R-CERT-3

    @property
    def pending_clarification(self) -> Clarification | None:
        last = self.clarifications[-1] if self.clarifications else None
        return last if last is not None and last.answer is None else None


class CertificationCarried(CarriedProcess):
    """Everything a yearly cycle hands to the next run (continue-as-new)."""

    submitted_by: str
    attempt: Attempt
    result: ReviewResult | None = None
    periods: list[Period] = Field(default_factory=list)
    notices: list[Notice] = Field(default_factory=list)


class CertificationInput(BaseModel):
    partner_id: str
    submitted_by: str
    certification: CertificationFields
    policy: Policy
    carried: CertificationCarried | None = None


class CertificationView(BaseModel):
    """What the portal sees (CertificationPublic), and what the read model archives."""

    id: str
    partner_id: str
    kind: CertificationKind
    subject: str
    level: int | None
    status: CertificationStatus
    passed_at: UtcDateTime | None = None  # the latest pass: validity runs from it
    valid_until: UtcDateTime | None = None
    window_opens_at: UtcDateTime | None = None
    items: list[AssessmentItem] = Field(default_factory=list)
    result: ReviewResult | None = None
    attempt: Attempt
    defense_until: UtcDateTime | None = None
    periods: list[Period] = Field(default_factory=list)
    notices: list[Notice] = Field(default_factory=list)
    open_task_id: str | None = None
    submitted_by: str
    created_at: UtcDateTime
    updated_at: UtcDateTime

    def certified_at(self, at: datetime) -> bool:
        return any(p.covers(at) for p in self.periods)


# --- calendar ----------------------------------------------------------------------------------


def valid_until(passed_at: datetime, cert_validity: str) -> datetime:
    """R-CERT-5: the pass date plus the validity in calendar months (31 Jan + P1M = 28/29 Feb)."""
    return add_duration(passed_at, cert_validity)


def recertification_window_opens(until: datetime, recert_window: str) -> datetime:
    """R-CERT-6: recertification is accepted from this moment on, also after expiry."""
    return subtract_duration(until, recert_window)


def defense_until(failed_at: datetime, defense_period: str) -> datetime:
    """R-CERT-3 (our choice): a defense may be requested this long after a failed review."""
    return add_duration(failed_at, defense_period)


def plan_cycle(passed_at: datetime, policy: Policy) -> tuple[Period, list[Notice]]:
    """The validity a pass gives and the moments of its calendar, in order: the window opening,
    the reminders (R-CERT-8) and the expiry. Those already past at the pass are skipped."""
    period = Period(passed_at=passed_at, valid_until=valid_until(passed_at, policy.cert_validity))
    moments: list[tuple[NoticeKind, datetime]] = [
        ("window_opens", recertification_window_opens(period.valid_until, policy.recert_window)),
        *(("reminder", subtract_duration(period.valid_until, d)) for d in policy.cert_reminders),
        ("expiry", period.valid_until),
    ]
    notices = [
        Notice(kind=kind, at=at, state="scheduled" if at > passed_at else "skipped")
        for kind, at in moments
    ]
    notices.sort(key=lambda n: n.at)
    return period, notices
