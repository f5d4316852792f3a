"""The human task: every wait on a person in every process is one of these.

The data shapes and the pure rules for completing a task (who may, which outcomes, what data)
live here so the workflow validators and the API agree; the waiting itself (reminder at half
the SLA, escalation on breach) lives in `workflows.human_task`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from domain.errors import refuse
from domain.principal import Principal, Role
from domain.values import UtcDateTime


@dataclass(frozen=True)
class NamesPerson:
    """Marks an outcome data field that names a person: `Annotated[Code, NamesPerson("pdm")]`.

    `directory` says in which capacity (a key of `store.directory.DIRECTORIES`: `pdm`, `psm`):
    the API refuses a completion naming someone that directory does not know (422
    PF.PERSON_UNKNOWN). `holds_task`: the person named will hold the process's next task (a
    dispatched PDM holds the review), so R-X-5 applies: never the item's submitter (422
    PF.ASSIGNEE_NOT_ELIGIBLE, checked by the workflow's validator too). Metadata only: it does
    not change what the model accepts, so histories decode as before."""

    directory: str
    holds_task: bool = True


def person_fields(model: type[BaseModel]) -> dict[str, NamesPerson]:
    """The fields of an outcome data model that name a person, with their `NamesPerson`."""
    return {
        name: mark
        for name, info in model.model_fields.items()
        for mark in info.metadata
        if isinstance(mark, NamesPerson)
    }


def people_named(
    kind: TaskKind, outcome: str, data: dict[str, Any]
) -> list[tuple[str, str, NamesPerson]]:
    """The people a completion's `data` names: (field, person, mark), the value parsed by the
    outcome's data model (so `" pdm-li "` is `pdm-li`); [] for an unknown outcome, an outcome
    without a model, or data the model refuses (refused on its own as PF.INVALID_DATA)."""
    spec = kind.outcomes.get(outcome)
    if spec is None or spec.data_model is None:
        return []
    fields = person_fields(spec.data_model)
    if not fields:
        return []
    try:
        parsed = spec.data_model.model_validate(data)
    except ValidationError:
        return []
    return [
        (name, str(value), mark)
        for name, mark in fields.items()
        if (value := getattr(parsed, name)) is not None
    ]


class TaskStatus(StrEnum):
    open = "open"
    completed = "completed"
    cancelled = "cancelled"


class OutcomeSpec(BaseModel):
    comment_required: bool = False
    data_model: type[BaseModel] | None = None


class TaskKind(BaseModel):
    """A kind of task: its outcomes and who may move it to another person. `holder_directory`:
    where the people who may hold it are listed, when the service keeps such a list (a
    `store.directory.DIRECTORIES` key: a po.review is held by a PDM of the routing table);
    reassigning it to anyone else is 422 PF.PERSON_UNKNOWN. None: no list (reviewers are
    whoever holds a token with the role)."""

    name: str
    outcomes: dict[str, OutcomeSpec]
    reassign_roles: frozenset[Role] = frozenset({Role.ops_admin})
    holder_directory: str | None = None

    model_config = {"arbitrary_types_allowed": True}


class HumanTask(BaseModel):
    id: str
    kind: str
    process: str
    process_id: str
    partner_id: str | None = None
    assignee: str | None = None
    candidate_role: Role | None = None
    # With `candidate_role`: only that role's users of this partner (a distributor's reviewers).
    assignee_partner_id: str | None = None
    status: TaskStatus = TaskStatus.open
    created_at: UtcDateTime
    sla: str | None = None
    due_at: UtcDateTime | None = None
    remind_at: UtcDateTime | None = None
    reminded: bool = False
    escalated: bool = False
    escalate_to_role: Role | None = None
    submitted_by: str | None = None
    # With `candidate_role`: the one user who took it (claim_task); then only they complete it.
    # Optional with a default, so histories recorded before claims existed still decode.
    claimed_by: str | None = None
    outcome: str | None = None
    completed_by: str | None = None
    completed_at: UtcDateTime | None = None
    comment: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)

    @property
    def who(self) -> str:
        if self.assignee:
            return self.assignee
        of_partner = f" of {self.assignee_partner_id}" if self.assignee_partner_id else ""
        return f"any {self.candidate_role}{of_partner}"

    def next_deadline(self) -> datetime | None:
        if self.status is not TaskStatus.open:
            return None
        if self.remind_at is not None and not self.reminded:
            return self.remind_at
        if self.due_at is not None and not self.escalated:
            return self.due_at
        return None


class Command(BaseModel):
    """What every Update carries: who acts, and until when the API still waits for the answer.

    A command a worker first sees after `not_after` is refused by the validator: the caller was
    already told it failed (503), so it must not take effect later.
    """

    actor: Principal
    not_after: UtcDateTime | None = None


class CarriedProcess(BaseModel):
    """What a process hands to its next run when it continues-as-new. The read model refuses a
    version it has already seen, and task ids (`<workflow id>.<n>`) must stay unique under the
    same workflow id, so both counters go across; so do the tasks still open."""

    version: int
    task_seq: int
    created_at: UtcDateTime
    updated_at: UtcDateTime
    open_tasks: list[HumanTask] = Field(default_factory=list)


class CompleteTask(Command):
    """Body of the `complete_task` Update every process workflow accepts."""

    task_id: str
    outcome: str
    comment: str | None = Field(default=None, max_length=4000)
    data: dict[str, Any] = Field(default_factory=dict)


class ReassignTask(Command):
    task_id: str
    assignee: str = Field(min_length=1, max_length=128)
    comment: str | None = Field(default=None, max_length=4000)


class ClaimTask(Command):
    """Body of the `claim_task` Update: take a task offered to one of the actor's roles."""

    task_id: str


