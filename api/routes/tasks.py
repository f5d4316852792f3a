"""The inbox and task actions: list, read, claim, unclaim, complete, bulk-complete, reassign."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from api import access
from api.auth import CurrentUser
from api.deps import Processes, SessionDep, SessionsDep
from api.errors import ApiError
from api.frame import command_router
from api.processes import ProcessGateway
from api.routes.lists import check_partner_filter, utc
from domain.events import without_secret_keys
from domain.principal import Principal
from domain.summaries import RESOURCE_OF_PROCESS
from domain.tasks import (
    ClaimTask,
    CompleteTask,
    HumanTask,
    ReassignTask,
    TaskKind,
    UnclaimTask,
    completion_data_refusal,
    data_shape_error,
    people_named,
)
from domain.values import UtcDateTime
from store.db import as_utc
from store.directory import known_people, unlisted_holder
from store.inbox import InboxFilters, InboxSort, list_tasks, summaries_of
from store.lists import BadCursor
from store.models import ProcessRow, TaskRow
from workflows.human_task import ProcessWorkflow

router = command_router(prefix="/v1/tasks", tags=["tasks"])


class TaskPublic(BaseModel):
    id: str
    kind: str
    process: str
    process_id: str
    partner_id: str | None
    assignee: str | None
    candidate_role: str | None
    status: str
    created_at: UtcDateTime
    due_at: UtcDateTime | None
    escalated: bool
    claimed_by: str | None = None
    outcome: str | None
    comment: str | None = None
    completed_by: str | None = None
    summary: str | None = None  # one line on the process: who, what, how much


class TaskDetail(TaskPublic):
    process_summary: dict[str, Any] | None


class TaskPage(BaseModel):
    items: list[TaskPublic]
    next_cursor: str | None


class Completion(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "outcome": "approve",
                    "data": {
                        "criteria": {
                            "customer_real": True,
                            "project_real": True,
                            "partner_role": True,
                            "offering": True,
                        }
                    },
                },
                {"outcome": "return", "comment": "Please attach the customer's tender notice."},
                {"outcome": "dispatch", "data": {"pdm": "pdm-li"}},
            ]
        },
    )

    outcome: str = Field(min_length=1, max_length=32)
    comment: str | None = Field(default=None, max_length=4000)
    data: dict[str, Any] = Field(default_factory=dict)

    @field_validator("data", mode="before")
    @classmethod
    def _bounded(cls, value: Any) -> Any:
        """Depth and size bounded (`domain.tasks.data_shape_error`): 422, never a 500."""
        problem = data_shape_error(value)
        if problem is not None:
            raise ValueError(problem)
        return value


class BulkCompletion(Completion):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"task_ids": ["res-1.1", "res-2.1"], "outcome": "approve"}]
        },
    )
    task_ids: list[Annotated[str, Field(min_length=1, max_length=220)]] = Field(
        min_length=1, max_length=100
    )


class BulkItemResult(BaseModel):
    task_id: str
    ok: bool
    status_code: int
    error_code: str | None = None
    error_msg: str | None = None
    process: dict[str, Any] | None = None


class BulkResult(BaseModel):
    succeeded: int
    failed: int
    results: list[BulkItemResult]


class Unclaim(BaseModel):
    model_config = ConfigDict(extra="forbid")
    comment: str | None = Field(default=None, max_length=4000)


class Reassignment(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"assignee": "pdm-wang"}]}
    )
    assignee: str = Field(min_length=1, max_length=128)
    comment: str | None = Field(default=None, max_length=4000)


def public(row: TaskRow, summary: str | None = None) -> TaskPublic:
    body = HumanTask.model_validate(row.body)
    return TaskPublic(
        id=row.id,
        kind=row.kind,
        process=row.process,
        process_id=row.process_id,
        partner_id=row.partner_id,
        assignee=row.assignee,
        candidate_role=row.candidate_role,
        status=row.status,
        created_at=as_utc(row.created_at),
        due_at=as_utc(row.due_at),
        escalated=row.escalated,
        claimed_by=row.claimed_by,
        outcome=row.outcome,
        comment=body.comment,
        completed_by=body.completed_by,
        summary=summary,
    )


async def load_task(
    sessions: async_sessionmaker[AsyncSession], task_id: str, principal: Principal
) -> TaskRow:
    """The task's row, if the caller may see it; a short session of its own (see
    opportunities.load_opportunity)."""
    async with sessions() as session:
        row = await session.get(TaskRow, task_id)
    if row is None:
        raise ApiError("PF.TASK_NOT_FOUND", f"no task {task_id}")
    return access.check_may_see_task(principal, row)


@router.get("", response_model=TaskPage, name="list_tasks")
async def inbox(
    principal: CurrentUser,
    session: SessionDep,
    kind: Annotated[str | None, Query(min_length=1, max_length=32)] = None,
    status: Literal["open", "completed", "cancelled"] | None = "open",
    assignee: Annotated[
        str | None, Query(min_length=1, max_length=128, description="'me' or a person id")
    ] = None,
    process_id: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    process: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=32,
            description=f"one of {', '.join(RESOURCE_OF_PROCESS)}",
        ),
    ] = None,
    partner_id: Annotated[
        str | None, Query(min_length=1, max_length=64, description="staff: one partner's tasks")
    ] = None,
    due_before: Annotated[
        datetime | None, Query(description="ISO 8601, due strictly before")
    ] = None,
    overdue: Annotated[bool | None, Query(description="due time passed (or not)")] = None,
    escalated: bool | None = None,
    sort: Annotated[InboxSort, Query(description="urgency (default) = due_at ascending")] = (
        InboxSort.urgency
    ),
    cursor: Annotated[str | None, Query(max_length=1000)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> Any:
    """Tasks the caller may see, most urgent first by default: overdue, then earliest due,
    undated last. Each row carries its process's one-line `summary` and `claimed_by`.
    A filter sent empty (`?process_id=`) is 422, never "no filter": omit it instead."""
    check_partner_filter(principal, partner_id)
    if process is not None and process not in RESOURCE_OF_PROCESS:
        raise ApiError(
            "PF.VALIDATION_FAILED",
            f"process must be one of {', '.join(RESOURCE_OF_PROCESS)}",
            {"process": process},
        )
    filters = InboxFilters(
        kind=kind,
        status=status,
        assignee=assignee,
        process_id=process_id,
        process=process,
        partner_id=partner_id,
        due_before=utc(due_before),
        overdue=overdue,
        escalated=escalated,
        now=datetime.now(UTC),
    )
    try:
        rows, next_cursor = await list_tasks(
            session, principal, filters=filters, sort=sort, cursor=cursor, limit=limit
        )
    except BadCursor as exc:
        raise ApiError("PF.BAD_REQUEST", str(exc)) from exc
    summaries = await summaries_of(session, {r.process_id for r in rows})
    return TaskPage(
        items=[public(r, summaries.get(r.process_id)) for r in rows], next_cursor=next_cursor
    )


@router.get("/{task_id}", response_model=TaskDetail)
async def get_task(task_id: str, principal: CurrentUser, sessions: SessionsDep) -> Any:
    row = await load_task(sessions, task_id, principal)
    async with sessions() as session:
        process = await session.get(ProcessRow, row.process_id)
    return TaskDetail(
        **public(row, process.summary if process else None).model_dump(),
        process_summary=without_secret_keys(process.view) if process else None,
    )


def task_kind_of(row: TaskRow) -> TaskKind | None:
    """The task's kind as its process workflow declares it (`task_kinds`), from the registry."""
    from workflows.registry import ALL_WORKFLOWS

    for workflow_cls in ALL_WORKFLOWS:
        if getattr(workflow_cls, "process", None) == row.process:
            kinds: dict[str, TaskKind] = workflow_cls.task_kinds  # type: ignore[attr-defined]
            return kinds.get(row.kind)
    return None


