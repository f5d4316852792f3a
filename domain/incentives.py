"""Incentive application shapes and pure rules: R-INC-1 … R-INC-10.

From a source (a delivered opportunity, a capability label, Funding Head) to a paid incentive:
eligibility at submission (pure here, over facts the API looks up), review, payment request,
invoice list, invoice check and payout. Money is `Decimal` throughout, strings in JSON.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from domain.incentive_caps import CapDecision, CapFacts, HeldLabel, cap_for
from domain.policy import Policy
from domain.principal import Role
from domain.tasks import Command, OutcomeSpec, TaskKind
from domain.values import Money, PositiveMoney, UtcDateTime, utc_iso

# CNY, > 0, at most two decimals, sent and shown as a string ("1250.00"): floats never enter.
# (R-X-7: `domain.values`; answered with exactly two places.)
Amount = PositiveMoney
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Ref = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
# The number printed on the partner's invoice: letters, digits and dashes.
InvoiceNumber = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9-]*$"
    ),
]
CURRENCY = "CNY"


class IncentiveSource(StrEnum):
    opportunity = "opportunity"
    capability_label = "capability_label"
    funding_head = "funding_head"


class IncentiveStatus(StrEnum):
    submitted = "submitted"
    in_review = "in_review"
    returned = "returned"
    rejected = "rejected"
    pending_payment_application = "pending_payment_application"
    payment_requested = "payment_requested"
    invoice_list_issued = "invoice_list_issued"
    invoice_submitted = "invoice_submitted"
    invoice_unqualified = "invoice_unqualified"
    awaiting_payout = "awaiting_payout"
    paid = "paid"


FINAL_STATUSES = frozenset({IncentiveStatus.rejected, IncentiveStatus.paid})
# R-INC-7 / R-INC-8: the partner enters an invoice number against the list, and again after
# finance found the invoice unqualified.
INVOICE_OPEN_STATUSES = frozenset(
    {IncentiveStatus.invoice_list_issued, IncentiveStatus.invoice_unqualified}
)


class PayoutMethod(StrEnum):
    bank_transfer = "bank_transfer"
    cloud_account_credit = "cloud_account_credit"


# --- what a partner sends ---------------------------------------------------------------------

_SOURCE_FIELDS: dict[IncentiveSource, tuple[str, ...]] = {
    IncentiveSource.opportunity: ("opportunity_id",),
    IncentiveSource.capability_label: ("certification_id",),
    IncentiveSource.funding_head: ("person", "project"),
}


class IncentiveFields(BaseModel):
    """An application (R-INC-1) as its workflow keeps it (input, history): tolerant (unknown
    fields ignored, no new checks), so histories recorded under older rules still decode. What
    a partner may send is `IncentiveCreate`."""

    model_config = ConfigDict(extra="ignore")

    source: IncentiveSource
    opportunity_id: Ref | None = None
    certification_id: Ref | None = None
    person: Name | None = None
    project: Name | None = None
    amount: Amount

    @model_validator(mode="after")
    def _fields_match_the_source(self) -> Self:
        needed = _SOURCE_FIELDS[self.source]
        missing = [f for f in needed if getattr(self, f) is None]
        if missing:
            raise ValueError(f"a {self.source.value} application needs {', '.join(missing)}")
        foreign = [
            f
            for fields in _SOURCE_FIELDS.values()
            for f in fields
            if f not in needed and getattr(self, f) is not None
        ]
        if foreign:
            raise ValueError(
                f"{', '.join(foreign)} do not belong to a {self.source.value} application"
            )
        return self

    @property
    def source_ref(self) -> str:
        """The source's own id: the PO, the certification, or the Funding Head project."""
        value = {
            IncentiveSource.opportunity: self.opportunity_id,
            IncentiveSource.capability_label: self.certification_id,
            IncentiveSource.funding_head: self.project,
        }[self.source]
        assert value is not None
        return value


class IncentiveCreate(IncentiveFields):
    """What a partner may send (R-INC-1): its source, what identifies the source, the amount
    asked for. An unknown field (a typo, `status`) is refused with 422 naming it."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"source": "opportunity", "opportunity_id": "po-0a1b2c", "amount": "120000.00"},
                {
                    "source": "capability_label",
                    "certification_id": "cert-p-x",
                    "amount": "50000.00",
                },
                {
                    "source": "funding_head",
                    "person": "emp-20931",
                    "project": "Lakeside warehouse migration",
                    "amount": "30000.00",
                },
            ]
        },
    )


class IncentiveResubmission(BaseModel):
    """After a return (R-INC-5): the amount may change; the source may not (an unknown field,
    `source` included, is refused with 422)."""

    model_config = ConfigDict(extra="forbid")
    amount: Amount
    comment: str | None = Field(default=None, max_length=4000)


class InvoiceSubmission(BaseModel):
    """R-INC-7: the number of the invoice the partner issued; nothing else (422)."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"invoice_number": "44031234"}]}
    )
    invoice_number: InvoiceNumber