class UnclaimTask(Command):
    """Body of the `unclaim_task` Update: give a claimed task back to its role."""

    task_id: str
    comment: str | None = Field(default=None, max_length=4000)


class AddComment(Command):
    """Body of the `add_comment` Update: a comment on the process, recorded in its history
    (R-X-3). 1..4000 characters, not blank."""

    body: str = Field(min_length=1, max_length=4000)


def check_fresh(cmd: Command, now: datetime) -> None:
    if cmd.not_after is not None and now > cmd.not_after:
        refuse("PF.REQUEST_EXPIRED", "the request reached the process after its caller gave up")


def may_act_on(task: HumanTask, actor: Principal) -> bool:
    if task.assignee is not None:
        return actor.sub == task.assignee
    if task.candidate_role is None or not actor.has(task.candidate_role):
        return False
    return task.assignee_partner_id is None or actor.partner_id == task.assignee_partner_id


def check_completion(task: HumanTask | None, kind: TaskKind, cmd: CompleteTask) -> BaseModel | None:
    """Refuse (raise) unless `cmd` may complete `task`; return `data` parsed by the outcome's model.

    Order matters to callers: existence, then state, then who, then what.
    """
    if task is None:
        refuse("PF.TASK_NOT_FOUND", f"task {cmd.task_id} does not exist in this process")
    if task.status is not TaskStatus.open:
        refuse("PF.TASK_NOT_OPEN", f"task {task.id} is {task.status}", status=task.status)
    if not may_act_on(task, cmd.actor):
        refuse("PF.NOT_ASSIGNEE", f"task {task.id} is assigned to {task.who}")
    if task.claimed_by is not None and cmd.actor.sub != task.claimed_by:
        # claimed: only the claimer completes it, until they or a lead give it back
        refuse(
            "PF.TASK_CLAIMED",
            f"task {task.id} is claimed by {task.claimed_by}",
            claimed_by=task.claimed_by,
        )
    # R-X-5 separation of duties
    if task.submitted_by is not None and cmd.actor.sub == task.submitted_by:
        refuse("PF.SELF_DECISION", "nobody decides on an item they submitted")
    if task.partner_id is not None and cmd.actor.partner_id == task.partner_id:
        refuse("PF.SELF_DECISION", "nobody decides on an item of the partner they belong to")
    spec = kind.outcomes.get(cmd.outcome)
    if spec is None:
        refuse(
            "PF.INVALID_OUTCOME",
            f"{cmd.outcome!r} is not an outcome of {task.kind}",
            allowed=sorted(kind.outcomes),
        )
    if spec.comment_required and not (cmd.comment and cmd.comment.strip()):
        refuse("PF.COMMENT_REQUIRED", f"outcome {cmd.outcome!r} needs a comment")
    if spec.data_model is None:
        return None
    try:
        return spec.data_model.model_validate(cmd.data)
    except ValidationError as exc:
        refuse(
            "PF.INVALID_DATA",
            f"data for outcome {cmd.outcome!r} is not valid",
            errors=[{"loc": [str(p) for p in e["loc"]], "msg": e["msg"]} for e in exc.errors()],
        )


def check_reassign(task: HumanTask | None, kind: TaskKind, cmd: ReassignTask) -> None:
    if task is None:
        refuse("PF.TASK_NOT_FOUND", f"task {cmd.task_id} does not exist in this process")
    if task.status is not TaskStatus.open:
        refuse("PF.TASK_NOT_OPEN", f"task {task.id} is {task.status}", status=task.status)
    if not cmd.actor.has(*kind.reassign_roles):
        refuse(
            "PF.FORBIDDEN",
            f"only {', '.join(sorted(kind.reassign_roles))} may reassign {task.kind} tasks",
        )