async def check_people_named(
    processes: ProcessGateway, row: TaskRow, kind: TaskKind, body: Completion
) -> None:
    """Every person the completion's data names (`domain.tasks.NamesPerson`, e.g. po.dispatch's
    `pdm` and `psm`) is someone the service knows in that capacity (`store.directory`: 422
    PF.PERSON_UNKNOWN) and, when they will hold the next task, may hold it: not the item's
    submitter (R-X-5, 422 PF.ASSIGNEE_NOT_ELIGIBLE). Checked before the Update: nothing is sent
    or written when it fails."""
    named = people_named(kind, body.outcome, body.data)
    if not named:
        return
    submitter = HumanTask.model_validate(row.body).submitted_by
    policy = processes.settings.policy
    async with processes.sessions() as session:
        for field, person, mark in named:
            if mark.holds_task and submitter is not None and person == submitter:
                raise ApiError(
                    "PF.ASSIGNEE_NOT_ELIGIBLE",
                    f"{person} submitted this item and may not hold its {kind.name} work (R-X-5)",
                    {"field": f"data.{field}", "person": person},
                )
            known = await known_people(session, mark.directory, policy)
            if person not in known:
                raise ApiError(
                    "PF.PERSON_UNKNOWN",
                    f"data.{field} names {person}, who is not a known {mark.directory} "
                    "(the routing table names them; ops add people there)",
                    {"field": f"data.{field}", "person": person, "known": sorted(known)[:50]},
                )