# --- tasks --------------------------------------------------------------------------------------


class ApproveData(BaseModel):
    """R-INC-5: the approved amount, which may be lower than requested, never higher."""

    model_config = ConfigDict(extra="forbid")
    amount: Amount


class PayoutData(BaseModel):
    """R-INC-9 / R-INC-10: how it was paid and the bank's or the billing system's reference."""

    model_config = ConfigDict(extra="forbid")
    method: PayoutMethod
    reference: Ref


class QualifiedData(BaseModel):
    """R-INC-8: when the paper invoice was received (ISO 8601, converted to UTC; without an
    offset it is UTC, R-X-7); not in the future, not before the invoice was submitted; omitted:
    now. It starts the payout clock (R-INC-9: `payout_due_at = received_at + payout_sla`)."""

    model_config = ConfigDict(extra="forbid")
    received_at: UtcDateTime | None = None


INC_REVIEW = TaskKind(
    name="inc.review",
    outcomes={
        "approve": OutcomeSpec(data_model=ApproveData),
        "reject": OutcomeSpec(comment_required=True),
        "return": OutcomeSpec(comment_required=True),
    },
)
INC_INVOICE_CHECK = TaskKind(
    name="inc.invoice_check",
    outcomes={
        "qualified": OutcomeSpec(data_model=QualifiedData),
        "unqualified": OutcomeSpec(comment_required=True),
    },
    reassign_roles=frozenset({Role.finance_lead, Role.ops_admin}),
)
INC_PAYOUT = TaskKind(
    name="inc.payout",
    outcomes={"paid": OutcomeSpec(data_model=PayoutData)},
    reassign_roles=frozenset({Role.finance_lead, Role.ops_admin}),
)
INC_TASK_KINDS = {kind.name: kind for kind in (INC_REVIEW, INC_INVOICE_CHECK, INC_PAYOUT)}
# R-X-5: who may act on an incentive task once it is assigned to a person (after a reassignment
# the task names a person, not a role; the person's token must still carry one of these).
ACTING_ROLES: dict[str, frozenset[Role]] = {
    INC_REVIEW.name: frozenset({Role.incentive_reviewer}),
    INC_INVOICE_CHECK.name: frozenset({Role.finance, Role.finance_lead}),
    INC_PAYOUT.name: frozenset({Role.finance, Role.finance_lead}),
}


# --- workflow input and commands ----------------------------------------------------------------


class IncentiveInput(BaseModel):
    incentive_id: str
    partner_id: str
    submitted_by: str
    application: IncentiveFields
    cap: Amount
    program: str
    applied_month: str
    source_details: dict[str, Any] = Field(default_factory=dict)
    policy: Policy


class ResubmitIncentive(Command):
    amount: Amount
    comment: str | None = Field(default=None, max_length=4000)


class RequestPayment(Command):
    pass


class SubmitInvoice(Command):
    invoice_number: InvoiceNumber


class LabelRef(BaseModel):
    """The capability label a capability-label incentive rests on."""

    certification_id: str
    subject: str | None
    level: int | None


class PaymentEligibilityQuery(BaseModel):
    partner_id: str
    label: LabelRef | None = None


class PaymentEligibility(BaseModel):
    """What the payment request needs from the store when it arrives: the partner's business
    information certification (R-INC-6) and, for a label incentive, the label (R-CERT-7)."""

    partner_found: bool
    partner_name: str | None = None
    business_info_certified: bool = False
    label_certified: bool | None = None


# --- what the portal sees -----------------------------------------------------------------------


class Decision(BaseModel):
    outcome: str
    by: str
    at: UtcDateTime
    comment: str | None = None
    amount: Money | None = None


class InvoiceLine(BaseModel):
    description: str
    amount: Amount


class InvoiceList(BaseModel):
    """R-INC-7: what the partner invoices, printed and mailed with the invoice."""

    number: str
    incentive_id: str
    partner_id: str
    partner_name: str | None
    issued_at: UtcDateTime
    currency: str = CURRENCY
    lines: list[InvoiceLine]
    total: Amount
    invoice_number: str | None = None