def check_claim(task: HumanTask | None, cmd: ClaimTask) -> bool:
    """Refuse (raise) unless `cmd.actor` may claim `task`; True when they already hold it
    (a repeated claim changes nothing).

    Codes: PF.TASK_NOT_FOUND, PF.TASK_NOT_OPEN, PF.TASK_NOT_CLAIMABLE (assigned to a person, not
    offered to a role), PF.TASK_CLAIMED (held by another), PF.NOT_ASSIGNEE (not a candidate:
    lacks the role, or another partner's task), PF.SELF_DECISION (R-X-5: one's own or one's
    partner's item).
    """
    if task is None:
        refuse("PF.TASK_NOT_FOUND", f"task {cmd.task_id} does not exist in this process")
    if task.status is not TaskStatus.open:
        refuse("PF.TASK_NOT_OPEN", f"task {task.id} is {task.status}", status=task.status)
    # who before what: a caller who could never act on the task learns no more than that
    if not may_act_on(task, cmd.actor):
        refuse("PF.NOT_ASSIGNEE", f"task {task.id} is offered to {task.who}")
    if task.assignee is not None or task.candidate_role is None:
        refuse("PF.TASK_NOT_CLAIMABLE", f"task {task.id} is assigned to {task.who}")
    if task.claimed_by is not None:
        if task.claimed_by == cmd.actor.sub:
            return True
        refuse(
            "PF.TASK_CLAIMED",
            f"task {task.id} is claimed by {task.claimed_by}",
            claimed_by=task.claimed_by,
        )
    if task.submitted_by is not None and cmd.actor.sub == task.submitted_by:
        refuse("PF.SELF_DECISION", "nobody decides on an item they submitted")
    if task.partner_id is not None and cmd.actor.partner_id == task.partner_id:
        refuse("PF.SELF_DECISION", "nobody decides on an item of the partner they belong to")
    return False


def check_unclaim(task: HumanTask | None, kind: TaskKind, cmd: UnclaimTask) -> None:
    """Refuse (raise) unless `cmd.actor` may give `task` back: its claimer, or a lead who may
    reassign this kind of task (`kind.reassign_roles`, bar the role the task is offered to).

    Codes: PF.TASK_NOT_FOUND, PF.TASK_NOT_OPEN, PF.TASK_NOT_CLAIMED, PF.NOT_ASSIGNEE.
    """
    if task is None:
        refuse("PF.TASK_NOT_FOUND", f"task {cmd.task_id} does not exist in this process")
    if task.status is not TaskStatus.open:
        refuse("PF.TASK_NOT_OPEN", f"task {task.id} is {task.status}", status=task.status)
    # Leads: the kind's reassigning roles other than the role the task is offered to (a
    # dispatcher may reassign po.dispatch tasks, yet not undo another dispatcher's claim).
    leads = kind.reassign_roles - {task.candidate_role}
    # who before what, as for a claim
    if not may_act_on(task, cmd.actor) and not cmd.actor.has(*leads):
        refuse("PF.NOT_ASSIGNEE", f"task {task.id} is offered to {task.who}")
    if task.claimed_by is None:
        refuse("PF.TASK_NOT_CLAIMED", f"task {task.id} is not claimed")
    if cmd.actor.sub != task.claimed_by and not cmd.actor.has(*leads):
        refuse(
            "PF.NOT_ASSIGNEE",
            f"task {task.id} is claimed by {task.claimed_by}; only they or "
            f"{', '.join(sorted(leads))} may give it back",
        )


# Bounds of a completion's `data`, checked by the API before anything reaches Temporal: a deeply
# nested value fails to (de)serialize (the worker's payload converter, pydantic's serializer)
# long before the body limit is reached.
DATA_MAX_DEPTH = 8
DATA_MAX_NODES = 2000


def data_shape_error(data: Any) -> str | None:
    """Why `data` is too deep or too large for a completion, or None. Iterative: no recursion."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    nodes = 0
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if nodes > DATA_MAX_NODES:
            return f"data has more than {DATA_MAX_NODES} values"
        if isinstance(value, dict | list):
            if depth > DATA_MAX_DEPTH:
                return f"data is nested deeper than {DATA_MAX_DEPTH} levels"
            children = value.values() if isinstance(value, dict) else value
            stack.extend((child, depth + 1) for child in children)
    return None


def completion_data_refusal(kind: TaskKind, outcome: str, data: dict[str, Any]) -> Any:
    """The API's strict check of a completion's `data` (before the Update is sent): None when
    it is acceptable, else the PF.INVALID_DATA details. An outcome with a data model takes
    exactly that model (unknown fields refused: the models forbid extras); one without takes
    only an empty `data`. An unknown outcome is left to the workflow (PF.INVALID_OUTCOME)."""
    spec = kind.outcomes.get(outcome)
    if spec is None:
        return None
    if spec.data_model is None:
        if data:
            return {"errors": [{"loc": ["data", k], "msg": "not expected"} for k in sorted(data)]}
        return None
    try:
        spec.data_model.model_validate(data)
    except ValidationError as exc:
        return {
            "errors": [
                {"loc": ["data", *(str(p) for p in e["loc"])], "msg": e["msg"]}
                for e in exc.errors()
            ]
        }
    return None
