"""The human-task primitive every process workflow is built on.

A process workflow subclasses `ProcessWorkflow`. It gets:
- tasks (`open_task`) with a reminder at half their SLA and escalation on breach;
- the `complete_task` and `reassign_task` Updates, whose validators refuse (writing nothing to
  history) a caller who may not act, a task that is not open, an invalid outcome or data, and a
  decision on one's own item (R-X-5);
- a single writer: Update handlers queue commands and wait; the main loop (`next_command`)
  applies them one at a time and `commit`s each transition to the read model, audit trail and
  outbox in one activity before the caller hears the result;
- one registry of commands (`@command(Type, check=...)` on the apply method) and completions
  (`@completes(kind, *outcomes)`): validators run the registered check, the main loop re-runs
  it and applies; no per-process dispatch;
- search attributes and `current_details` kept in step with every commit, for ops;
- `continue_as_new`, for long-lived processes: it drains queued commands, waits for running
  handlers and carries `version`, `task_seq` and the open tasks into the next run.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar, NoReturn, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeUpdate
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel

    from activities.read_model import ReadModelActivities
    from domain.errors import refuse
    from domain.policy import add_duration, halfway
    from domain.principal import Role
    from domain.projection import AuditEntry, Notification, ProcessRecord, Transition
    from domain.search_attributes import ASSIGNEE, DUE_AT, STAGE
    from domain.tasks import (
        AddComment,
        CarriedProcess,
        ClaimTask,
        Command,
        CompleteTask,
        HumanTask,
        ReassignTask,
        TaskKind,
        TaskStatus,
        UnclaimTask,
        check_claim,
        check_completion,
        check_fresh,
        check_reassign,
        check_unclaim,
        people_named,
    )
    from domain.values import utc_text

# The read model must catch up however long the database is away: retry forever, backing off.
STORE_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
)
STORE_TIMEOUT = timedelta(seconds=30)

# Short idempotent store work (the transition commit, routing and duplicate look-ups) runs as a
# local activity inside the workflow task: no schedule/poll/complete round trip through the
# server (issue 11). Executions started before this change keep their regular activities.
LOCAL_STORE_PATCH = "store-local-activities"
# One attempt of a local store activity; the SDK keeps the workflow task alive meanwhile.
STORE_LOCAL_TIMEOUT = timedelta(seconds=10)
# Retries whose backoff exceeds this wait on a durable timer (the workflow task completes, so
# an Update already accepted is acknowledged) instead of inside the workflow task: with
# STORE_RETRY that is from the fourth attempt on, about 1.4 s into an outage. STORE_RETRY has
# no attempt limit and no schedule-to-close timeout, so however long the database is away the
# write is retried until it lands, as with the regular activity before.
STORE_LOCAL_RETRY_THRESHOLD = timedelta(seconds=1)

ArgT = TypeVar("ArgT")
ResultT = TypeVar("ResultT")


@dataclass
class Pending:
    """A command accepted by an Update validator, waiting for the main loop."""

    command: Command
    done: bool = False
    result: dict[str, Any] | None = None
    error: ApplicationError | None = None
    meta: dict[str, Any] = field(default_factory=dict)


ApplyFn = TypeVar("ApplyFn", bound=Callable[..., Awaitable[Any]])


@dataclass(frozen=True)
class CommandSpec:
    """How a process applies one command type: method names, resolved on the instance (so a
    subclass may override any of them by name).

    - `check(cmd)`: pure (no I/O, no history), raises ApplicationError via `domain.errors.refuse`.
      The Update's validator runs it (after `check_fresh`), and the main loop runs it again just
      before `apply`, since the state may have moved while the command was queued.
    - `recheck`: what the main loop runs instead of `check`, when it must differ from the
      validator's (it may call `workflow.patched`, which a validator must not).
    - `apply(cmd)`: mutates state and commits; returns the Update's answer, or None for `view()`.
    """

    command: type[Command]
    apply: str
    check: str
    recheck: str | None = None


def command(
    command_type: type[Command], *, check: str, recheck: str | None = None
) -> Callable[[ApplyFn], ApplyFn]:
    """Register the decorated async method as the `apply` of `command_type` (see `CommandSpec`);
    `check` (and `recheck`) name methods of the same class. `ProcessWorkflow` collects these per
    class into `commands`, which its validators and main loop dispatch on."""

    def mark(apply: ApplyFn) -> ApplyFn:
        apply.__pf_command__ = (command_type, check, recheck)  # type: ignore[attr-defined]
        return apply

    return mark


def completes(kind: TaskKind, *outcomes: str) -> Callable[[ApplyFn], ApplyFn]:
    """Register the decorated `async (self, task, cmd, data)` method as what completing a task of
    `kind` with one of `outcomes` (all of the kind's when none are named) does, once the checks
    have passed (`data` is `cmd.data` parsed by the outcome's model). It mutates and commits."""

    def mark(apply: ApplyFn) -> ApplyFn:
        apply.__pf_completes__ = (kind.name, outcomes or (None,))  # type: ignore[attr-defined]
        return apply

    return mark


class ProcessWorkflow:
    """Base of every process workflow. Subclasses set `process` and `task_kinds` and implement
    `record`, `view` and `describe`.

    A command is declared once: an `@workflow.update` one-liner (`return await
    self.enqueue(cmd)`), its validator one-liner (`self.validate(cmd)`), and an `apply` method
    decorated with `@command(CommandType, check="_check_x")`. Nothing else dispatches."""

    process: ClassVar[str]
    task_kinds: ClassVar[dict[str, TaskKind]]
    commands: ClassVar[dict[type[Command], CommandSpec]] = {}
    # Updates that take no command: they wait for a state and answer it, changing nothing.
    waiting_updates: ClassVar[frozenset[str]] = frozenset({"submitted"})
    # (task kind, outcome or None for all) -> the `@completes` method applying it
    completions: ClassVar[dict[tuple[str, str | None], str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        specs: dict[type[Command], CommandSpec] = {}
        completions: dict[tuple[str, str | None], str] = {}
        for klass in reversed(cls.__mro__):
            for name, attr in vars(klass).items():
                mark = getattr(attr, "__pf_command__", None)
                if mark is not None:
                    command_type, check, recheck = mark
                    specs[command_type] = CommandSpec(command_type, name, check, recheck)
                done = getattr(attr, "__pf_completes__", None)
                if done is not None:
                    kind, outcomes = done
                    completions.update({(kind, outcome): name for outcome in outcomes})
        cls.commands = specs
        cls.completions = completions

    def __init__(self) -> None:
        self.tasks: dict[str, HumanTask] = {}
        self.task_seq = 0
        self.version = 0  # of the last transition sent to the read model
        self.recorded = 0  # of the last transition the read model has
        self.queue: deque[Pending] = deque()
        self.process_id = workflow.info().workflow_id
        self.created_at = self.updated_at = workflow.now()

    # --- what a subclass provides ---------------------------------------------------------

    def record(self, now: datetime) -> ProcessRecord:
        raise NotImplementedError

    def view(self) -> dict[str, Any]:
        raise NotImplementedError

    def describe(self) -> str:
        """One sentence for the Temporal UI: what the process waits for, on whom, until when."""
        raise NotImplementedError

    def process_deadline(self) -> datetime | None:
        """The next process-level moment (e.g. a certificate's expiry), besides task deadlines."""
        return None

    async def on_process_deadline(self) -> None:
        """Called by the main loop once `process_deadline()` has passed; must move it on."""

    def check_decision(self, task: HumanTask, cmd: CompleteTask, data: BaseModel | None) -> None:
        """Process-specific refusals for a completion, pure (no I/O): raise to refuse."""

    def check_reassign_target(self, task: HumanTask, cmd: ReassignTask) -> None:
        """R-X-5: refuse (raise `PF.ASSIGNEE_NOT_ELIGIBLE`) moving `task` to someone the process
        knows may not act on it. There is no staff directory, so what is checked here is what
        the process itself knows: the item's submitter, and whatever a subclass adds (the other
        holders of a two-person duty). A role the new assignee lacks is refused when they try to
        complete (their token carries their roles; `check_decision`). Pure: runs in validators."""
        if task.submitted_by is not None and cmd.assignee == task.submitted_by:
            refuse(
                "PF.ASSIGNEE_NOT_ELIGIBLE",
                f"{cmd.assignee} submitted this item and may not decide on it (R-X-5)",
                assignee=cmd.assignee,
            )

    def visibility_due(self) -> datetime | None:
        """What `DueAt` shows ops: by default the earliest due time of an open task. A process
        with its own moments (a scheduled defense, an expiry) adds them."""
        return min(
            (t.due_at for t in self.tasks.values() if t.status is TaskStatus.open and t.due_at),
            default=None,
        )

    # --- Updates and queries every process has ---------------------------------------------

    @workflow.update
    async def complete_task(self, cmd: CompleteTask) -> dict[str, Any]:
        return await self.enqueue(cmd)

    @complete_task.validator
    def _validate_complete_task(self, cmd: CompleteTask) -> None:
        self.validate(cmd)

    @workflow.update
    async def reassign_task(self, cmd: ReassignTask) -> dict[str, Any]:
        return await self.enqueue(cmd)

    @reassign_task.validator
    def _validate_reassign_task(self, cmd: ReassignTask) -> None:
        self.validate(cmd)

    @workflow.update
    async def claim_task(self, cmd: ClaimTask) -> dict[str, Any]:
        """Take a task offered to one of the caller's roles; answers the task (HumanTask JSON).
        Two claims at once: the validator passes both, the main loop applies one and refuses
        the other with PF.TASK_CLAIMED."""
        return await self.enqueue(cmd)

    @claim_task.validator
    def _validate_claim_task(self, cmd: ClaimTask) -> None:
        self.validate(cmd)

    @workflow.update
    async def unclaim_task(self, cmd: UnclaimTask) -> dict[str, Any]:
        """Give a claimed task back to its role (the claimer, or a lead); answers the task."""
        return await self.enqueue(cmd)

    @unclaim_task.validator
    def _validate_unclaim_task(self, cmd: UnclaimTask) -> None:
        self.validate(cmd)

    @workflow.update
    async def add_comment(self, cmd: AddComment) -> dict[str, Any]:
        """R-X-3: a comment on the process, committed as a `commented` audit entry (it shows in
        the process's history); answers the entry. Who may comment is checked by the API."""
        return await self.enqueue(cmd)

    @add_comment.validator
    def _validate_add_comment(self, cmd: AddComment) -> None:
        self.validate(cmd)

    @workflow.update
    async def submitted(self) -> dict[str, Any]:
        """Answers once the submission is routed and recorded: the API starts workflows with it
        (update-with-start), so the caller's 201 already shows status, assignee and flags."""
        await workflow.wait_condition(lambda: self.recorded > 0)
        return self.view()

    @workflow.query
    def state(self) -> dict[str, Any]:
        return self.view()

    @workflow.query
    def open_tasks(self) -> list[HumanTask]:
        return [t for t in self.tasks.values() if t.status is TaskStatus.open]

    # --- commands -----------------------------------------------------------------------------

    async def enqueue(self, command: Command) -> dict[str, Any]:
        pending = Pending(command)
        self.queue.append(pending)
        await workflow.wait_condition(lambda: pending.done)
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    def reject(self, pending: Pending, error: ApplicationError) -> None:
        pending.error = error
        pending.done = True

    async def next_command(self, is_final: Callable[[], bool] | None = None) -> Pending | None:
        """The next queued command; meanwhile, fire task reminders and escalations when due.

        None once `is_final()` holds with nothing queued: a process-level deadline (an
        invitation's expiry) can end a process without any command.
        """
        while True:
            if self.queue:
                return self.queue.popleft()
            if is_final is not None and is_final():
                return None
            deadline = self._next_deadline()
            if deadline is None:
                await workflow.wait_condition(lambda: bool(self.queue))
                continue
            remaining = (deadline - workflow.now()).total_seconds()
            if remaining > 0:
                try:
                    await workflow.wait_condition(
                        lambda: bool(self.queue), timeout=timedelta(seconds=remaining)
                    )
                    continue
                except TimeoutError:
                    pass
            await self._fire_deadlines()

    def validate(self, cmd: Command) -> None:
        """Every command Update's validator: refuse a stale request (`not_after`,
        PF.REQUEST_EXPIRED), then run the command's registered `check`. Pure."""
        check_fresh(cmd, workflow.now())
        getattr(self, self._spec_of(cmd).check)(cmd)

    def _spec_of(self, cmd: Command) -> CommandSpec:
        spec = self.commands.get(type(cmd))
        if spec is None:  # pragma: no cover - test_commands proves every Update registers one
            refuse("PF.BAD_REQUEST", f"unknown command {type(cmd).__name__}")
        return spec

    # --- the commands every process has: check, then apply -----------------------------------

    def check_complete(self, cmd: CompleteTask) -> tuple[HumanTask, BaseModel | None]:
        task = self.tasks.get(cmd.task_id)
        data = check_completion(task, self._kind_of(task), cmd)
        assert task is not None
        self.check_decision(task, cmd, data)
        return task, data

    def validate_complete(self, cmd: CompleteTask) -> None:
        """The `complete_task` validator's check: `check_complete`, then R-X-5 on the people the
        outcome's data names (`check_people_named`). The main loop re-runs `check_complete`
        alone: the people check came after histories were recorded, and validators do not run
        on replay, so those histories replay unchanged (no `workflow.patched` needed); who a
        queued command names does not change while it waits."""
        task, _ = self.check_complete(cmd)
        self.check_people_named(task, cmd)

    def check_people_named(self, task: HumanTask, cmd: CompleteTask) -> None:
        """R-X-5: a person the outcome names who will hold the next task (`NamesPerson`
        `holds_task`, e.g. po.dispatch's `pdm`) is never the item's submitter (raises
        PF.ASSIGNEE_NOT_ELIGIBLE). Whether the person exists is the API's check (it needs the
        store: `store.directory`). Pure."""
        for name, person, mark in people_named(self._kind_of(task), cmd.outcome, cmd.data):
            if mark.holds_task and task.submitted_by is not None and person == task.submitted_by:
                refuse(
                    "PF.ASSIGNEE_NOT_ELIGIBLE",
                    f"{person} submitted this item and may not hold its {task.kind} work (R-X-5)",
                    field=f"data.{name}",
                    person=person,
                )

    @command(CompleteTask, check="validate_complete", recheck="check_complete")
    async def apply_complete(self, cmd: CompleteTask) -> dict[str, Any] | None:
        task = self.tasks[cmd.task_id]
        model = self.task_kinds[task.kind].outcomes[cmd.outcome].data_model
        data = None if model is None else model.model_validate(cmd.data)
        apply = self.completions.get((task.kind, cmd.outcome)) or self.completions.get(
            (task.kind, None)
        )
        if apply is None:  # pragma: no cover - test_commands proves every outcome registers one
            refuse("PF.BAD_REQUEST", f"nothing completes {task.kind} with {cmd.outcome!r}")
        await getattr(self, apply)(task, cmd, data)
        return None

    def check_reassign(self, cmd: ReassignTask) -> None:
        task = self.tasks.get(cmd.task_id)
        check_reassign(task, self._kind_of(task), cmd)
        assert task is not None
        # validator only (never re-run by `recheck_reassign`, so replays of older runs that
        # moved a task to its own holder are unchanged): a move to the holder changes nothing
        if task.assignee == cmd.assignee and task.claimed_by is None:
            refuse(
                "PF.TASK_ALREADY_ASSIGNED",
                f"task {task.id} is already assigned to {cmd.assignee}",
            )
        self.check_reassign_target(task, cmd)

    def recheck_reassign(self, cmd: ReassignTask) -> None:
        task = self.tasks.get(cmd.task_id)
        check_reassign(task, self._kind_of(task), cmd)
        assert task is not None
        if workflow.patched("reassign-target-eligible"):  # R-X-5; older runs did not check
            self.check_reassign_target(task, cmd)

    @command(ReassignTask, check="check_reassign", recheck="recheck_reassign")
    async def apply_reassign(self, cmd: ReassignTask) -> dict[str, Any] | None:
        task = self.tasks[cmd.task_id]
        previous = task.assignee or str(task.candidate_role)
        task.assignee = cmd.assignee
        task.candidate_role = None
        task.claimed_by = None  # a lead's reassignment overrides a claim
        self._restart_clock(task)
        await self.commit(
            audit=[
                AuditEntry(
                    actor=cmd.actor.sub,
                    action="task_reassigned",
                    task_id=task.id,
                    comment=cmd.comment,
                    details={"from": previous, "to": cmd.assignee},
                )
            ],
            notifications=[self.assignment_notice(task)],
        )
        return self.view()

    def check_claim(self, cmd: ClaimTask) -> None:
        check_claim(self.tasks.get(cmd.task_id), cmd)

    @command(ClaimTask, check="check_claim")
    async def apply_claim(self, cmd: ClaimTask) -> dict[str, Any] | None:
        task = self.tasks[cmd.task_id]
        if task.claimed_by != cmd.actor.sub:  # a repeated claim changes nothing
            task.claimed_by = cmd.actor.sub
            await self.commit(
                audit=[AuditEntry(actor=cmd.actor.sub, action="task_claimed", task_id=task.id)]
            )
        return task.model_dump(mode="json")

    def check_unclaim(self, cmd: UnclaimTask) -> None:
        task = self.tasks.get(cmd.task_id)
        check_unclaim(task, self._kind_of(task), cmd)

    @command(UnclaimTask, check="check_unclaim")
    async def apply_unclaim(self, cmd: UnclaimTask) -> dict[str, Any] | None:
        task = self.tasks[cmd.task_id]
        previous, task.claimed_by = task.claimed_by, None
        await self.commit(
            audit=[
                AuditEntry(
                    actor=cmd.actor.sub,
                    action="task_unclaimed",
                    task_id=task.id,
                    comment=cmd.comment,
                    details={"claimed_by": previous},
                )
            ]
        )
        return task.model_dump(mode="json")

    def check_comment(self, cmd: AddComment) -> None:
        if not cmd.body.strip():
            refuse("PF.VALIDATION_FAILED", "a comment needs some text")

    @command(AddComment, check="check_comment")
    async def apply_comment(self, cmd: AddComment) -> dict[str, Any] | None:
        entry = AuditEntry(actor=cmd.actor.sub, action="commented", comment=cmd.body)
        await self.commit(audit=[entry])
        return {
            **entry.model_dump(mode="json"),
            "at": self.updated_at.isoformat(),
            "version": self.version,
        }

    # --- tasks --------------------------------------------------------------------------------

    def open_task(
        self,
        kind: TaskKind,
        *,
        assignee: str | None = None,
        candidate_role: Role | None = None,
        sla: str | None = None,
        escalate_to_role: Role | None = None,
        partner_id: str | None = None,
        submitted_by: str | None = None,
        assignee_partner_id: str | None = None,
    ) -> HumanTask:
        assert assignee or candidate_role, "a task needs a person or a role"
        self.task_seq += 1
        task = HumanTask(
            id=f"{self.process_id}.{self.task_seq}",
            kind=kind.name,
            process=self.process,
            process_id=self.process_id,
            partner_id=partner_id,
            assignee=assignee,
            candidate_role=candidate_role,
            assignee_partner_id=assignee_partner_id,
            created_at=workflow.now(),
            sla=sla,
            escalate_to_role=escalate_to_role,
            submitted_by=submitted_by,
        )
        self._restart_clock(task)
        self.tasks[task.id] = task
        return task

    def finish_task(self, task: HumanTask, cmd: CompleteTask) -> None:
        task.status = TaskStatus.completed
        task.outcome = cmd.outcome
        task.completed_by = cmd.actor.sub
        task.completed_at = workflow.now()
        task.comment = cmd.comment
        task.data = cmd.data

    def cancel_open_tasks(self) -> None:
        for task in self.tasks.values():
            if task.status is TaskStatus.open:
                task.status = TaskStatus.cancelled

    def open_task_of(self, kind: TaskKind | None = None) -> HumanTask | None:
        for task in self.tasks.values():
            if task.status is TaskStatus.open and (kind is None or task.kind == kind.name):
                return task
        return None

    def assignment_notice(self, task: HumanTask) -> Notification:
        due = f", due {utc_text(task.due_at)}" if task.due_at else ""
        return Notification(
            recipient=task.assignee or str(task.candidate_role),
            subject=f"[partnerflow] {task.kind} task {task.id} is waiting for you",
            body=f"Task {task.id} ({task.kind}) on {self.process} {self.process_id}{due}.",
        )

    def _restart_clock(self, task: HumanTask) -> None:
        task.reminded = False
        task.escalated = False
        if task.sla is None:
            task.due_at = task.remind_at = None
            return
        start = workflow.now()
        task.due_at = add_duration(start, task.sla)
        task.remind_at = halfway(start, task.due_at)

    def _kind_of(self, task: HumanTask | None) -> TaskKind:
        if task is None:
            refuse("PF.TASK_NOT_FOUND", "no such task in this process")
        return self.task_kinds[task.kind]

    def _next_deadline(self) -> datetime | None:
        deadlines = [d for t in self.tasks.values() if (d := t.next_deadline()) is not None]
        if (own := self.process_deadline()) is not None:
            deadlines.append(own)
        return min(deadlines, default=None)

    async def _fire_deadlines(self) -> None:
        now = workflow.now()
        own = self.process_deadline()
        if own is not None and own <= now:
            await self.on_process_deadline()
        audit: list[AuditEntry] = []
        notes: list[Notification] = []
        for task in self.tasks.values():
            deadline = task.next_deadline()
            if deadline is None or deadline > now:
                continue
            if not task.reminded and task.remind_at is not None:
                task.reminded = True
                audit.append(AuditEntry(actor="system", action="task_reminded", task_id=task.id))
                notes.append(
                    Notification(
                        recipient=task.assignee or str(task.candidate_role),
                        subject=f"[partnerflow] reminder: {task.kind} task {task.id}",
                        body=f"Task {task.id} is due {utc_text(task.due_at)}.",
                    )
                )
            else:
                task.escalated = True
                audit.append(
                    AuditEntry(
                        actor="system",
                        action="task_escalated",
                        task_id=task.id,
                        details={"to": task.escalate_to_role, "was_due": str(task.due_at)},
                    )
                )
                if task.escalate_to_role is not None:
                    notes.append(
                        Notification(
                            recipient=str(task.escalate_to_role),
                            subject=f"[partnerflow] overdue: {task.kind} task {task.id}",
                            body=(
                                f"Task {task.id} for {task.who} passed its deadline "
                                f"{utc_text(task.due_at)}; you may reassign it."
                            ),
                        )
                    )
        if audit:
            await self.commit(audit=audit, notifications=notes)

    # --- the one way a transition is written ----------------------------------------------

    async def commit(
        self, *, audit: list[AuditEntry], notifications: list[Notification] | None = None
    ) -> None:
        self.version += 1
        self.updated_at = workflow.now()
        transition = Transition(
            record=self.record(self.updated_at),
            tasks=list(self.tasks.values()),
            audit=audit,
            notifications=notifications or [],
            origin_run_id=workflow.info().first_execution_run_id,
        )
        await self.store_activity(ReadModelActivities.apply_transition, transition)
        self.recorded = self.version
        self._publish_visibility()
        for entry in audit:  # one log line per recorded action; never during replay
            workflow.logger.info(
                "%s %s by %s",
                self.process,
                entry.action,
                entry.actor,
                extra={
                    "task_id": entry.task_id,
                    "actor": entry.actor,
                    "process_kind": self.process,
                },
            )

    async def store_activity(
        self,
        activity: Callable[[Any, ArgT], Awaitable[ResultT]],
        arg: ArgT,
    ) -> ResultT:
        """Run a short idempotent read-model activity: local (inside the workflow task) in
        executions that have the `store-local-activities` patch, a regular activity in those
        started before it (their histories replay unchanged). Retried until it succeeds."""
        if workflow.patched(LOCAL_STORE_PATCH):
            return await workflow.execute_local_activity_method(
                activity,
                arg,
                start_to_close_timeout=STORE_LOCAL_TIMEOUT,
                retry_policy=STORE_RETRY,
                local_retry_threshold=STORE_LOCAL_RETRY_THRESHOLD,
            )
        return await workflow.execute_activity_method(
            activity, arg, start_to_close_timeout=STORE_TIMEOUT, retry_policy=STORE_RETRY
        )

    def _publish_visibility(self) -> None:
        open_tasks = [t for t in self.tasks.values() if t.status is TaskStatus.open]
        due = self.visibility_due()
        updates: list[SearchAttributeUpdate[Any]] = [
            STAGE.value_set(str(self.record(workflow.now()).status))
        ]
        assignee = next((t.assignee or str(t.candidate_role) for t in open_tasks), None)
        updates.append(ASSIGNEE.value_set(assignee) if assignee else ASSIGNEE.value_unset())
        updates.append(DUE_AT.value_set(due) if due else DUE_AT.value_unset())
        workflow.upsert_search_attributes(updates)
        workflow.set_current_details(self.describe())

    async def serve_until(self, is_final: Callable[[], bool]) -> None:
        """Apply queued commands (`_serve_one`) until `is_final()`; refusals go to their caller."""
        while not is_final():
            pending = await self.next_command(is_final)
            if pending is None:
                break
            await self._serve_one(pending)
        # Commands that raced the final transition are refused, never silently dropped.
        while self.queue:
            self.reject(
                self.queue.popleft(),
                ApplicationError(
                    f"{self.process} {self.process_id} is closed",
                    type="PF.PROCESS_CLOSED",
                    non_retryable=True,
                ),
            )

    async def _serve_one(self, pending: Pending) -> None:
        """Apply one queued command: its registered check again (the state may have moved while
        it was queued), then its apply; a refusal (ApplicationError) goes back to its caller."""
        cmd = pending.command
        try:
            spec = self._spec_of(cmd)
            getattr(self, spec.recheck or spec.check)(cmd)
            result = await getattr(self, spec.apply)(cmd)
        except ApplicationError as exc:
            self.reject(pending, exc)
            return
        pending.result = self.view() if result is None else result
        pending.done = True

    # --- continue-as-new -------------------------------------------------------------------

    def carry(self) -> CarriedProcess:
        """The primitive's part of what the next run needs; a process adds its own state."""
        return CarriedProcess(
            version=self.version,
            task_seq=self.task_seq,
            created_at=self.created_at,
            updated_at=self.updated_at,
            open_tasks=[t for t in self.tasks.values() if t.status is TaskStatus.open],
        )

    def restore(self, carried: CarriedProcess) -> None:
        """Start a run where the previous one stopped (everything it had is already recorded)."""
        self.version = self.recorded = carried.version
        self.task_seq = carried.task_seq
        self.created_at, self.updated_at = carried.created_at, carried.updated_at
        self.tasks = {t.id: t for t in carried.open_tasks}

    async def continue_as_new(self, next_input: Callable[[], BaseModel]) -> NoReturn:
        """Hand over to a new run. Commands already accepted are applied here first (their
        callers are waiting on this run), then in-flight handlers finish; `next_input` is
        built last, so it carries everything they changed."""
        while True:
            await workflow.wait_condition(
                lambda: bool(self.queue) or workflow.all_handlers_finished()
            )
            if not self.queue:
                break
            await self._serve_one(self.queue.popleft())
        workflow.continue_as_new(next_input())

    async def finish(self) -> dict[str, Any]:
        """Let in-flight Update handlers return before the run completes."""
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self.view()