class InvoiceCheck(BaseModel):
    invoice_number: str
    outcome: str
    by: str
    at: UtcDateTime
    reason: str | None = None
    received_at: UtcDateTime | None = None  # R-INC-8, qualified only


class Payout(BaseModel):
    method: PayoutMethod
    reference: str
    amount: Amount
    by: str
    paid_at: UtcDateTime
    on_time: bool


class IncentiveView(BaseModel):
    """IncentivePublic: the application, its decisions and where it waits."""

    id: str
    partner_id: str
    status: IncentiveStatus
    source: IncentiveSource
    opportunity_id: str | None
    certification_id: str | None
    person: str | None
    project: str | None
    source_details: dict[str, Any]
    amount: Amount
    amount_approved: Money | None = None
    cap: Amount
    program: str
    applied_month: str
    assignee: str | None = None
    candidate_role: str | None = None
    open_task_id: str | None = None
    decision: Decision | None = None
    invoice_list: InvoiceList | None = None
    invoice_number: str | None = None
    invoice_checks: list[InvoiceCheck] = Field(default_factory=list)
    qualified_at: UtcDateTime | None = None
    invoice_submitted_at: UtcDateTime | None = None  # R-INC-8: the invoice check's clock starts
    invoice_check_due_at: UtcDateTime | None = None  # R-INC-8
    received_at: UtcDateTime | None = None  # R-INC-9: the payout clock starts
    payout_due_at: UtcDateTime | None = None
    payout_breached: bool = False
    payout: Payout | None = None
    submitted_by: str
    created_at: UtcDateTime
    updated_at: UtcDateTime


# --- pure rules ---------------------------------------------------------------------------------


class Refusal(BaseModel):
    code: str
    message: str
    details: dict[str, Any] | None = None


class OpportunityFacts(BaseModel):
    partner_id: str | None
    status: str
    customer_name: str | None = None
    project_name: str | None = None


class CertificationFacts(BaseModel):
    partner_id: str | None
    kind: str | None
    subject: str | None
    level: int | None
    passed_at: UtcDateTime | None
    valid_until: UtcDateTime | None
    certified_now: bool


class SourceFacts(BaseModel):
    """What the store knows about an application's partner and source, looked up at submission."""

    partner_kind: str
    partner_tier: str | None = None
    partner_region: str | None = None
    # cloud software certifications the partner holds now (a software partner's cap, R-INC-2)
    certifications: list[str] = Field(default_factory=list)
    opportunity: OpportunityFacts | None = None
    certification: CertificationFacts | None = None
    # a service partner's capability labels valid now (its cap, R-INC-2)
    labels: list[HeldLabel] = Field(default_factory=list)


def eligibility_refusal(
    app: IncentiveFields,
    facts: SourceFacts,
    *,
    partner_id: str,
    main_account: bool,
    at: datetime,
) -> Refusal | None:
    """R-INC-1: the source exists, is the partner's, and the partner may use it. None: eligible."""
    if app.source is IncentiveSource.opportunity:
        if facts.partner_kind != "solution_provider":
            return _wrong_kind(app, facts, "solution_provider")
        if not main_account:
            return Refusal(
                code="PF.MAIN_ACCOUNT_REQUIRED",
                message="incentives for delivered opportunities are applied for from the "
                "solution provider's main account (partner_admin)",
            )
        po = facts.opportunity
        if po is None:
            return _not_found(app)
        if po.partner_id != partner_id:
            return _not_owned(app)
        if po.status != "delivered":
            return Refusal(
                code="PF.OPPORTUNITY_NOT_DELIVERED",
                message=f"opportunity {app.opportunity_id} is {po.status}; only a delivered "
                "opportunity is eligible (R-PO-11)",
                details={"status": po.status},
            )
    elif app.source is IncentiveSource.capability_label:
        if facts.partner_kind != "service":
            return _wrong_kind(app, facts, "service")
        cert = facts.certification
        if cert is None:
            return _not_found(app)
        if cert.partner_id != partner_id:
            return _not_owned(app)
        if (
            cert.kind != "capability_label"
            or not cert.certified_now
            or cert.passed_at is None
            or cert.passed_at.year != at.year
        ):
            return Refusal(
                code="PF.LABEL_NOT_CERTIFIED_THIS_YEAR",
                message=f"{app.certification_id} is not a capability label certified in "
                f"{at.year} and valid now",
                details={
                    "kind": cert.kind,
                    "passed_at": utc_iso(cert.passed_at) if cert.passed_at else None,
                    "valid_until": utc_iso(cert.valid_until) if cert.valid_until else None,
                },
            )
        if cert.level != 1:
            # R-INC-1: the application cites a level-1 label; level-2 labels set the cap
            return Refusal(
                code="PF.LABEL_LEVEL_NOT_ELIGIBLE",
                message=f"a capability-label application cites a level-1 label; "
                f"{app.certification_id} is level {cert.level} (level-2 labels set the cap)",
                details={"level": cert.level},
            )
    return None


