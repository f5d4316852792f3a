"""How the API talks to process workflows: the process gateway (`api.deps.Processes`).

Starts are update-with-start on `ProcessWorkflow.submitted`; decisions are workflow Updates
addressed by method reference (`OpportunityReview.cancel`), bounded in time. Every call goes
through `temporal_errors`, so a refusal from a validator reaches the caller with the workflow's
own error code, and a missing worker is a 503 rather than a hung request. Ids: a started process
gets a fresh id (`IdempotencyGuard.new_id`) or a business key, never one derived from a
caller's Idempotency-Key; an Update id is `<action>:<target>:<sub>:<key>` (R-X-6).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client, WithStartWorkflowOperation, WorkflowUpdateStage
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.workflow import UpdateMethodMultiParam

from api import access
from api.errors import ApiError, temporal_errors
from api.idempotency import IdempotencyGuard
from config import Settings
from domain.principal import Principal
from domain.search_attributes import PARTNER_ID, PROCESS_KIND, STAGE
from domain.tasks import Command
from store.models import ProcessRow
from workflows.human_task import ProcessWorkflow

UPDATE_GRACE_SECONDS = 2.0

C = TypeVar("C", bound=BaseModel)
V = TypeVar("V", bound=BaseModel)

# A workflow Update addressed by method reference (`OpportunityReview.cancel`): mypy checks the
# argument's type against the handler's; the workflow answers its public view as JSON (the
# payload old histories recorded), which the gateway validates into the route's view model.
UpdateMethod = UpdateMethodMultiParam[[Any, C], dict[str, Any]]


def start_policies() -> tuple[WorkflowIDReusePolicy, WorkflowIDConflictPolicy]:
    """R-X-6: the id reuse and conflict policy of every start, chosen here once.

    A fresh id (`IdempotencyGuard.new_id`) is one request's own: a retry of that request (after a
    5xx) joins its running workflow (USE_EXISTING); REJECT_DUPLICATE means no second run ever
    starts under it. A business key (`cert-<partner>-<subject>`) is taken by a claim before the
    start, so the one start that reaches Temporal joins its own running workflow, and a closed
    one is never restarted under the same id (409 PF.ALREADY_EXISTS): the read model never sees
    two runs under one id.
    """
    return WorkflowIDReusePolicy.REJECT_DUPLICATE, WorkflowIDConflictPolicy.USE_EXISTING


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
    """Start a process (update-with-start on `ProcessWorkflow.submitted`) and answer its public
    view once it has recorded itself. Raises ApiError PF.ALREADY_EXISTS (409: a closed run holds
    the id), PF.OUTCOME_PENDING (503: started, not answered in time), or a refusal's code."""
    reuse, conflict = start_policies()
    operation: WithStartWorkflowOperation[Any, Any] = WithStartWorkflowOperation(
        workflow,
        arg,
        id=workflow_id,
        task_queue=settings.task_queue,
        id_reuse_policy=reuse,
        id_conflict_policy=conflict,
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
                    ProcessWorkflow.submitted,
                    start_workflow_operation=operation,
                    id="submitted",
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
    update: UpdateMethod[C],
    arg: C,
    update_id: str,
    what: str,
) -> dict[str, Any]:
    """One decision or partner action as a workflow Update: one RPC in the common case.

    The Update is sent once and waited on until COMPLETED, within `update_timeout_seconds`. Only
    when no answer came in time does it fall back to the two-step path: is it accepted (a short
    grace), then its result. A `Command` carries `not_after`: a worker that first sees it after
    the deadline refuses it, so "nothing was recorded" (503 PF.WORKER_UNAVAILABLE) stays true;
    an accepted one not finished in time is 503 PF.OUTCOME_PENDING ("it will be applied").
    """
    handle = client.get_workflow_handle(workflow_id)
    if isinstance(arg, Command):
        # Past this moment the workflow refuses the command, so a worker that comes back after
        # we answered 503 cannot apply it.
        not_after = datetime.now(UTC) + timedelta(seconds=settings.update_timeout_seconds)
        arg = arg.model_copy(update={"not_after": not_after})
    try:
        with temporal_errors(what):
            return await asyncio.wait_for(
                handle.execute_update(update, arg, id=update_id),
                timeout=settings.update_timeout_seconds,
            )
    except ApiError as exc:
        if exc.code != "PF.WORKER_UNAVAILABLE":
            raise
    # No answer in time. The same update id names the same Update: either it was accepted (wait
    # a little for it), or a worker that sees it now refuses it (`not_after` has passed).
    started = time.monotonic()
    with temporal_errors(what):
        accepted = await asyncio.wait_for(
            handle.start_update(
                update, arg, id=update_id, wait_for_stage=WorkflowUpdateStage.ACCEPTED
            ),
            timeout=UPDATE_GRACE_SECONDS,
        )
    remaining = max(UPDATE_GRACE_SECONDS - (time.monotonic() - started), 1.0)
    try:
        with temporal_errors(what):
            return await asyncio.wait_for(accepted.result(), timeout=remaining)
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