async def _complete_one(
    processes: ProcessGateway, *, principal: Principal, task_id: str, body: Completion
) -> dict[str, Any]:
    row = await load_task(processes.sessions, task_id, principal)
    if row.status != "open":
        raise ApiError("PF.TASK_NOT_OPEN", f"task {task_id} is {row.status}")
    kind = task_kind_of(row)
    if kind is not None:
        refusal = completion_data_refusal(kind, body.outcome, body.data)
        if refusal is not None:
            raise ApiError(
                "PF.INVALID_DATA", f"data for outcome {body.outcome!r} is not valid", refusal
            )
        await check_people_named(processes, row, kind, body)
    # The Update id names the task and the caller (R-X-6): two actors never share a decision.
    return await processes.update_json(
        row.process_id,
        ProcessWorkflow.complete_task,
        CompleteTask(
            task_id=task_id,
            actor=principal,
            outcome=body.outcome,
            comment=body.comment,
            data=body.data,
        ),
        target=task_id,
        what=f"completing task {task_id}",
    )


@router.post("/bulk-complete", response_model=BulkResult)
async def bulk_complete(
    body: BulkCompletion, principal: CurrentUser, processes: Processes
) -> BulkResult:
    """One outcome for many tasks; each is validated on its own and reported with its own result."""
    if len(set(body.task_ids)) != len(body.task_ids):
        raise ApiError("PF.VALIDATION_FAILED", "task_ids has duplicates")
    gate = asyncio.Semaphore(8)

    async def one(task_id: str) -> BulkItemResult:
        async with gate:
            try:
                view = await _complete_one(
                    processes, principal=principal, task_id=task_id, body=body
                )
            except ApiError as exc:
                return BulkItemResult(
                    task_id=task_id,
                    ok=False,
                    status_code=exc.status_code,
                    error_code=exc.code,
                    error_msg=exc.message,
                )
        return BulkItemResult(task_id=task_id, ok=True, status_code=200, process=view)

    results = await asyncio.gather(*(one(t) for t in body.task_ids))
    ok = sum(r.ok for r in results)
    return BulkResult(succeeded=ok, failed=len(results) - ok, results=list(results))


@router.post("/{task_id}/complete")
async def complete_task(
    task_id: str, body: Completion, principal: CurrentUser, processes: Processes
) -> dict[str, Any]:
    """Decide a task; the answer is the process's new state (its public view, of whichever
    process the task belongs to). R-X-6: the same Idempotency-Key returns the first answer and
    the decision is recorded once; two actors never share one decision."""
    return await _complete_one(processes, principal=principal, task_id=task_id, body=body)