def cap_of(app: IncentiveFields, facts: SourceFacts, policy: Policy) -> CapDecision:
    """R-INC-2: the application's reference maximum from the policy's table (see `cap_for`;
    a service partner's from its valid level-2 labels, else the cited level-1 label)."""
    cert = facts.certification if app.source is IncentiveSource.capability_label else None
    return cap_for(
        policy.incentive_caps,
        CapFacts(
            kind=facts.partner_kind,
            tier=facts.partner_tier,
            region=facts.partner_region,
            certifications=facts.certifications,
            label_subject=cert.subject if cert else None,
            label_level=cert.level if cert else None,
            labels=facts.labels,
        ),
    )


def cap_refusal(amount: Decimal, decision: CapDecision) -> Refusal | None:
    """R-INC-2: over the program's reference maximum, or a program without one, is refused."""
    if decision.cap is None:
        return Refusal(
            code="PF.NO_INCENTIVE_CAP",
            message=f"the incentive table has no reference maximum for {decision.program}",
            details={"program": decision.program},
        )
    if amount > decision.cap:
        return Refusal(
            code="PF.INCENTIVE_OVER_CAP",
            message=f"{amount} CNY is over the {decision.cap} CNY maximum for {decision.program}",
            details={"cap": str(decision.cap), "program": decision.program},
        )
    return None


def _wrong_kind(app: IncentiveFields, facts: SourceFacts, needed: str) -> Refusal:
    return Refusal(
        code="PF.PARTNER_KIND_NOT_ELIGIBLE",
        message=f"{app.source.value} incentives are for {needed} partners; this partner is "
        f"{facts.partner_kind}",
        details={"partner_kind": facts.partner_kind, "needed": needed},
    )


def _not_found(app: IncentiveFields) -> Refusal:
    return Refusal(
        code="PF.INCENTIVE_SOURCE_NOT_FOUND",
        message=f"no {app.source.value} {app.source_ref}",
    )


def _not_owned(app: IncentiveFields) -> Refusal:
    return Refusal(
        code="PF.INCENTIVE_SOURCE_NOT_OWNED",
        message=f"{app.source.value} {app.source_ref} belongs to another partner",
    )


_NOISE = re.compile(r"[\s\W_]+", re.UNICODE)


def business_key(text: str) -> str:
    """A person or project as R-INC-3 compares them: width, case, spaces, punctuation folded."""
    return _NOISE.sub("", unicodedata.normalize("NFKC", text).casefold())


def source_key(app: IncentiveFields) -> str:
    """The source as claims and the read model's `match_key` name it (R-INC-3: the project)."""
    funding_head = app.source is IncentiveSource.funding_head
    ref = business_key(app.source_ref) if funding_head else app.source_ref
    return f"{app.source.value}|{ref}"


def month_of(moment: datetime) -> str:
    """R-INC-4's calendar month (UTC, as every time in the API)."""
    return f"{moment.year:04d}-{moment.month:02d}"


def invoice_list_for(
    *,
    incentive_id: str,
    partner_id: str,
    partner_name: str | None,
    app: IncentiveFields,
    source_details: dict[str, Any],
    amount: Decimal,
    issued_at: datetime,
) -> InvoiceList:
    """R-INC-7: one line per approved incentive; the total is what the invoice must show."""
    what = {
        IncentiveSource.opportunity: "delivered opportunity {ref} ({customer} / {project})",
        IncentiveSource.capability_label: "capability label {ref} ({subject}, level {level})",
        IncentiveSource.funding_head: "Funding Head, project {ref}",
    }[app.source]
    detail = what.format(
        ref=app.source_ref,
        customer=source_details.get("customer_name", "-"),
        project=source_details.get("project_name", "-"),
        subject=source_details.get("subject", "-"),
        level=source_details.get("level", "-"),
    )
    lines = [InvoiceLine(description=f"Partner incentive {incentive_id}: {detail}", amount=amount)]
    return InvoiceList(
        number=f"IL-{incentive_id}",
        incentive_id=incentive_id,
        partner_id=partner_id,
        partner_name=partner_name,
        issued_at=issued_at,
        lines=lines,
        total=sum((line.amount for line in lines), Decimal("0.00")),
    )