def update_name(update: Any) -> str:
    return str(getattr(update, "__name__", "update"))


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


@dataclass
class ProcessGateway:
    """The one way a route reaches a process (dependency `api.deps.Processes`).

    Built per request with the Temporal client, the settings, the session factory and the
    request's `IdempotencyGuard`, so ids follow R-X-6 without the route passing keys around.
    Every method raises `ApiError` (the workflow's own PF code on a refusal; 409
    PF.PROCESS_CLOSED, 404 PF.NOT_FOUND, 503 PF.WORKER_UNAVAILABLE / PF.OUTCOME_PENDING).
    """

    temporal: Client
    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    idem: IdempotencyGuard

    async def new_id(self, prefix: str) -> str:
        """`<prefix>-<20 hex>`: fresh, and the same for every retry of this request."""
        return await self.idem.new_id(prefix)

    async def start(
        self,
        workflow: Any,
        arg: BaseModel,
        *,
        workflow_id: str,
        process: str,
        partner_id: str,
        summary: str,
        view: type[V],
    ) -> V:
        """Start `workflow` (its `run` method) under `workflow_id`; its first view as `view`."""
        result = await start_process(
            self.temporal,
            self.settings,
            workflow=workflow,
            arg=arg,
            workflow_id=workflow_id,
            process=process,
            partner_id=partner_id,
            summary=summary,
        )
        return view.model_validate(result)

    async def update_json(
        self, workflow_id: str, update: UpdateMethod[C], arg: C, *, target: str, what: str
    ) -> dict[str, Any]:
        """Send `update` (a method reference) to `workflow_id`; its answer as JSON. `target`
        names what is acted on in the Update id (a task id, or the process id).

        Temporal answers NOT_FOUND for an Update to a workflow that closed between the route's
        read and the Update (its message does not always say "completed"): when the read model
        knows the id, the process exists and is closed, so that is 409 PF.PROCESS_CLOSED, for
        every process; 404 stays for an id nobody knows."""
        try:
            return await send_update(
                self.temporal,
                self.settings,
                workflow_id=workflow_id,
                update=update,
                arg=arg,
                update_id=self.idem.update_id(update_name(update), target),
                what=what,
            )
        except ApiError as exc:
            if exc.code != "PF.NOT_FOUND":
                raise
            async with self.sessions() as session:
                known = await session.get(ProcessRow, workflow_id)
            if known is None:
                raise
            raise ApiError(
                "PF.PROCESS_CLOSED", f"{what}: the process is closed", {"id": workflow_id}
            ) from exc

    async def update(
        self,
        workflow_id: str,
        update: UpdateMethod[C],
        arg: C,
        *,
        view: type[V],
        target: str | None = None,
        what: str | None = None,
    ) -> V:
        """As `update_json`, the answer validated into `view`."""
        result = await self.update_json(
            workflow_id,
            update,
            arg,
            target=target or workflow_id,
            what=what or f"{update_name(update)} of {workflow_id}",
        )
        return view.model_validate(result)

    async def load(self, *, process: str, item_id: str, noun: str) -> ProcessRow:
        return await load_process(self.sessions, process=process, item_id=item_id, noun=noun)

    async def load_partner_item(
        self, *, process: str, item_id: str, noun: str, principal: Principal
    ) -> ProcessRow:
        return await load_partner_item(
            self.sessions, process=process, item_id=item_id, noun=noun, principal=principal
        )

    async def partner_update(
        self,
        *,
        process: str,
        noun: str,
        item_id: str,
        principal: Principal,
        update: UpdateMethod[C],
        arg: C,
        view: type[V],
        closed: frozenset[str] = frozenset(),
    ) -> V:
        """An owner's Update on its own item: found (404), acted on by its owner (403, R-X-8
        `access.check_owner_action`), not in a `closed` status (409 PF.PROCESS_CLOSED)."""
        row = await self.load(process=process, item_id=item_id, noun=noun)
        access.check_owner_action(principal, row, noun)
        if row.status in closed:
            raise ApiError("PF.PROCESS_CLOSED", f"{noun} {item_id} is {row.status}")
        return await self.update(item_id, update, arg, view=view)
