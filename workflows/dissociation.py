"""Dissociation request (R-INV-6): the partner asks, with a reason, to end an account's
association with it; the customer (the account) accepts or declines; both are notified.

One workflow per request (`dis-<id>`), ending with the customer's answer. Its own module rather
than a step of the customer invitation: an association may come from an accepted invitation
(R-INV-1) or a customer registration, and outlives either workflow.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from domain.errors import refuse
    from domain.invitations import (
        AnswerDissociation,
        DissociationInput,
        DissociationRequest,
        DissociationStatus,
        DissociationView,
        dissociation_answered,
    )
    from domain.policy import add_duration
    from domain.principal import Principal, Role
    from domain.projection import AuditEntry, Notification, ProcessRecord
    from domain.tasks import check_fresh
    from domain.values import utc_iso, utc_text
    from workflows.accounts import dissociate
    from workflows.human_task import Pending, ProcessWorkflow

S = DissociationStatus


@workflow.defn(name="Dissociation")
class Dissociation(ProcessWorkflow):
    process = "dissociation"
    task_kinds = {}  # the customer answers through `answer`

    @workflow.init
    def __init__(self, inp: DissociationInput) -> None:
        super().__init__()
        self.inp = inp
        self.status = S.requested
        self.answered_at: datetime | None = None
        self.answer_comment: str | None = None
        self.lapses_at: datetime | None = None

    @workflow.run
    async def run(self, inp: DissociationInput) -> dict[str, Any]:
        # R-INV-6: an unanswered request lapses after `dissociation_answer_ttl`; requests begun
        # before the rule (no marker in their history) keep waiting as they did.
        if workflow.patched("dissociation-answer-lapses") and inp.policy is not None:
            self.lapses_at = add_duration(self.created_at, inp.policy.dissociation_answer_ttl)
        await self.commit(
            audit=[
                AuditEntry(
                    actor=inp.requested_by,
                    action="dissociation_requested",
                    comment=inp.reason,
                    details={"account_id": inp.account_id},
                )
            ],
            notifications=[
                self._customer_notice(
                    f"{inp.partner_id} asks to end its association with your account",
                    f"Partner {inp.partner_id} asks to end its association with account "
                    f"{inp.account_id}.\nReason: {inp.reason}\nAnswer with POST "
                    f"/v1/dissociations/{self.process_id}/accept or /decline"
                    + (
                        f" by {utc_text(self.lapses_at)}; unanswered, the request lapses."
                        if self.lapses_at
                        else "."
                    ),
                )
            ],
        )
        await self.serve_until(lambda: self.status is not S.requested)
        return await self.finish()

    @workflow.update
    async def answer(self, cmd: AnswerDissociation) -> dict[str, Any]:
        return await self.enqueue(cmd)

    @answer.validator
    def _validate_answer(self, cmd: AnswerDissociation) -> None:
        check_fresh(cmd, workflow.now())
        self._check_answer(cmd.actor)

    async def handle(self, pending: Pending) -> None:
        cmd = pending.command
        if not isinstance(cmd, AnswerDissociation):  # pragma: no cover - only `answer` enqueues
            refuse("PF.BAD_REQUEST", f"unknown command {type(cmd).__name__}")
        self._check_answer(cmd.actor)
        details: dict[str, Any] = {"account_id": self.inp.account_id}
        if cmd.decision == "accept":
            result = await dissociate(
                DissociationRequest(
                    account_id=self.inp.account_id,
                    partner_id=self.inp.partner_id,
                    process_id=self.process_id,
                )
            )
            details["was_associated"] = result.was_associated
            self.status = S.accepted
        else:
            self.status = S.declined
        self.answered_at = workflow.now()
        self.answer_comment = cmd.comment
        outcome = (
            "the association has ended"
            if self.status is S.accepted
            else "the association stays as it is"
        )
        await self.commit(
            audit=[
                AuditEntry(
                    actor=cmd.actor.sub,
                    action=f"dissociation_{self.status.value}",
                    comment=cmd.comment,
                    details=details,
                )
            ],
            # R-INV-6: both sides hear the answer.
            notifications=[
                Notification(
                    recipient=self.inp.requested_by,
                    subject=f"[partnerflow] account {self.inp.account_id} "
                    f"{self.status.value} your dissociation request",
                    body=f"Dissociation {self.process_id}: {outcome}."
                    + (f"\nComment: {cmd.comment}" if cmd.comment else ""),
                ),
                self._customer_notice(
                    f"you {self.status.value} the dissociation from {self.inp.partner_id}",
                    f"Dissociation {self.process_id}: {outcome}.",
                ),
            ],
        )
        self.resolve(pending)

    # --- R-INV-6: the answer's time limit ----------------------------------------------------

    def process_deadline(self) -> datetime | None:
        return self.lapses_at if self.status is S.requested else None

    def visibility_due(self) -> datetime | None:
        return self.process_deadline()

    async def on_process_deadline(self) -> None:
        """R-INV-6: unanswered in time, the request lapses; the association stays; both sides
        are told."""
        self.status = S.lapsed
        outcome = (
            f"account {self.inp.account_id} did not answer by {utc_text(self.lapses_at)}; "
            "the request lapsed and the association stays as it is"
        )
        await self.commit(
            audit=[
                AuditEntry(
                    actor="system",
                    action="dissociation_lapsed",
                    details={
                        "account_id": self.inp.account_id,
                        "lapses_at": utc_iso(self.lapses_at) if self.lapses_at else None,
                    },
                )
            ],
            notifications=[
                Notification(
                    recipient=self.inp.requested_by,
                    subject=f"[partnerflow] your dissociation request for account "
                    f"{self.inp.account_id} lapsed",
                    body=f"Dissociation {self.process_id}: {outcome}. You may ask again.",
                ),
                self._customer_notice(
                    f"the dissociation request from {self.inp.partner_id} lapsed",
                    f"Dissociation {self.process_id}: {outcome}.",
                ),
            ],
        )

    def _check_answer(self, actor: Principal) -> None:
        if not actor.has(Role.account) or actor.sub != self.inp.account_id:
            refuse("PF.NOT_CUSTOMER", "only the customer's own account may answer this request")
        refusal = dissociation_answered(self.process_id, self.status)
        if refusal is not None:
            refusal.raise_in_workflow()

    def _customer_notice(self, subject: str, body: str) -> Notification:
        return Notification(
            recipient=self.inp.account_email or self.inp.account_id,
            subject=f"[partnerflow] {subject}",
            body=body,
        )

    def view(self) -> dict[str, Any]:
        return DissociationView(
            id=self.process_id,
            partner_id=self.inp.partner_id,
            account_id=self.inp.account_id,
            reason=self.inp.reason,
            status=self.status,
            requested_by=self.inp.requested_by,
            answered_at=self.answered_at,
            answer_comment=self.answer_comment,
            lapses_at=self.lapses_at,
            created_at=self.created_at,
            updated_at=self.updated_at,
        ).model_dump(mode="json")

    def record(self, now: datetime) -> ProcessRecord:
        return ProcessRecord(
            id=self.process_id,
            process=self.process,
            partner_id=self.inp.partner_id,
            status=self.status.value,
            submitted_by=self.inp.requested_by,
            match_key=self.inp.account_id,
            version=self.version,
            created_at=self.created_at,
            updated_at=now,
            view=self.view(),
        )

    def describe(self) -> str:
        if self.status is S.requested:
            until = f" until {utc_text(self.lapses_at)}" if self.lapses_at else ""
            return (
                f"waiting for account {self.inp.account_id} to accept or decline ending its "
                f"association with {self.inp.partner_id}{until}"
            )
        if self.status is S.lapsed:
            return "lapsed unanswered; nothing waits"
        return f"{self.status.value} by the customer; nothing waits"
