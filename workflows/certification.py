"""Capability and solution certification: expert review, defense, validity, recertification,
reminders and expiry. Rules R-CERT-1 … R-CERT-9.

One workflow per certified subject (`cert-<partner>-<subject>`) for as long as the partner holds
or seeks it. Every accepted recertification (a new attempt) continues-as-new, carrying the
certificate's state, `version`, `task_seq` and the open review task, so each run's history is
one cycle however many years the certificate lives.

Defense (R-CERT-3, our choice): one per attempt, requested by the partner with a reason
- while the expert's review is pending: the review task is cancelled and opened again, for the
  experts to decide afresh, once the defense is held;
- or within `policy.cert_defense_period` (P30D) after a failed review.
Certification operations (`cert_ops`) complete the `cert.defense` task: `schedule`
(data.scheduled_at; the task stays open, status `defense_scheduled`), then `held`.

After a failed first certification the partner starts a new attempt with `recertify`. A failed
recertification leaves the certificate as it was: valid until `valid_until`, then expired.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel

    from domain.certification import (
        CERT_DEFENSE,
        CERT_REVIEW,
        CERT_TASK_KINDS,
        SUBJECT_PATTERN,
        AnswerClarification,
        Attempt,
        CertificationCarried,
        CertificationInput,
        CertificationStatus,
        CertificationView,
        Clarification,
        Defense,
        DefenseHeld,
        DefenseSchedule,
        Notice,
        Period,
        Recertify,
        RequestDefense,
        ReviewDecision,
        ReviewResult,
        certification_id,
        certification_match_key,
        defense_until,
        plan_cycle,
        recertification_window_opens,
    )
    from domain.errors import refuse
    from domain.principal import PARTNER_ROLES, Principal, Role
    from domain.projection import AuditEntry, Notification, ProcessRecord
    from domain.tasks import CompleteTask, HumanTask, ReassignTask, TaskStatus, check_fresh
    from domain.values import utc_iso, utc_text
    from workflows.human_task import Pending, ProcessWorkflow

S = CertificationStatus
NOTICE_ACTIONS = {
    "window_opens": "recertification_window_opened",
    "reminder": "expiry_reminder_sent",
    "expiry": "expired",
}


@workflow.defn(name="Certification")
class Certification(ProcessWorkflow):
    process = "certification"
    task_kinds = CERT_TASK_KINDS

    @workflow.init
    def __init__(self, inp: CertificationInput) -> None:
        super().__init__()
        self.inp = inp
        self.cert = inp.certification
        self.policy = inp.policy
        self.next_attempt_started = False
        # Set at the start of `run` from `workflow.patched` (R-CERT-3: clarification, and a
        # defense requested by the partner's PDM or certification operations).
        self.clarify_rule = False
        carried = inp.carried
        if carried is None:
            self.submitted_by = inp.submitted_by
            self.attempt = Attempt(
                number=1,
                kind="certification",
                submitted_by=inp.submitted_by,
                submitted_at=self.created_at,
                evidence=self.cert.evidence,
            )
            self.result: ReviewResult | None = None
            self.periods: list[Period] = []
            self.notices: list[Notice] = []
        else:
            self.restore(carried)
            self.submitted_by = carried.submitted_by
            self.attempt = carried.attempt
            self.result = carried.result
            self.periods = carried.periods
            self.notices = carried.notices

    @workflow.run
    async def run(self, inp: CertificationInput) -> dict[str, Any]:
        self.clarify_rule = workflow.patched("cert-clarify-and-defense-on-behalf")
        if inp.carried is None:
            self._check_identity()
            await self._open_review(
                [
                    AuditEntry(
                        actor=inp.submitted_by,
                        action="submitted",
                        details=self.cert.model_dump(mode="json"),
                    )
                ]
            )
        else:
            self._publish_visibility()  # current details belong to a run
        # Not serve_until: commands that race the new attempt are applied before the hand-over
        # (continue_as_new drains them), not refused as if the process had closed.
        while not self.next_attempt_started:
            pending = await self.next_command()
            assert pending is not None  # only a given `is_final` ends the wait with None
            await self._serve_one(pending)
        await self.continue_as_new(self._next_input)

    # --- Updates the partner sends ----------------------------------------------------------

    @workflow.update
    async def request_defense(self, cmd: RequestDefense) -> dict[str, Any]:
        return await self.enqueue(cmd)

    @request_defense.validator
    def _validate_request_defense(self, cmd: RequestDefense) -> None:
        check_fresh(cmd, workflow.now())
        self._check_defense_requester(cmd.actor)
        self._check_defense()

    @workflow.update
    async def answer_clarification(self, cmd: AnswerClarification) -> dict[str, Any]:
        return await self.enqueue(cmd)

    @answer_clarification.validator
    def _validate_answer_clarification(self, cmd: AnswerClarification) -> None:
        check_fresh(cmd, workflow.now())
        self._check_owner(cmd.actor)
        self._check_clarification_pending()

    @workflow.update
    async def recertify(self, cmd: Recertify) -> dict[str, Any]:
        return await self.enqueue(cmd)

    @recertify.validator
    def _validate_recertify(self, cmd: Recertify) -> None:
        check_fresh(cmd, workflow.now())
        self._check_owner(cmd.actor)
        self._check_recertify()

    # --- the main loop's command handling ---------------------------------------------------

    async def handle(self, pending: Pending) -> None:
        cmd = pending.command
        if isinstance(cmd, ReassignTask):
            await self.handle_reassign(pending, cmd)
            return
        if isinstance(cmd, CompleteTask):
            await self._complete(cmd)
        elif isinstance(cmd, RequestDefense):
            await self._request_defense(cmd)
        elif isinstance(cmd, AnswerClarification):
            await self._answer_clarification(cmd)
        elif isinstance(cmd, Recertify):
            await self._recertify(cmd)
        else:  # pragma: no cover - only the Updates above enqueue
            refuse("PF.BAD_REQUEST", f"unknown command {type(cmd).__name__}")
        self.resolve(pending)

    async def _complete(self, cmd: CompleteTask) -> None:
        task, data = self.check_complete(cmd)
        if task.kind == CERT_REVIEW.name and cmd.outcome == "clarify":
            await self._ask_clarification(task, cmd)
        elif isinstance(data, ReviewDecision):
            await self._decide(task, cmd, data)
        elif isinstance(data, DefenseSchedule):
            await self._schedule_defense(task, cmd, data)
        elif isinstance(data, DefenseHeld):
            await self._defense_held(task, cmd, data)

    async def _decide(self, task: HumanTask, cmd: CompleteTask, data: ReviewDecision) -> None:
        now = workflow.now()
        self.finish_task(task, cmd)
        self.result = ReviewResult(
            attempt=self.attempt.number,
            outcome="pass" if data.passed else "fail",
            decided_by=cmd.actor.sub,
            decided_at=now,
            comment=cmd.comment,
            items=data.items,
        )
        if data.passed:
            # R-CERT-5 / R-CERT-6: validity runs from this pass, a recertification's included.
            period, self.notices = plan_cycle(now, self.policy)
            self.periods.append(period)
        await self.commit(
            audit=[
                AuditEntry(
                    actor=cmd.actor.sub,
                    action=f"review_{self.result.outcome}",
                    task_id=task.id,
                    comment=cmd.comment,
                    details={
                        "attempt": self.attempt.number,
                        "items": [i.model_dump(mode="json") for i in data.items],
                        "valid_until": utc_iso(self.periods[-1].valid_until)
                        if data.passed
                        else None,
                    },
                )
            ],
            notifications=[self._result_notice(self.result)],  # R-CERT-4
        )

    async def _ask_clarification(self, task: HumanTask, cmd: CompleteTask) -> None:
        """R-CERT-3: the expert asks the partner instead of deciding; the review waits."""
        assert cmd.comment is not None  # the outcome requires it
        self.finish_task(task, cmd)
        self.attempt.clarifications.append(
            Clarification(
                question=cmd.comment,
                asked_by=cmd.actor.sub,
                asked_at=workflow.now(),
                task_id=task.id,
            )
        )
        await self.commit(
            audit=[
                AuditEntry(
                    actor=cmd.actor.sub,
                    action="clarification_requested",
                    task_id=task.id,
                    comment=cmd.comment,
                    details={"attempt": self.attempt.number},
                )
            ],
            notifications=[
                self._partner_notice(
                    "the expert asks a question",
                    f"Question: {cmd.comment}\nAnswer with POST "
                    f"/v1/certifications/{self.process_id}/clarification.",
                )
            ],
        )

    async def _answer_clarification(self, cmd: AnswerClarification) -> None:
        """R-CERT-3: the answer goes into the attempt's history and the review returns to the
        expert who asked."""
        self._check_owner(cmd.actor)
        self._check_clarification_pending()
        asked = self.attempt.pending_clarification
        assert asked is not None
        asked.answer, asked.answered_by = cmd.answer, cmd.actor.sub
        asked.answered_at = workflow.now()
        task = self.open_task(
            CERT_REVIEW,
            assignee=asked.asked_by,
            partner_id=self.inp.partner_id,
            submitted_by=self.attempt.submitted_by,
        )
        await self.commit(
            audit=[
                AuditEntry(
                    actor=cmd.actor.sub,
                    action="clarification_answered",
                    task_id=task.id,
                    comment=cmd.answer,
                    details={"question": asked.question, "asked_by": asked.asked_by},
                )
            ],
            notifications=[self.assignment_notice(task)],
        )

    async def _request_defense(self, cmd: RequestDefense) -> None:
        self._check_defense_requester(cmd.actor)
        self._check_defense()
        audit: list[AuditEntry] = []
        review = self.open_task_of(CERT_REVIEW)
        if review is not None:
            review.status = TaskStatus.cancelled
            audit.append(AuditEntry(actor="system", action="review_suspended", task_id=review.id))
        on_behalf = None if cmd.actor.partner_id == self.inp.partner_id else self.inp.partner_id
        self.attempt.defense = Defense(
            requested_by=cmd.actor.sub,
            requested_at=workflow.now(),
            reason=cmd.reason,
            on_behalf_of=on_behalf,
        )
        task = self.open_task(
            CERT_DEFENSE,
            candidate_role=Role.cert_ops,
            partner_id=self.inp.partner_id,
            submitted_by=self.attempt.submitted_by,
        )
        audit.insert(
            0,
            AuditEntry(
                actor=cmd.actor.sub,
                action="defense_requested",
                task_id=task.id,
                comment=cmd.reason,
                details={"attempt": self.attempt.number}
                | ({"on_behalf_of": on_behalf} if on_behalf else {}),
            ),
        )
        notes = [self.assignment_notice(task)]
        if on_behalf:  # R-CERT-3: the partner hears who asked for it
            notes.append(
                self._partner_notice(
                    "defense requested on your behalf",
                    f"{cmd.actor.sub} requested an online defense on your behalf.\n"
                    f"Reason: {cmd.reason}",
                )
            )
        await self.commit(audit=audit, notifications=notes)

    async def _schedule_defense(
        self, task: HumanTask, cmd: CompleteTask, data: DefenseSchedule
    ) -> None:
        defense = self.attempt.defense
        assert defense is not None
        defense.scheduled_at, defense.meeting = data.scheduled_at, data.meeting
        task.data = cmd.data  # the task stays open until the defense is held
        await self.commit(
            audit=[
                AuditEntry(
                    actor=cmd.actor.sub,
                    action="defense_scheduled",
                    task_id=task.id,
                    comment=cmd.comment,
                    details={
                        "scheduled_at": utc_iso(data.scheduled_at),
                        "meeting": data.meeting,
                    },
                )
            ],
            notifications=[
                self._partner_notice(
                    f"defense scheduled for {utc_text(data.scheduled_at)}",
                    f"Your online defense is scheduled for {utc_text(data.scheduled_at)}."
                    + (f"\nWhere: {data.meeting}" if data.meeting else ""),
                )
            ],
        )

    async def _defense_held(self, task: HumanTask, cmd: CompleteTask, data: DefenseHeld) -> None:
        defense = self.attempt.defense
        assert defense is not None
        self.finish_task(task, cmd)
        defense.held_at = data.held_at or workflow.now()
        defense.held_by, defense.minutes = cmd.actor.sub, cmd.comment
        # R-CERT-3: then the experts decide, on the evidence and what the defense showed.
        await self._open_review(
            [
                AuditEntry(
                    actor=cmd.actor.sub,
                    action="defense_held",
                    task_id=task.id,
                    comment=cmd.comment,
                    details={"held_at": utc_iso(defense.held_at)},
                )
            ]
        )

    async def _recertify(self, cmd: Recertify) -> None:
        self._check_owner(cmd.actor)
        self._check_recertify()
        self.attempt = Attempt(
            number=self.attempt.number + 1,
            kind="recertification" if self.periods else "certification",
            submitted_by=cmd.actor.sub,
            submitted_at=workflow.now(),
            evidence=cmd.evidence,
            comment=cmd.comment,
        )
        await self._open_review(
            [
                AuditEntry(
                    actor=cmd.actor.sub,
                    action=f"{self.attempt.kind}_requested",
                    comment=cmd.comment,
                    details={
                        "attempt": self.attempt.number,
                        "evidence": [e.model_dump(mode="json") for e in cmd.evidence],
                    },
                )
            ]
        )
        self.next_attempt_started = True  # a new cycle: the main loop continues-as-new

    # --- the certificate's calendar (R-CERT-6/7/8) ------------------------------------------

    def process_deadline(self) -> datetime | None:
        return min((n.at for n in self.notices if n.state == "scheduled"), default=None)

    async def on_process_deadline(self) -> None:
        now = workflow.now()
        period = self.periods[-1]
        busy = self.open_task_of() is not None or self.attempt.pending_clarification is not None
        audit: list[AuditEntry] = []
        notes: list[Notification] = []
        for notice in self.notices:
            if notice.state != "scheduled" or notice.at > now:
                continue
            details = {"at": utc_iso(notice.at), "valid_until": utc_iso(period.valid_until)}
            if notice.kind == "reminder" and (busy or now >= period.valid_until):
                # the partner is already recertifying, or the reminder comes too late to help
                notice.state = "skipped"
                audit.append(AuditEntry(actor="system", action="reminder_skipped", details=details))
                continue
            notice.state = "sent"
            audit.append(
                AuditEntry(actor="system", action=NOTICE_ACTIONS[notice.kind], details=details)
            )
            notes.append(self._calendar_notice(notice.kind, period, recertifying=busy))
        await self.commit(audit=audit, notifications=notes)

    # --- checks, shared by validators (before history) and the main loop -------------------

    def check_decision(self, task: HumanTask, cmd: CompleteTask, data: BaseModel | None) -> None:
        now = workflow.now()
        if cmd.outcome == "clarify" and not self.clarify_rule:
            refuse("PF.INVALID_OUTCOME", "this certification began before clarifications existed")
        if isinstance(data, ReviewDecision) and data.failed_without_note:
            refuse(
                "PF.IMPROVEMENT_NOTE_REQUIRED",
                "every failed item needs an improvement note (R-CERT-2)",
                item_ids=data.failed_without_note,
            )
        if isinstance(data, DefenseSchedule) and data.scheduled_at <= now:
            refuse("PF.INVALID_DATA", "a defense is scheduled in the future")
        if isinstance(data, DefenseHeld) and data.held_at is not None and data.held_at > now:
            refuse("PF.INVALID_DATA", "held_at is in the future")

    def _check_identity(self) -> None:
        subject = self.cert.subject
        if not re.fullmatch(SUBJECT_PATTERN, subject) or self.process_id != certification_id(
            self.inp.partner_id, subject
        ):
            refuse(
                "PF.BAD_REQUEST",
                f"workflow id {self.process_id} is not cert-<partner>-<subject slug>",
            )

    def _check_owner(self, actor: Principal) -> None:
        if actor.partner_id != self.inp.partner_id or not actor.has(*PARTNER_ROLES):
            refuse("PF.NOT_OWNER", "only the partner holding this certification may do this")

    def _check_defense_requester(self, actor: Principal) -> None:
        """R-CERT-3: the partner, or on its behalf its PDM or certification operations (staff;
        that a PDM is this partner's is the API's check, against the routing table)."""
        if self.clarify_rule and actor.partner_id is None and actor.has(Role.pdm, Role.cert_ops):
            return
        self._check_owner(actor)

    def _check_clarification_pending(self) -> None:
        if self.attempt.pending_clarification is None:
            refuse(
                "PF.WRONG_STATE",
                "no question of the expert is waiting for an answer",
                status=self._status(workflow.now()).value,
            )

    def _check_defense(self) -> None:
        if self.attempt.defense is not None:
            refuse(
                "PF.DEFENSE_ALREADY_USED",
                "a defense was already requested for this attempt (one per attempt)",
                requested_at=utc_iso(self.attempt.defense.requested_at),
            )
        if self.open_task_of(CERT_REVIEW) is not None:
            return  # disputing a pending review
        until = self._defense_until()
        if until is None:
            refuse(
                "PF.WRONG_STATE",
                "a defense disputes a pending review or a failed one",
                status=self._status(workflow.now()).value,
            )
        if workflow.now() >= until:
            refuse(
                "PF.DEFENSE_PERIOD_OVER",
                f"a defense could be requested until {utc_text(until)}",
                defense_until=utc_iso(until),
            )

    def _check_recertify(self) -> None:
        now = workflow.now()
        if self.open_task_of() is not None or self.attempt.pending_clarification is not None:
            refuse(
                "PF.WRONG_STATE",
                "a review or defense of this certification is in progress",
                status=self._status(now).value,
            )
        if not self.periods:
            return  # a new attempt after a failed first certification
        opens = self._window_opens_at()
        assert opens is not None
        if now < opens:
            # R-CERT-9
            refuse(
                "PF.RECERT_WINDOW_NOT_OPEN",
                f"recertification opens on {utc_text(opens)}, "
                f"{self.policy.recert_window} before the certificate expires",
                window_opens_at=utc_iso(opens),
                valid_until=utc_iso(self.periods[-1].valid_until),
            )

    # --- state and views ---------------------------------------------------------------------

    def _window_opens_at(self) -> datetime | None:
        if not self.periods:
            return None
        return recertification_window_opens(self.periods[-1].valid_until, self.policy.recert_window)

    def _defense_until(self) -> datetime | None:
        """Until when a failure of the current attempt may still be disputed, if it may."""
        r = self.result
        if r is None or r.outcome != "fail" or r.attempt != self.attempt.number:
            return None
        return defense_until(r.decided_at, self.policy.cert_defense_period)

    def _status(self, now: datetime) -> CertificationStatus:
        if self.attempt.pending_clarification is not None:
            return S.clarification_requested
        if self.open_task_of(CERT_DEFENSE) is not None:
            scheduled = self.attempt.defense and self.attempt.defense.scheduled_at
            return S.defense_scheduled if scheduled else S.defense_requested
        if self.open_task_of(CERT_REVIEW) is not None:
            return S.recertifying if self.attempt.kind == "recertification" else S.in_review
        if not self.periods:
            return S.failed if self.result is not None else S.submitted
        opens = self._window_opens_at()
        assert opens is not None
        if now >= self.periods[-1].valid_until:
            return S.expired
        return S.window_open if now >= opens else S.passed

    def visibility_due(self) -> datetime | None:
        """DueAt: the next moment anything happens: a task's due time, the scheduled defense, or
        the certificate's next date (window opening, reminder, expiry)."""
        moments = [super().visibility_due(), self.process_deadline()]
        defense = self.attempt.defense
        if self.open_task_of(CERT_DEFENSE) is not None and defense is not None:
            moments.append(defense.scheduled_at)
        return min((m for m in moments if m is not None), default=None)

    def view(self) -> dict[str, Any]:
        open_task = self.open_task_of()
        latest = self.periods[-1] if self.periods else None
        until = self._defense_until()
        return CertificationView(
            id=self.process_id,
            partner_id=self.inp.partner_id,
            kind=self.cert.kind,
            subject=self.cert.subject,
            level=self.cert.level,
            # as of the last transition: every date that changes the status is one
            status=self._status(self.updated_at),
            passed_at=latest.passed_at if latest else None,
            valid_until=latest.valid_until if latest else None,
            window_opens_at=self._window_opens_at(),
            items=self.result.items if self.result else [],
            result=self.result,
            attempt=self.attempt,
            defense_until=until if until and self.attempt.defense is None else None,
            periods=self.periods,
            notices=self.notices,
            open_task_id=open_task.id if open_task else None,
            submitted_by=self.submitted_by,
            created_at=self.created_at,
            updated_at=self.updated_at,
        ).model_dump(mode="json")

    def record(self, now: datetime) -> ProcessRecord:
        return ProcessRecord(
            id=self.process_id,
            process=self.process,
            partner_id=self.inp.partner_id,
            status=self._status(self.updated_at).value,
            submitted_by=self.submitted_by,
            match_key=certification_match_key(self.inp.partner_id, self.cert.subject),
            version=self.version,
            created_at=self.created_at,
            updated_at=now,
            view=self.view(),
        )

    def describe(self) -> str:
        now = workflow.now()
        status = self._status(now)
        task = self.open_task_of()
        label = self._label()
        asked = self.attempt.pending_clarification
        if asked is not None:
            return (
                f"{label}: expert {asked.asked_by} asked a question; waiting for the partner's "
                "answer"
            )
        if task is not None and task.kind == CERT_REVIEW.name:
            return f"{label}: waiting for a certification expert to review (task {task.id})"
        if task is not None:
            defense = self.attempt.defense
            if defense is not None and defense.scheduled_at is not None:
                return (
                    f"{label}: defense scheduled for {utc_text(defense.scheduled_at)}; "
                    f"waiting for certification operations to record it held (task {task.id})"
                )
            return (
                f"{label}: defense requested; waiting for certification operations to "
                f"schedule it (task {task.id})"
            )
        if status is S.failed:
            until = self._defense_until()
            if until is not None and self.attempt.defense is None and now < until:
                return (
                    f"{label}: failed; the partner may request a defense until "
                    f"{utc_text(until)} or submit a new attempt"
                )
            return f"{label}: failed; waiting for the partner to submit a new attempt"
        period = self.periods[-1]
        if status is S.expired:
            return f"{label}: expired {period.valid_until:%Y-%m-%d}; waiting for a recertification"
        opens = self._window_opens_at()
        assert opens is not None
        if status is S.window_open:
            return (
                f"{label}: recertification window open; expires "
                f"{utc_text(period.valid_until)} unless recertified"
            )
        return (
            f"{label}: passed, valid until {utc_text(period.valid_until)}; "
            f"recertification opens {utc_text(opens)}"
        )

    # --- helpers ---------------------------------------------------------------------------

    async def _open_review(self, audit: list[AuditEntry]) -> None:
        task = self.open_task(
            CERT_REVIEW,
            candidate_role=Role.cert_reviewer,
            partner_id=self.inp.partner_id,
            submitted_by=self.attempt.submitted_by,
        )
        await self.commit(audit=audit, notifications=[self.assignment_notice(task)])

    def _next_input(self) -> CertificationInput:
        return CertificationInput(
            partner_id=self.inp.partner_id,
            submitted_by=self.inp.submitted_by,
            certification=self.cert,
            policy=self.policy,
            carried=CertificationCarried(
                **dict(self.carry()),
                submitted_by=self.submitted_by,
                attempt=self.attempt,
                result=self.result,
                periods=self.periods,
                notices=self.notices,
            ),
        )

    def _label(self) -> str:
        level = f" level {self.cert.level}" if self.cert.level else ""
        return f"{self.cert.kind.value.replace('_', ' ')}{level} '{self.cert.subject}'"

    def _partner_notice(self, subject: str, body: str) -> Notification:
        return Notification(
            recipient=self.attempt.submitted_by,
            subject=f"[partnerflow] certification {self.cert.subject}: {subject}",
            body=f"Certification {self.process_id} ({self._label()}) of partner "
            f"{self.inp.partner_id}.\n{body}",
        )

    def _result_notice(self, result: ReviewResult) -> Notification:
        """R-CERT-4: the result with every item's outcome and improvement note."""
        lines = [f"Result: {'passed' if result.outcome == 'pass' else 'failed'}."]
        if result.outcome == "pass":
            period = self.periods[-1]
            opens = self._window_opens_at()
            lines.append(
                f"Valid until {utc_text(period.valid_until)}; "
                f"recertification opens {utc_text(opens)}."
            )
        lines.append("Assessment:")
        for item in result.items:
            kind = "mandatory" if item.mandatory else "optional"
            verdict = "pass" if item.passed else "fail"
            note = f" - improvement note: {item.note}" if item.note else ""
            lines.append(f"- {item.item_id} ({kind}): {verdict}{note}")
        if result.comment:
            lines.append(f"Expert's comment: {result.comment}")
        until = self._defense_until()
        if until is not None and self.attempt.defense is None:
            lines.append(f"You may request an online defense until {utc_text(until)}.")
        return self._partner_notice(
            "passed" if result.outcome == "pass" else "failed", "\n".join(lines)
        )

    def _calendar_notice(self, kind: str, period: Period, *, recertifying: bool) -> Notification:
        until = f"{utc_text(period.valid_until)}"
        if kind == "window_opens":
            return self._partner_notice(
                "recertification window open",
                f"The certificate expires {until}. You may recertify from now on.",
            )
        if kind == "reminder":
            return self._partner_notice(
                f"expires {period.valid_until:%Y-%m-%d}",
                f"Reminder: the certificate expires {until} unless recertified.",
            )
        then = (
            "Your recertification is under review." if recertifying else "You may still recertify."
        )
        return self._partner_notice(
            "expired",
            f"The certificate expired {until}. Incentives that depend on it are no longer "
            f"eligible (R-CERT-7). {then}",
        )
