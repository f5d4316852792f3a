"""Partner opportunity review: routing to a PDM or the dispatcher, review rounds, progress.

Rules R-PO-1 … R-PO-11. One workflow per PO (`po-<id>`); it ends when the PO is rejected,
cancelled, lost or delivered.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel

    from activities.opportunity_claims import (
        ApprovalClaim,
        OpenClaimMove,
        OpportunityClaimActivities,
    )
    from activities.read_model import AssessRequest, ReadModelActivities
    from domain.errors import refuse
    from domain.opportunity import (
        FINAL_STATUSES,
        PO_DISPATCH,
        PO_REVIEW,
        PO_TASK_KINDS,
        STAGE_MOVES,
        UNDECIDED_STATUSES,
        CancelOpportunity,
        Decision,
        DispatchData,
        DuplicateQuery,
        OpportunityFields,
        OpportunityReviewInput,
        OpportunityStatus,
        OpportunityView,
        ResubmitOpportunity,
        RouteRequest,
        UpdateProgress,
        criteria_refusal,
        match_key,
    )
    from domain.principal import PARTNER_ROLES, Principal, Role
    from domain.projection import AuditEntry, Notification, ProcessRecord
    from domain.tasks import CompleteTask, HumanTask, ReassignTask
    from domain.values import utc_text
    from workflows.human_task import ProcessWorkflow, command, completes

S = OpportunityStatus
# R-PO-4 with R-PO-7 / R-PO-9: the "one open PO" claim follows a resubmitted or re-verified PO.
OPEN_CLAIM_FOLLOWS_PATCH = "po-open-claim-follows"


@workflow.defn(name="OpportunityReview")
class OpportunityReview(ProcessWorkflow):
    process = "opportunity"
    task_kinds = PO_TASK_KINDS

    @workflow.init
    def __init__(self, inp: OpportunityReviewInput) -> None:
        super().__init__()
        self.inp = inp
        self.po: OpportunityFields = inp.opportunity
        self.status = S.submitted
        self.pdm: str | None = None
        self.psm: str | None = None
        self.duplicate_of: str | None = None
        self.offering_unmatched = False
        self.decision: Decision | None = None
        # Set at the start of `run` from `workflow.patched`: an execution begun before R-PO-10's
        # criteria-on-every-outcome replays (and carries on) as it began.
        self.criteria_on_every_outcome = False

    @workflow.run
    async def run(self, inp: OpportunityReviewInput) -> dict[str, Any]:
        self.criteria_on_every_outcome = workflow.patched("po-criteria-on-every-outcome")
        assessment = await self.store_activity(
            ReadModelActivities.assess_opportunity,
            AssessRequest(
                route=RouteRequest(
                    partner_id=inp.partner_id,
                    region=self.po.region,
                    industry=self.po.industry,
                    offerings=self.po.offerings,
                ),
                duplicates=self._duplicate_query(),
            ),
        )
        self.pdm, self.psm = assessment.pdm, assessment.psm
        self.offering_unmatched = assessment.offering_unmatched
        self.duplicate_of = assessment.duplicate_of
        audit = [
            AuditEntry(actor=inp.submitted_by, action="submitted", details=self._fields()),
            AuditEntry(
                actor="system",
                action="routed",
                details={
                    "pdm": self.pdm,
                    "psm": self.psm,
                    "duplicate_of": self.duplicate_of,
                    "offering_unmatched": self.offering_unmatched,
                },
            ),
        ]
        await self._open_review_or_dispatch(audit)
        await self.serve_until(lambda: self.status in FINAL_STATUSES)
        return await self.finish()

    # --- Updates the partner sends ----------------------------------------------------------

    @workflow.update
    async def cancel(self, cmd: CancelOpportunity) -> dict[str, Any]:
        return await self.enqueue(cmd)

    @cancel.validator
    def _validate_cancel(self, cmd: CancelOpportunity) -> None:
        self.validate(cmd)

    @workflow.update
    async def resubmit(self, cmd: ResubmitOpportunity) -> dict[str, Any]:
        return await self.enqueue(cmd)

    @resubmit.validator
    def _validate_resubmit(self, cmd: ResubmitOpportunity) -> None:
        self.validate(cmd)

    @workflow.update
    async def update_progress(self, cmd: UpdateProgress) -> dict[str, Any]:
        return await self.enqueue(cmd)

    @update_progress.validator
    def _validate_update_progress(self, cmd: UpdateProgress) -> None:
        self.validate(cmd)

    # --- the commands: check, then apply --------------------------------------------------

    async def apply_reassign(self, cmd: ReassignTask) -> dict[str, Any] | None:
        answer = await super().apply_reassign(cmd)
        task = self.tasks[cmd.task_id]
        # R-PO-7 / R-PO-9: the PDM a review was reassigned to holds it from now on: a
        # resubmission or a re-verification comes back to them, and the view names them.
        if task.kind == PO_REVIEW.name and workflow.patched("po-reassigned-pdm-holds-review"):
            self.pdm = cmd.assignee
        return answer

    @completes(PO_DISPATCH)
    async def _dispatched(self, task: HumanTask, cmd: CompleteTask, data: BaseModel | None) -> None:
        self.finish_task(task, cmd)
        self.pdm = str(cmd.data["pdm"])
        details: dict[str, Any] = {"pdm": self.pdm}
        if workflow.patched("po-dispatch-names-psm"):
            # R-PO-3: the dispatcher names the PSM too, else the unified PSM contact.
            assert isinstance(data, DispatchData)
            self.psm = data.psm or self.inp.policy.unmatched_psm
            details["psm"] = self.psm
        await self._open_review_or_dispatch(
            [
                AuditEntry(
                    actor=cmd.actor.sub,
                    action="dispatched",
                    task_id=task.id,
                    comment=cmd.comment,
                    details=details,
                )
            ]
        )

    @completes(PO_REVIEW)
    async def _reviewed(self, task: HumanTask, cmd: CompleteTask, data: BaseModel | None) -> None:
        criteria = getattr(data, "criteria", None)
        if cmd.outcome == "approve":
            # R-PO-4: the earlier approved PO wins. Looked up now, not at submission: the other
            # PO may have been approved since.
            approved = await self.store_activity(
                ReadModelActivities.find_approved_duplicate, self._duplicate_query()
            )
            if approved is None and workflow.patched("po-approve-claims-match-key"):
                # R-PO-4: of a set of duplicates at most one is ever approved, even when two
                # PDMs approve at the same moment: the approval first takes the normalised key.
                approved = await self.store_activity(
                    OpportunityClaimActivities.claim_approval,
                    ApprovalClaim(po_id=self.process_id, match_key=self._key()),
                )
                claimed = approved is None
            else:
                claimed = False
            if approved is not None:
                self.duplicate_of = approved
                refuse(
                    "PF.DUPLICATE_OF_APPROVED",
                    f"{approved} for the same customer and project is already approved",
                    duplicate_of=approved,
                )
            try:
                self.check_complete(cmd)  # the task may have moved while we looked
            except ApplicationError:
                if claimed:  # not approved after all: the key is free again
                    await self.store_activity(
                        OpportunityClaimActivities.release_approval,
                        ApprovalClaim(po_id=self.process_id, match_key=self._key()),
                    )
                raise
        self.finish_task(task, cmd)
        self.decision = Decision(
            outcome=cmd.outcome,
            by=cmd.actor.sub,
            at=workflow.now(),
            comment=cmd.comment,
            criteria=criteria,
        )
        self.status = {"approve": S.approved, "reject": S.rejected, "return": S.returned}[
            cmd.outcome
        ]
        await self.commit(
            audit=[
                AuditEntry(
                    actor=cmd.actor.sub,
                    action=f"review_{cmd.outcome}",
                    task_id=task.id,
                    comment=cmd.comment,
                    details={"criteria": criteria},
                )
            ],
            notifications=[self._partner_notice(f"your opportunity was {self.status.value}")],
        )

    def _check_cancel_cmd(self, cmd: CancelOpportunity) -> None:
        self._check_owner(cmd.actor)
        self._check_cancel()

    @command(CancelOpportunity, check="_check_cancel_cmd")
    async def _cancel(self, cmd: CancelOpportunity) -> None:
        self.cancel_open_tasks()
        self.status = S.cancelled
        await self.commit(
            audit=[AuditEntry(actor=cmd.actor.sub, action="cancelled", comment=cmd.reason)]
        )

    def _check_resubmit_cmd(self, cmd: ResubmitOpportunity) -> None:
        self._check_owner(cmd.actor)
        self._check_resubmit()

    @command(ResubmitOpportunity, check="_check_resubmit_cmd")
    async def _resubmit(self, cmd: ResubmitOpportunity) -> None:
        await self._follow_open_claim(cmd.opportunity)
        before = self._fields()
        self.po = cmd.opportunity
        self.duplicate_of = await self._look_for_duplicate()
        # R-PO-7: back to the same PDM who returned it.
        await self._open_review_or_dispatch(
            [
                AuditEntry(
                    actor=cmd.actor.sub,
                    action="resubmitted",
                    comment=cmd.comment,
                    details={"before": before, "after": self._fields()},
                )
            ]
        )

    def _check_progress_cmd(self, cmd: UpdateProgress) -> None:
        self._check_owner(cmd.actor)
        self._check_progress(cmd)

    @command(UpdateProgress, check="_check_progress_cmd")
    async def _progress(self, cmd: UpdateProgress) -> None:
        change = cmd.progress.model_dump(exclude_none=True, exclude={"stage"}, mode="json")
        edited = self.po.model_copy(
            update=cmd.progress.model_dump(exclude_none=True, exclude={"stage"})
        )
        reverify = match_key(edited.customer_name, edited.project_name) != self._key()
        if reverify:
            await self._follow_open_claim(edited)
        before = self._fields()
        self.po = edited
        entry = AuditEntry(
            actor=cmd.actor.sub,
            action="progress_updated",
            details={"stage": cmd.progress.stage, "changes": change, "before": before},
        )
        if reverify:
            # R-PO-9: a different customer or project is a different opportunity to verify.
            self.duplicate_of = await self._look_for_duplicate()
            entry.action = "reverification_requested"
            await self._open_review_or_dispatch([entry])
        else:
            if cmd.progress.stage is not None:
                self.status = S(cmd.progress.stage)
            await self.commit(
                audit=[entry],
                notifications=[self._psm_notice()] if cmd.progress.stage else [],
            )

    # --- checks, shared by validators (before history) and the main loop -------------------

    def check_decision(self, task: HumanTask, cmd: CompleteTask, data: BaseModel | None) -> None:
        """R-PO-10: every outcome of a review (approve, reject, return) records a pass/fail for
        each criterion in the policy's `po_review_criteria`, and nothing else (PF.INVALID_DATA);
        an approval needs them all to pass (PF.CRITERIA_NOT_MET). Executions begun before the
        rule require criteria on approvals only."""
        if task.kind != PO_REVIEW.name:
            return
        criteria = getattr(data, "criteria", None)
        if cmd.outcome == "approve" or self.criteria_on_every_outcome:
            wrong = criteria_refusal(criteria, self.inp.policy.po_review_criteria)
            if wrong is not None:
                refuse(
                    "PF.INVALID_DATA",
                    f"outcome {cmd.outcome!r} records a pass or fail for each review criterion: "
                    f"{', '.join(self.inp.policy.po_review_criteria)} (R-PO-10)",
                    **wrong,
                )
        if cmd.outcome == "approve" and criteria is not None:
            failed = [k for k, v in criteria.items() if not v]
            if failed:
                refuse(
                    "PF.CRITERIA_NOT_MET",
                    "approval needs every review criterion to pass (R-PO-10)",
                    failed=failed,
                )

    def _check_owner(self, actor: Principal) -> None:
        if actor.partner_id != self.inp.partner_id or not actor.has(*PARTNER_ROLES):
            refuse("PF.NOT_OWNER", "only the partner that submitted this opportunity may do this")

    def _check_cancel(self) -> None:
        if self.status not in UNDECIDED_STATUSES:
            refuse(
                "PF.WRONG_STATE",
                f"a {self.status.value} opportunity can no longer be withdrawn (R-PO-6)",
                status=self.status.value,
            )

    def _check_resubmit(self) -> None:
        if self.status is not S.returned:
            refuse(
                "PF.WRONG_STATE",
                f"only a returned opportunity can be resubmitted; this one is {self.status.value}",
                status=self.status.value,
            )

    def _check_progress(self, cmd: UpdateProgress) -> None:
        if self.status not in STAGE_MOVES:
            refuse(
                "PF.WRONG_STATE",
                f"progress is updated after approval; this opportunity is {self.status.value}",
                status=self.status.value,
            )
        p = cmd.progress
        if p.stage is not None and S(p.stage) not in STAGE_MOVES[self.status]:
            refuse(
                "PF.INVALID_STAGE",
                f"a {self.status.value} opportunity cannot move to {p.stage} (R-PO-11)",
                allowed=sorted(s.value for s in STAGE_MOVES[self.status]),
            )
        changes_identity = (
            p.customer_name is not None and p.customer_name != self.po.customer_name
        ) or (p.project_name is not None and p.project_name != self.po.project_name)
        if changes_identity and p.stage is not None:
            refuse(
                "PF.INVALID_STAGE",
                "a change of customer or project re-opens verification; send the stage after it",
            )
        if not p.model_dump(exclude_none=True):
            refuse("PF.VALIDATION_FAILED", "nothing to update")

    # --- helpers ---------------------------------------------------------------------------

    async def _open_review_or_dispatch(self, audit: list[AuditEntry]) -> None:
        sla = self.inp.policy.po_review_sla
        if self.pdm is None:
            # R-PO-3: no routing rule matched; the central dispatcher picks the PDM.
            self.status = S.dispatching
            task = self.open_task(
                PO_DISPATCH,
                candidate_role=Role.dispatcher,
                sla=sla,
                escalate_to_role=Role.dispatcher,
                partner_id=self.inp.partner_id,
                submitted_by=self.inp.submitted_by,
            )
        else:
            self.status = S.in_review
            task = self.open_task(
                PO_REVIEW,
                assignee=self.pdm,
                sla=sla,
                escalate_to_role=Role.dispatcher,
                partner_id=self.inp.partner_id,
                submitted_by=self.inp.submitted_by,
            )
        await self.commit(audit=audit, notifications=[self.assignment_notice(task)])

    async def _follow_open_claim(self, edited: OpportunityFields) -> None:
        """R-PO-4 with R-PO-7 / R-PO-9: one open PO per partner, customer and project also after
        an edit. A new (customer, project) moves the PO's `po-open` claim to the new key before
        anything changes; another open PO of the partner holding it refuses the edit with
        PF.OPPORTUNITY_EXISTS (`existing_id`), and nothing is written. The move also gives back
        a `po-approved` claim on the old key (R-PO-9 re-opens verification). Executions begun
        before the patch carry on without it."""
        new = match_key(edited.customer_name, edited.project_name)
        if new == self._key() or not workflow.patched(OPEN_CLAIM_FOLLOWS_PATCH):
            return
        holder = await self.store_activity(
            OpportunityClaimActivities.move_open_claim,
            OpenClaimMove(
                po_id=self.process_id,
                partner_id=self.inp.partner_id,
                old_match_key=self._key(),
                new_match_key=new,
            ),
        )
        if holder is not None:
            refuse(
                "PF.OPPORTUNITY_EXISTS",
                "this partner already has an open opportunity for the same customer and project",
                existing_id=holder,
            )

    async def _look_for_duplicate(self) -> str | None:
        assessment = await self.store_activity(
            ReadModelActivities.assess_opportunity,
            AssessRequest(
                route=RouteRequest(
                    partner_id=self.inp.partner_id,
                    region=None,
                    industry=None,
                    offerings=self.po.offerings,
                ),
                duplicates=self._duplicate_query(),
            ),
        )
        self.offering_unmatched = assessment.offering_unmatched
        return assessment.duplicate_of

    def _key(self) -> str:
        return match_key(self.po.customer_name, self.po.project_name)

    def _duplicate_query(self) -> DuplicateQuery:
        return DuplicateQuery(
            po_id=self.process_id,
            partner_id=self.inp.partner_id,
            match_key=self._key(),
        )

    def _fields(self) -> dict[str, Any]:
        return self.po.model_dump(mode="json")

    def _partner_notice(self, what: str) -> Notification:
        return Notification(
            recipient=self.inp.submitted_by,
            subject=f"[partnerflow] {self.po.project_name}: {what}",
            body=(
                f"Opportunity {self.process_id} ({self.po.customer_name} / "
                f"{self.po.project_name}) is now {self.status.value}."
                + (
                    f"\nComment: {self.decision.comment}"
                    if self.decision and self.decision.comment
                    else ""
                )
            ),
        )

    def _psm_notice(self) -> Notification:
        return Notification(
            recipient=self.psm or self.pdm or str(Role.dispatcher),
            subject=f"[partnerflow] {self.po.project_name} is {self.status.value}",
            body=f"Opportunity {self.process_id} of partner {self.inp.partner_id} is "
            f"{self.status.value}.",
        )

    def view(self) -> dict[str, Any]:
        open_task = self.open_task_of()
        return OpportunityView(
            id=self.process_id,
            partner_id=self.inp.partner_id,
            status=self.status,
            customer_name=self.po.customer_name,
            project_name=self.po.project_name,
            offerings=self.po.offerings,
            amount=self.po.amount,
            region=self.po.region,
            industry=self.po.industry,
            expected_close_date=self.po.expected_close_date,
            assignee=open_task.assignee if open_task else self.pdm,
            psm=self.psm,
            duplicate_of=self.duplicate_of,
            offering_unmatched=self.offering_unmatched,
            decision=self.decision,
            open_task_id=open_task.id if open_task else None,
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
            match_key=match_key(self.po.customer_name, self.po.project_name),
            version=self.version,
            created_at=self.created_at,
            updated_at=now,
            view=self.view(),
        )

    def describe(self) -> str:
        task = self.open_task_of()
        if task is None:
            if self.status in (S.approved, S.won):
                return (
                    f"{self.status.value}: waiting for the partner's progress "
                    "(won / lost / delivered)"
                )
            if self.status is S.returned:
                return "returned to the partner for information; waiting for resubmission"
            return f"{self.status.value}; nothing waits"
        due = f", due {utc_text(task.due_at)}" if task.due_at else ""
        late = " (overdue, escalated to the dispatcher)" if task.escalated else ""
        if task.kind == PO_DISPATCH.name:
            return f"waiting for a dispatcher to assign a PDM (task {task.id}){due}{late}"
        return f"waiting for PDM {task.assignee} to review (task {task.id}){due}{late}"
