"""Reseller cooperation application (R-RES-1): a reseller applies to a distributor, whose users
review it, one by one or in a batch.

One workflow per application (`res-<id>`), ending approved or rejected. The review is a
`res.review` task offered to role `distributor` within the distributor partner only
(`assignee_partner_id`), completed through the shared task routes, including
`POST /v1/tasks/bulk-complete`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel

    from domain.principal import Role
    from domain.projection import AuditEntry, Notification, ProcessRecord
    from domain.resellers import (
        RES_REVIEW,
        RES_TASK_KINDS,
        ApplicationDecision,
        ApplicationStatus,
        ResellerApplicationInput,
        ResellerApplicationView,
    )
    from domain.tasks import CompleteTask, HumanTask
    from workflows.human_task import ProcessWorkflow, completes

S = ApplicationStatus


@workflow.defn(name="ResellerApplication")
class ResellerApplication(ProcessWorkflow):
    process = "reseller_application"
    task_kinds = RES_TASK_KINDS

    @workflow.init
    def __init__(self, inp: ResellerApplicationInput) -> None:
        super().__init__()
        self.inp = inp
        self.status = S.in_review
        self.decision: ApplicationDecision | None = None

    @workflow.run
    async def run(self, inp: ResellerApplicationInput) -> dict[str, Any]:
        task = self.open_task(
            RES_REVIEW,
            candidate_role=Role.distributor,
            assignee_partner_id=inp.distributor_id,
            partner_id=inp.reseller_id,
            submitted_by=inp.submitted_by,
        )
        await self.commit(
            audit=[
                AuditEntry(
                    actor=inp.submitted_by,
                    action="applied",
                    comment=inp.application.message,
                    details={"distributor_id": inp.distributor_id},
                )
            ],
            notifications=[
                Notification(
                    recipient=inp.distributor_contact,
                    subject=f"[partnerflow] cooperation application from {inp.reseller_name}",
                    body=f"Reseller {inp.reseller_name} ({inp.reseller_id}) applies to cooperate "
                    f"with {inp.distributor_id}. Review task {task.id} in your inbox."
                    + (
                        f"\nTheir message: {inp.application.message}"
                        if inp.application.message
                        else ""
                    ),
                )
            ],
        )
        await self.serve_until(lambda: self.status is not S.in_review)
        return await self.finish()

    @completes(RES_REVIEW)
    async def _decide(self, task: HumanTask, cmd: CompleteTask, data: BaseModel | None) -> None:
        self.finish_task(task, cmd)
        self.status = S.approved if cmd.outcome == "approve" else S.rejected
        self.decision = ApplicationDecision(
            outcome=cmd.outcome, by=cmd.actor.sub, at=workflow.now(), comment=cmd.comment
        )
        await self.commit(
            audit=[
                AuditEntry(
                    actor=cmd.actor.sub,
                    action=f"review_{cmd.outcome}",
                    task_id=task.id,
                    comment=cmd.comment,
                )
            ],
            notifications=[
                Notification(
                    recipient=self.inp.submitted_by,
                    subject=f"[partnerflow] {self.inp.distributor_id} {self.status.value} your "
                    "cooperation application",
                    body=f"Application {self.process_id} is {self.status.value}."
                    + (f"\nComment: {cmd.comment}" if cmd.comment else ""),
                )
            ],
        )

    def view(self) -> dict[str, Any]:
        open_task = self.open_task_of()
        return ResellerApplicationView(
            id=self.process_id,
            partner_id=self.inp.reseller_id,
            distributor_id=self.inp.distributor_id,
            status=self.status,
            message=self.inp.application.message,
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
            partner_id=self.inp.reseller_id,
            status=self.status.value,
            submitted_by=self.inp.submitted_by,
            match_key=self.inp.distributor_id,
            version=self.version,
            created_at=self.created_at,
            updated_at=now,
            view=self.view(),
        )

    def describe(self) -> str:
        task = self.open_task_of()
        if task is None:
            return f"{self.status.value} by {self.inp.distributor_id}; nothing waits"
        return f"waiting for {task.who} to review the cooperation application (task {task.id})"
