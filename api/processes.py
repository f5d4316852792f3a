"""How the API talks to process workflows: start (update-with-start) and Updates, bounded in time.

Every call goes through `temporal_errors`, so a refusal from a validator reaches the caller with
the workflow's own error code, and a missing worker is a 503 rather than a hung request.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client, WithStartWorkflowOperation, WorkflowUpdateStage
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
)

from api import access
from api.errors import ApiError, temporal_errors
from config import Settings
from domain.principal import Principal
from domain.search_attributes import PARTNER_ID, PROCESS_KIND, STAGE
from domain.tasks import Command
from store.models import ProcessRow

UPDATE_GRACE_SECONDS = 2.0


def process_id(prefix: str, scope: str, idempotency_key: str | None) -> str:
    """A new process id; derived from the Idempotency-Key when there is one, so a retried POST
    names the same workflow and Temporal itself refuses a second one."""
    if idempotency_key:
        digest = hashlib.sha256(f"{scope}\0{idempotency_key}".encode()).hexdigest()[:20]
        return f"{prefix}-{digest}"
    return f"{prefix}-{uuid.uuid4().hex[:20]}"


def update_id(action: str, target: str, idempotency_key: str | None) -> str:
    """R-X-6: a decision retried with the same key has the same update id: Temporal runs it once."""
    return f"{action}:{target}:{idempotency_key or uuid.uuid4().hex}"


async def start_process(
    client: Client,
    settings: Settings,
    *,
    workflow: Any,
    arg: BaseModel,
    workflow_id: str,
    process: str,
    partner_id: str,
    summary: str,
) -> dict[str, Any]:
    """Start (or, for the same id, join) a process and answer once it has recorded itself."""
    operation = WithStartWorkflowOperation(
        workflow,
        arg,
        id=workflow_id,
        task_queue=settings.task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        search_attributes=TypedSearchAttributes(
            [
                SearchAttributePair(PARTNER_ID, partner_id),
                SearchAttributePair(PROCESS_KIND, process),
                SearchAttributePair(STAGE, "submitted"),
            ]
        ),
        static_summary=summary[:400],
    )
    try:
        with temporal_errors(f"starting {process} {workflow_id}"):
            result: dict[str, Any] = await asyncio.wait_for(
                client.execute_update_with_start_workflow(
                    "submitted",
                    start_workflow_operation=operation,
                    id="submitted",
                    result_type=dict,
                ),
                timeout=settings.update_timeout_seconds,
            )
    except ApiError as exc:
        if exc.code != "PF.WORKER_UNAVAILABLE":
            raise
        # The start itself is durable even when no worker has answered yet.
        raise ApiError(
            "PF.OUTCOME_PENDING",
            f"{process} {workflow_id} was started but has not answered in time; retry with "
            "the same Idempotency-Key to read it",
            {"id": workflow_id},
            headers={"Retry-After": "5"},
        ) from exc
    return result


async def send_update(
    client: Client,
    settings: Settings,
    *,
    workflow_id: str,
    update: str,
    arg: BaseModel,
    update_id: str,
    what: str,
) -> dict[str, Any]:
    handle = client.get_workflow_handle(workflow_id)
    if isinstance(arg, Command):
        # Past this moment the workflow refuses the command, so a worker that comes back after
        # we answered 503 cannot apply it. We wait a little longer than that, so an answer
        # given just before the deadline still reaches the caller.
        not_after = datetime.now(UTC) + timedelta(seconds=settings.update_timeout_seconds)
        arg = arg.model_copy(update={"not_after": not_after})
    started = time.monotonic()
    budget = settings.update_timeout_seconds + UPDATE_GRACE_SECONDS
    with temporal_errors(what):
        # Until a worker accepts the command nothing is recorded (and after `not_after`
        # nothing ever will be): a timeout here is a plain 503.
        accepted = await asyncio.wait_for(
            handle.start_update(
                update,
                arg,
                id=update_id,
                result_type=dict,
                wait_for_stage=WorkflowUpdateStage.ACCEPTED,
            ),
            timeout=budget,
        )
    remaining = max(budget - (time.monotonic() - started), 1.0)
    try:
        with temporal_errors(what):
            result: dict[str, Any] = await asyncio.wait_for(accepted.result(), timeout=remaining)
    except ApiError as exc:
        if exc.code != "PF.WORKER_UNAVAILABLE":
            raise
        # Accepted, so it will be applied (e.g. once the database is back): say so, and how
        # to learn the outcome, rather than "nothing was recorded".
        raise ApiError(
            "PF.OUTCOME_PENDING",
            f"{what}: accepted, but not finished in time; it will be applied. Retry with the "
            "same Idempotency-Key to read the outcome.",
            headers={"Retry-After": "5"},
        ) from exc
    return result


async def workflow_is_running(client: Client, workflow_id: str) -> bool:
    from temporalio.client import WorkflowExecutionStatus
    from temporalio.service import RPCError, RPCStatusCode

    try:
        desc = await client.get_workflow_handle(workflow_id).describe()
    except RPCError as exc:
        if exc.status is RPCStatusCode.NOT_FOUND:
            return False
        raise
    return desc.status is WorkflowExecutionStatus.RUNNING


async def load_process(
    sessions: async_sessionmaker[AsyncSession], *, process: str, item_id: str, noun: str
) -> ProcessRow:
    """A process's read-model row (404 if there is none of that process), in a short session
    of its own: write routes must not hold a pooled connection while they wait on Temporal."""
    async with sessions() as session:
        row = await session.get(ProcessRow, item_id)
    if row is None or row.process != process:
        raise ApiError("PF.NOT_FOUND", f"no {noun} {item_id}")
    return row


async def load_partner_item(
    sessions: async_sessionmaker[AsyncSession],
    *,
    process: str,
    item_id: str,
    noun: str,
    principal: Principal,
) -> ProcessRow:
    """As `load_process`, and 403 unless the caller may see the item (R-X-8, `api.access`)."""
    row = await load_process(sessions, process=process, item_id=item_id, noun=noun)
    return access.check_may_see(principal, row, noun)


async def partner_update(
    *,
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    temporal: Client,
    process: str,
    noun: str,
    item_id: str,
    principal: Principal,
    update: str,
    arg: BaseModel,
    key: str | None,
    closed: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """A partner user's Update on its own item: found, visible, not in a `closed` status."""
    row = await load_process(sessions, process=process, item_id=item_id, noun=noun)
    access.check_owner_action(principal, row, noun)
    if row.status in closed:
        raise ApiError("PF.PROCESS_CLOSED", f"{noun} {item_id} is {row.status}")
    return await send_update(
        temporal,
        settings,
        workflow_id=item_id,
        update=update,
        arg=arg,
        update_id=update_id(update, item_id, key),
        what=f"{update} of {item_id}",
    )