@router.post("/{task_id}/reassign")
async def reassign_task(
    task_id: str, body: Reassignment, principal: CurrentUser, processes: Processes
) -> dict[str, Any]:
    """Dispatchers and leads move a task to another person (e.g. after escalation, R-PO-5).
    A kind whose holders the service lists (`TaskKind.holder_directory`: po.review, PDMs) goes
    only to someone listed (422 PF.PERSON_UNKNOWN); R-X-5 is the workflow's check."""
    async with processes.sessions() as session:
        row = await session.get(TaskRow, task_id)
    if row is None:
        raise ApiError("PF.TASK_NOT_FOUND", f"no task {task_id}")
    access.check_may_reassign(principal, row)
    if row.status != "open":
        raise ApiError("PF.TASK_NOT_OPEN", f"task {task_id} is {row.status}")
    kind = task_kind_of(row)
    # who before what: a caller who may not reassign this kind hears the workflow's 403 first
    if kind is not None and principal.has(*kind.reassign_roles):
        async with processes.sessions() as session:
            known = await unlisted_holder(session, kind, body.assignee, processes.settings.policy)
        if known is not None:
            raise ApiError(
                "PF.PERSON_UNKNOWN",
                f"{body.assignee} is not a known {kind.holder_directory}, who alone hold "
                f"{kind.name} tasks (the routing table names them; ops add people there)",
                {"field": "assignee", "person": body.assignee, "known": sorted(known)[:50]},
            )
    return await processes.update_json(
        row.process_id,
        ProcessWorkflow.reassign_task,
        ReassignTask(
            task_id=task_id, actor=principal, assignee=body.assignee, comment=body.comment
        ),
        target=task_id,
        what=f"reassigning task {task_id}",
    )


async def _claim_update(
    processes: ProcessGateway,
    *,
    task_id: str,
    update: Any,
    arg: ClaimTask | UnclaimTask,
    principal: Principal,
) -> TaskPublic:
    row = await load_task(processes.sessions, task_id, principal)
    if row.status != "open":
        raise ApiError("PF.TASK_NOT_OPEN", f"task {task_id} is {row.status}")
    task = await processes.update_json(
        row.process_id, update, arg, target=task_id, what=f"{arg.__class__.__name__} {task_id}"
    )
    async with processes.sessions() as session:
        process = await session.get(ProcessRow, row.process_id)
    shown = TaskRow(**{**row.model_dump(), "claimed_by": task.get("claimed_by")})
    return public(shown, process.summary if process else None)


@router.post("/{task_id}/claim", response_model=TaskPublic)
async def claim_task(task_id: str, principal: CurrentUser, processes: Processes) -> Any:
    """Take a task offered to one of your roles: then only you complete it (until you or a lead
    give it back). Two claims at once: one wins, the other gets 409 PF.TASK_CLAIMED. Recorded
    in the process's history (`task_claimed`, R-X-3). A repeated claim by the holder is a no-op.
    Errors: PF.TASK_NOT_FOUND, PF.TASK_NOT_OPEN, PF.TASK_NOT_CLAIMABLE, PF.TASK_CLAIMED,
    PF.NOT_ASSIGNEE, PF.SELF_DECISION (R-X-5)."""
    return await _claim_update(
        processes,
        task_id=task_id,
        update=ProcessWorkflow.claim_task,
        arg=ClaimTask(task_id=task_id, actor=principal),
        principal=principal,
    )


@router.post("/{task_id}/unclaim", response_model=TaskPublic)
async def unclaim_task(
    task_id: str, principal: CurrentUser, processes: Processes, body: Unclaim | None = None
) -> Any:
    """Give a claimed task back to its role: its claimer, or a lead who may reassign it.
    Recorded as `task_unclaimed`. Errors: PF.TASK_NOT_FOUND, PF.TASK_NOT_OPEN,
    PF.TASK_NOT_CLAIMED, PF.NOT_ASSIGNEE."""
    unclaim = body or Unclaim()
    return await _claim_update(
        processes,
        task_id=task_id,
        update=ProcessWorkflow.unclaim_task,
        arg=UnclaimTask(task_id=task_id, actor=principal, comment=unclaim.comment),
        principal=principal,
    )
