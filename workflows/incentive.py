"""Incentive application: review, payment request, invoice list, invoice check and payout.

Rules R-INC-5 … R-INC-10 (eligibility, R-INC-1 … R-INC-4, is decided by the API before the start).
One workflow per application (`inc-<id>`); it ends when the application is rejected or paid.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel

    from activities.incentives import IncentiveActivities
    from domain.errors import refuse
    from domain.incentives import (
        ACTING_ROLES,
        FINAL_STATUSES,
        INC_INVOICE_CHECK,
        INC_PAYOUT,
        INC_REVIEW,
        INC_TASK_KINDS,
        INVOICE_OPEN_STATUSES,
        ApproveData,
        Decision,
        IncentiveInput,
        IncentiveSource,
        IncentiveStatus,
        IncentiveView,
        InvoiceCheck,
        InvoiceList,
        LabelRef,
        PaymentEligibilityQuery,
        Payout,
        PayoutData,
        QualifiedData,
        RequestPayment,
        ResubmitIncentive,
        SubmitInvoice,
        invoice_list_for,
        source_key,
    )
    from domain.policy import add_duration, halfway
    from domain.principal import PARTNER_ROLES, Principal, Role
    from domain.projection import AuditEntry, Notification, ProcessRecord
    from domain.tasks import CompleteTask, HumanTask, ReassignTask, check_fresh
    from domain.values import utc_iso, utc_text
    from workflows.human_task import STORE_RETRY, STORE_TIMEOUT, Pending, ProcessWorkflow

S = IncentiveStatus


@workflow.defn(name="IncentiveApplication")
class IncentiveApplication(ProcessWorkflow):
    process = "incentive"
    task_kinds = INC_TASK_KINDS

    @workflow.init
    def __init__(self, inp: IncentiveInput) -> None:
        super().__init__()
        self.inp = inp
        self.amount = inp.application.amount
        self.status = S.submitted
        self.amount_approved: Decimal | None = None
        self.decision: Decision | None = None
        self.returned_by: str | None = None
        self.invoice_list: InvoiceList | None = None
        self.invoice_number: str | None = None
        self.invoice_checks: list[InvoiceCheck] = []
        self.qualified_at: datetime | None = None
        self.payout_due_at: datetime | None = None
        self.payout_breached = False
        self.payout: Payout | None = None
        self.invoice_submitted_at: datetime | None = None
        self.received_at: datetime | None = None
        # The partner's users this process has heard from: never a reviewer of it (R-X-5).
        self.partner_actors: set[str] = {inp.submitted_by}
        # Set at the start of `run` from `workflow.patched`: executions begun before these rules
        # replay (and carry on) without them.
        self.invoice_clock = False  # R-INC-8 / R-INC-9
        self.four_eyes = False  # R-X-5 on money

    @workflow.run
    async def run(self, inp: IncentiveInput) -> dict[str, Any]:
        self.invoice_clock = workflow.patched("inc-invoice-check-sla-received-at")
        self.four_eyes = workflow.patched("inc-four-eyes-approver-qualifier-payer")
        await self._open_review(
            [
                AuditEntry(
                    actor=inp.submitted_by,
                    action="submitted",
                    details={
                        **inp.application.model_dump(mode="json", exclude_none=True),
                        "cap": str(inp.cap),
                        "program": inp.program,
                        "applied_month": inp.applied_month,
                    },
                )
            ]
        )
        await self.serve_until(lambda: self.status in FINAL_STATUSES)
        return await self.finish()

    # --- Updates the partner sends ----------------------------------------------------------

    @workflow.update
    async def resubmit(self, cmd: ResubmitIncentive) -> dict[str, Any]:
        return await self.enqueue(cmd)

    @resubmit.validator
    def _validate_resubmit(self, cmd: ResubmitIncentive) -> None:
        check_fresh(cmd, workflow.now())
        self._check_resubmit(cmd)

    @workflow.update
    async def request_payment(self, cmd: RequestPayment) -> dict[str, Any]:
        return await self.enqueue(cmd)

    @request_payment.validator
    def _validate_request_payment(self, cmd: RequestPayment) -> None:
        check_fresh(cmd, workflow.now())
        self._check_request_payment(cmd)

    @workflow.update
    async def submit_invoice(self, cmd: SubmitInvoice) -> dict[str, Any]:
        return await self.enqueue(cmd)

    @submit_invoice.validator
    def _validate_submit_invoice(self, cmd: SubmitInvoice) -> None:
        check_fresh(cmd, workflow.now())
        self._check_submit_invoice(cmd)

    # --- the main loop's command handling ---------------------------------------------------

    async def handle(self, pending: Pending) -> None:
        cmd = pending.command
        if isinstance(cmd, CompleteTask):
            await self._complete(pending, cmd)
        elif isinstance(cmd, ReassignTask):
            await self.handle_reassign(pending, cmd)
        elif isinstance(cmd, ResubmitIncentive):
            await self._resubmit(pending, cmd)
        elif isinstance(cmd, RequestPayment):
            await self._request_payment(pending, cmd)
        elif isinstance(cmd, SubmitInvoice):
            await self._submit_invoice(pending, cmd)
        else:  # pragma: no cover - only the Updates above enqueue
            refuse("PF.BAD_REQUEST", f"unknown command {type(cmd).__name__}")

    async def _complete(self, pending: Pending, cmd: CompleteTask) -> None:
        task, data = self.check_complete(cmd)
        self.finish_task(task, cmd)
        if task.kind == INC_REVIEW.name:
            await self._reviewed(cmd, task, data)
        elif task.kind == INC_INVOICE_CHECK.name:
            await self._invoice_checked(cmd, task, data)
        else:
            assert isinstance(data, PayoutData)
            await self._paid(cmd, task, data)
        self.resolve(pending)

    async def _reviewed(self, cmd: CompleteTask, task: HumanTask, data: BaseModel | None) -> None:
        """R-INC-5: approve (the amount may be lowered), reject with a reason, or return."""
        approved = data.amount if isinstance(data, ApproveData) else None
        self.decision = Decision(
            outcome=cmd.outcome,
            by=cmd.actor.sub,
            at=workflow.now(),
            comment=cmd.comment,
            amount=approved,
        )
        if approved is not None:
            self.amount_approved = approved
            # R-INC-6: approved means "pending payment application" by the partner.
            self.status = S.pending_payment_application
        elif cmd.outcome == "reject":
            self.status = S.rejected
        else:
            self.returned_by = cmd.actor.sub
            self.status = S.returned
        await self.commit(
            audit=[
                AuditEntry(
                    actor=cmd.actor.sub,
                    action=f"review_{cmd.outcome}",
                    task_id=task.id,
                    comment=cmd.comment,
                    details={"requested": str(self.amount), "approved": _text(approved)},
                )
            ],
            notifications=[self._partner_notice(f"your incentive application was {self.status}")],
        )

    async def _invoice_checked(
        self, cmd: CompleteTask, task: HumanTask, data: BaseModel | None
    ) -> None:
        """R-INC-8: a qualified invoice starts the payout clock at its `received_at` (default
        now); an unqualified one goes back to the partner."""
        assert self.invoice_number is not None
        now = workflow.now()
        received_at: datetime | None = None
        if cmd.outcome == "qualified" and self.invoice_clock:
            given = data.received_at if isinstance(data, QualifiedData) else None
            received_at = given or now
        self.invoice_checks.append(
            InvoiceCheck(
                invoice_number=self.invoice_number,
                outcome=cmd.outcome,
                by=cmd.actor.sub,
                at=now,
                reason=cmd.comment,
                received_at=received_at,
            )
        )
        if cmd.outcome == "unqualified":
            self.status = S.invoice_unqualified
            await self.commit(
                audit=[
                    AuditEntry(
                        actor=cmd.actor.sub,
                        action="invoice_unqualified",
                        task_id=task.id,
                        comment=cmd.comment,
                        details={"invoice_number": self.invoice_number},
                    )
                ],
                notifications=[
                    self._partner_notice(
                        f"invoice {self.invoice_number} was not accepted; please reissue it",
                        reason=cmd.comment,
                    )
                ],
            )
            return
        # R-INC-9: payout within `payout_sla` of the qualified receipt; the task's clock is that
        # deadline: a reminder to finance at half of it, escalation to the finance lead on breach.
        self.qualified_at = now
        self.status = S.awaiting_payout
        payout_task = self.open_task(
            INC_PAYOUT,
            candidate_role=Role.finance,
            sla=self.inp.policy.payout_sla,
            escalate_to_role=Role.finance_lead,
            partner_id=self.inp.partner_id,
            submitted_by=self.inp.submitted_by,
        )
        if received_at is not None:
            # R-INC-9: due `payout_sla` after the paper invoice was received, not after the click.
            self.received_at = received_at
            due = add_duration(received_at, self.inp.policy.payout_sla)
            payout_task.due_at, payout_task.remind_at = due, halfway(received_at, due)
        self.payout_due_at = payout_task.due_at
        await self.commit(
            audit=[
                AuditEntry(
                    actor=cmd.actor.sub,
                    action="invoice_qualified",
                    task_id=task.id,
                    comment=cmd.comment,
                    details={
                        "invoice_number": self.invoice_number,
                        "payout_due_at": _text(self.payout_due_at),
                        **({"received_at": _text(received_at)} if received_at else {}),
                    },
                )
            ],
            notifications=[
                self.assignment_notice(payout_task),
                self._partner_notice(
                    f"invoice {self.invoice_number} is qualified; payout is due by "
                    f"{self.payout_due_at:%Y-%m-%d} UTC"
                ),
            ],
        )

    async def _paid(self, cmd: CompleteTask, task: HumanTask, data: PayoutData) -> None:
        """R-INC-10: the payout is recorded with its reference and the partner is notified."""
        assert self.amount_approved is not None
        now = workflow.now()
        self.payout = Payout(
            method=data.method,
            reference=data.reference,
            amount=self.amount_approved,
            by=cmd.actor.sub,
            paid_at=now,
            on_time=self.payout_due_at is None or now <= self.payout_due_at,
        )
        self.status = S.paid
        await self.commit(
            audit=[
                AuditEntry(
                    actor=cmd.actor.sub,
                    action="paid",
                    task_id=task.id,
                    comment=cmd.comment,
                    details={
                        "method": data.method.value,
                        "reference": data.reference,
                        "amount": str(self.amount_approved),
                        "on_time": self.payout.on_time,
                    },
                )
            ],
            notifications=[
                self._partner_notice(
                    f"incentive paid: {self.amount_approved} CNY by "
                    f"{data.method.value.replace('_', ' ')}, reference {data.reference}"
                )
            ],
        )

    async def _resubmit(self, pending: Pending, cmd: ResubmitIncentive) -> None:
        self._check_resubmit(cmd)
        self.partner_actors.add(cmd.actor.sub)
        before = str(self.amount)
        self.amount = cmd.amount
        await self._open_review(
            [
                AuditEntry(
                    actor=cmd.actor.sub,
                    action="resubmitted",
                    comment=cmd.comment,
                    details={"amount_before": before, "amount": str(self.amount)},
                )
            ]
        )
        self.resolve(pending)

    async def _request_payment(self, pending: Pending, cmd: RequestPayment) -> None:
        self._check_request_payment(cmd)
        self.partner_actors.add(cmd.actor.sub)
        # R-INC-6: read when the request arrives, so certification completed since approval counts.
        partner = await workflow.execute_activity_method(
            IncentiveActivities.payment_eligibility,
            PaymentEligibilityQuery(partner_id=self.inp.partner_id, label=self._label()),
            start_to_close_timeout=STORE_TIMEOUT,
            retry_policy=STORE_RETRY,
        )
        if not partner.business_info_certified:
            refuse(
                "PF.BUSINESS_INFO_NOT_CERTIFIED",
                "payment can be requested once the partner's business information "
                "certification is complete; complete it in the partner center first",
                partner_id=self.inp.partner_id,
            )
        if partner.label_certified is False:
            refuse(
                "PF.LABEL_NO_LONGER_CERTIFIED",
                f"capability label {self.inp.application.certification_id} is no longer "
                "certified, so its incentive is no longer eligible (R-CERT-7)",
                certification_id=self.inp.application.certification_id,
            )
        assert self.amount_approved is not None
        self.status = S.payment_requested
        await self.commit(audit=[AuditEntry(actor=cmd.actor.sub, action="payment_requested")])
        # R-INC-7: the invoice list the partner's invoice must match.
        self.invoice_list = invoice_list_for(
            incentive_id=self.process_id,
            partner_id=self.inp.partner_id,
            partner_name=partner.partner_name,
            app=self.inp.application,
            source_details=self.inp.source_details,
            amount=self.amount_approved,
            issued_at=workflow.now(),
        )
        self.status = S.invoice_list_issued
        await self.commit(
            audit=[
                AuditEntry(
                    actor="system",
                    action="invoice_list_issued",
                    details={
                        "number": self.invoice_list.number,
                        "total": str(self.invoice_list.total),
                    },
                )
            ],
            notifications=[
                self._partner_notice(
                    f"invoice list {self.invoice_list.number} issued: invoice "
                    f"{self.invoice_list.total} CNY, enter the invoice number and mail the "
                    "invoice with the printed list"
                )
            ],
        )
        self.resolve(pending)

    async def _submit_invoice(self, pending: Pending, cmd: SubmitInvoice) -> None:
        self._check_submit_invoice(cmd)
        assert self.invoice_list is not None
        reissue = self.status is S.invoice_unqualified
        self.invoice_number = cmd.invoice_number
        self.invoice_list.invoice_number = cmd.invoice_number
        self.invoice_submitted_at = workflow.now()
        self.partner_actors.add(cmd.actor.sub)
        self.status = S.invoice_submitted
        # R-INC-8: finance checks it within `invoice_check_sla` of this submission; a reminder at
        # half, escalation to the finance lead on breach.
        task = self.open_task(
            INC_INVOICE_CHECK,
            candidate_role=Role.finance,
            partner_id=self.inp.partner_id,
            submitted_by=self.inp.submitted_by,
            sla=self.inp.policy.invoice_check_sla if self.invoice_clock else None,
            escalate_to_role=Role.finance_lead if self.invoice_clock else None,
        )
        await self.commit(
            audit=[
                AuditEntry(
                    actor=cmd.actor.sub,
                    action="invoice_reissued" if reissue else "invoice_submitted",
                    details={"invoice_number": cmd.invoice_number},
                )
            ],
            notifications=[self.assignment_notice(task)],
        )
        self.resolve(pending)

    # --- the payout deadline (R-INC-9) -------------------------------------------------------

    def process_deadline(self) -> datetime | None:
        if self.status is S.awaiting_payout and not self.payout_breached:
            return self.payout_due_at
        return None

    async def on_process_deadline(self) -> None:
        # The payout task escalates to the finance lead in the same pass; this records the breach
        # of the process's own promise, visible in the view (`payout_breached`) and the history.
        self.payout_breached = True
        await self.commit(
            audit=[
                AuditEntry(
                    actor="system",
                    action="payout_breached",
                    details={"payout_due_at": _text(self.payout_due_at)},
                )
            ]
        )

    def _restart_clock(self, task: HumanTask) -> None:
        # R-INC-9: the payout is due `payout_sla` after the qualified invoice, whoever holds the
        # task: a reassignment (the finance lead's, after escalation) keeps the deadline.
        if task.kind == INC_PAYOUT.name and task.due_at is not None:
            return
        # R-INC-8: the invoice check is due `invoice_check_sla` after the invoice's submission,
        # whoever holds it.
        if task.kind == INC_INVOICE_CHECK.name and task.due_at is not None and self.invoice_clock:
            return
        super()._restart_clock(task)

    # --- checks, shared by validators (before history) and the main loop -------------------

    def check_decision(self, task: HumanTask, cmd: CompleteTask, data: BaseModel | None) -> None:
        """R-INC-5 amounts; R-INC-8 `received_at`; R-X-5 three people on the money.

        Raises PF.AMOUNT_ABOVE_REQUESTED, PF.RECEIVED_AT_INVALID (422), PF.FORBIDDEN (a person
        a task was reassigned to without the task's role), PF.SEPARATION_OF_DUTIES (403: the
        approver qualifying, or the approver or qualifier paying)."""
        if isinstance(data, ApproveData) and data.amount > self.amount:
            refuse(
                "PF.AMOUNT_ABOVE_REQUESTED",
                f"the approved amount may be lower than the {self.amount} CNY requested, "
                "never higher (R-INC-5)",
                requested=str(self.amount),
            )
        if self.invoice_clock and isinstance(data, QualifiedData) and data.received_at:
            now = workflow.now()
            if data.received_at > now:
                refuse(
                    "PF.RECEIVED_AT_INVALID",
                    "received_at is in the future (R-INC-8)",
                    received_at=_text(data.received_at),
                    now=_text(now),
                )
            if self.invoice_submitted_at and data.received_at < self.invoice_submitted_at:
                refuse(
                    "PF.RECEIVED_AT_INVALID",
                    "received_at is before the invoice was submitted (R-INC-8)",
                    received_at=_text(data.received_at),
                    invoice_submitted_at=_text(self.invoice_submitted_at),
                )
        if not self.four_eyes:
            return
        roles = ACTING_ROLES[task.kind]
        if task.assignee is not None and not cmd.actor.has(*roles):
            refuse(
                "PF.FORBIDDEN",
                f"{task.kind} tasks are decided by {', '.join(sorted(roles))} (R-X-5)",
            )
        barred = self._other_duties(task)
        if cmd.actor.sub in barred:
            refuse(
                "PF.SEPARATION_OF_DUTIES",
                f"{cmd.actor.sub} already {barred[cmd.actor.sub]} this incentive; the approver, "
                "the invoice's qualifier and the payer are three different people (R-X-5)",
                duty=barred[cmd.actor.sub],
            )

    def check_reassign_target(self, task: HumanTask, cmd: ReassignTask) -> None:
        """R-X-5: besides the submitter, the partner's users this process has heard from and
        the holders of the other money duties (`_other_duties`) are refused as assignees."""
        super().check_reassign_target(task, cmd)
        if not self.four_eyes:
            return
        reason = self._other_duties(task).get(cmd.assignee)
        if reason is None and cmd.assignee in self.partner_actors:
            reason = "acted for the partner on"
        if reason is not None:
            refuse(
                "PF.ASSIGNEE_NOT_ELIGIBLE",
                f"{cmd.assignee} {reason} this incentive and may not take task {task.id} (R-X-5)",
                assignee=cmd.assignee,
            )

    def _other_duties(self, task: HumanTask) -> dict[str, str]:
        """Who may not act on `task` because they hold another duty on this incentive: the
        approver may neither qualify nor pay; the qualifier may not pay."""
        barred: dict[str, str] = {}
        if task.kind in (INC_INVOICE_CHECK.name, INC_PAYOUT.name):
            if self.decision is not None and self.decision.outcome == "approve":
                barred[self.decision.by] = "approved"
        if task.kind == INC_PAYOUT.name:
            qualified = [c for c in self.invoice_checks if c.outcome == "qualified"]
            if qualified:
                barred.setdefault(qualified[-1].by, "qualified the invoice of")
        return barred

    def _check_owner(self, actor: Principal) -> None:
        if actor.partner_id != self.inp.partner_id or not actor.has(*PARTNER_ROLES):
            refuse("PF.NOT_OWNER", "only the partner that applied may do this")

    def _check_state(self, allowed: frozenset[IncentiveStatus], what: str) -> None:
        if self.status not in allowed:
            refuse(
                "PF.WRONG_STATE",
                f"{what} is not possible while the incentive is {self.status.value}",
                status=self.status.value,
                allowed=sorted(s.value for s in allowed),
            )

    def _check_resubmit(self, cmd: ResubmitIncentive) -> None:
        self._check_owner(cmd.actor)
        self._check_state(frozenset({S.returned}), "resubmission")
        if cmd.amount > self.inp.cap:
            refuse(
                "PF.INCENTIVE_OVER_CAP",
                f"{cmd.amount} CNY is over the {self.inp.cap} CNY maximum for {self.inp.program}",
                cap=str(self.inp.cap),
                program=self.inp.program,
            )

    def _check_request_payment(self, cmd: RequestPayment) -> None:
        self._check_owner(cmd.actor)
        self._check_state(frozenset({S.pending_payment_application}), "a payment request")

    def _check_submit_invoice(self, cmd: SubmitInvoice) -> None:
        self._check_owner(cmd.actor)
        self._check_state(INVOICE_OPEN_STATUSES, "entering an invoice number")

    # --- helpers ---------------------------------------------------------------------------

    async def _open_review(self, audit: list[AuditEntry]) -> None:
        # A returned application goes back to the reviewer who returned it.
        self.status = S.in_review
        task = self.open_task(
            INC_REVIEW,
            assignee=self.returned_by,
            candidate_role=None if self.returned_by else Role.incentive_reviewer,
            partner_id=self.inp.partner_id,
            submitted_by=self.inp.submitted_by,
        )
        await self.commit(audit=audit, notifications=[self.assignment_notice(task)])

    def _invoice_check_due_at(self) -> datetime | None:
        task = self.open_task_of(INC_INVOICE_CHECK)
        return task.due_at if task else None

    def _label(self) -> LabelRef | None:
        app = self.inp.application
        if app.source is not IncentiveSource.capability_label or app.certification_id is None:
            return None
        level = self.inp.source_details.get("level")
        return LabelRef(
            certification_id=app.certification_id,
            subject=self.inp.source_details.get("subject"),
            level=int(level) if level is not None else None,
        )

    def _partner_notice(self, what: str, reason: str | None = None) -> Notification:
        app = self.inp.application
        return Notification(
            recipient=self.inp.submitted_by,
            subject=f"[partnerflow] incentive {self.process_id}: {what}",
            body=(
                f"Incentive {self.process_id} ({app.source.value} {app.source_ref}) is now "
                f"{self.status.value}.\n{what}."
                + (f"\nReason: {reason}" if reason else "")
                + (
                    f"\nComment: {self.decision.comment}"
                    if self.decision and self.decision.comment and not reason
                    else ""
                )
            ),
        )

    def view(self) -> dict[str, Any]:
        app = self.inp.application
        task = self.open_task_of()
        return IncentiveView(
            id=self.process_id,
            partner_id=self.inp.partner_id,
            status=self.status,
            source=app.source,
            opportunity_id=app.opportunity_id,
            certification_id=app.certification_id,
            person=app.person,
            project=app.project,
            source_details=self.inp.source_details,
            amount=self.amount,
            amount_approved=self.amount_approved,
            cap=self.inp.cap,
            program=self.inp.program,
            applied_month=self.inp.applied_month,
            assignee=task.assignee if task else None,
            candidate_role=task.candidate_role if task else None,
            open_task_id=task.id if task else None,
            decision=self.decision,
            invoice_list=self.invoice_list,
            invoice_number=self.invoice_number,
            invoice_checks=self.invoice_checks,
            qualified_at=self.qualified_at,
            invoice_submitted_at=self.invoice_submitted_at,
            invoice_check_due_at=self._invoice_check_due_at(),
            received_at=self.received_at,
            payout_due_at=self.payout_due_at,
            payout_breached=self.payout_breached,
            payout=self.payout,
            submitted_by=self.inp.submitted_by,
            created_at=self.created_at,
            updated_at=self.updated_at,
        ).model_dump(mode="json")

    def record(self, now: datetime) -> ProcessRecord:
        return ProcessRecord(
            id=self.process_id,
            process=self.process,
            partner_id=self.inp.partner_id,
            status=self.status.value,
            submitted_by=self.inp.submitted_by,
            match_key=source_key(self.inp.application),
            version=self.version,
            created_at=self.created_at,
            updated_at=now,
            view=self.view(),
        )

    def describe(self) -> str:
        task = self.open_task_of()
        if task is None:
            waiting = {
                S.returned: "returned to the partner; waiting for resubmission",
                S.pending_payment_application: "approved; waiting for the partner's payment "
                "request",
                S.invoice_list_issued: "invoice list issued; waiting for the partner's invoice",
                S.invoice_unqualified: "invoice unqualified; waiting for the partner to reissue",
            }
            return waiting.get(self.status, f"{self.status.value}; nothing waits")
        due = f", due {utc_text(task.due_at)}" if task.due_at else ""
        late = (
            " (payout deadline breached, escalated to the finance lead)"
            if (self.payout_breached)
            else ""
        )
        what = {
            INC_REVIEW.name: "review the application",
            INC_INVOICE_CHECK.name: f"check invoice {self.invoice_number}",
            INC_PAYOUT.name: f"pay out {self.amount_approved} CNY",
        }[task.kind]
        return f"waiting for {task.who} to {what} (task {task.id}){due}{late}"


def _text(value: object) -> str | None:
    if isinstance(value, datetime):
        return utc_iso(value)
    return None if value is None else str(value)
