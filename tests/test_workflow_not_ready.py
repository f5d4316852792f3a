"""A process whose workflow task keeps failing or timing out is "not ready": a retryable 503
PF.UNAVAILABLE with Retry-After, never a 500 (issue 11, R-X-6's retry contract).

On a CPU-starved worker a start's first workflow task can pass its timeout; from the third
attempt on, Temporal refuses every Update to that execution at once (WorkflowNotReady,
FAILED_PRECONDITION, "Workflow Task in failed state"), and an update-with-start that joins it
(conflict policy USE_EXISTING: the retry of a start) gets the same refusal wrapped in a
multi-operation failure. The API answered both 500. Proved end to end against the dev server
(a certification's business key held by an execution whose first task fails, then the route's
update-with-start and a plain Update), and enumerated over every start and every Update of
every process workflow through the one gateway (`api.processes.ProcessGateway`), with a client
that refuses as the server does.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from google.protobuf.any_pb2 import Any as AnyProto
from pydantic import BaseModel
from temporalio import workflow
from temporalio.api.common.v1 import GrpcStatus
from temporalio.api.errordetails.v1 import MultiOperationExecutionFailure, WorkflowNotReadyFailure
from temporalio.client import WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from api.errors import ApiError, temporal_errors
from api.idempotency import IdempotencyGuard
from api.processes import ProcessGateway, send_update
from config import Settings
from domain.certification import certification_id
from domain.principal import Principal, Role
from domain.tasks import CompleteTask
from tests.conftest import Stack, eventually
from tests.helpers import every_update
from workflows import ALL_WORKFLOWS
from workflows.human_task import ProcessWorkflow

NOT_READY = "Unable to perform workflow execution update due to Workflow Task in failed state."


def _packed(message: Any) -> AnyProto:
    packed = AnyProto()
    packed.Pack(message)
    return packed


def plain_update_refusal() -> RPCError:
    """The server's answer to an Update while the workflow task is failing."""
    status = GrpcStatus(code=9, message=NOT_READY, details=[_packed(WorkflowNotReadyFailure())])
    return RPCError(NOT_READY, RPCStatusCode.FAILED_PRECONDITION, status.SerializeToString())


def update_with_start_refusal() -> RPCError:
    """The same refusal to an update-with-start, as the SDK re-raises it: the per-operation
    status's code and message, the outer status (a MultiOperationExecutionFailure)."""
    inner = GrpcStatus(code=9, message=NOT_READY, details=[_packed(WorkflowNotReadyFailure())])
    multi = MultiOperationExecutionFailure(
        statuses=[
            MultiOperationExecutionFailure.OperationStatus(code=10, message="aborted"),
            MultiOperationExecutionFailure.OperationStatus(
                code=inner.code, message=inner.message, details=list(inner.details)
            ),
        ]
    )
    outer = GrpcStatus(code=9, message="MultiOperation could not be executed.")
    outer.details.append(_packed(multi))
    return RPCError(NOT_READY, RPCStatusCode.FAILED_PRECONDITION, outer.SerializeToString())


def _assert_retryable_503(exc: ApiError) -> None:
    assert exc.code == "PF.UNAVAILABLE"
    assert exc.status_code == 503
    assert exc.headers is not None and exc.headers.get("Retry-After")


@pytest.mark.parametrize(
    "refusal",
    [
        plain_update_refusal(),
        update_with_start_refusal(),
        # the message alone (no details): what an older server or SDK hands over
        RPCError(NOT_READY, RPCStatusCode.FAILED_PRECONDITION, b""),
    ],
    ids=["update", "update-with-start", "message-only"],
)
def test_workflow_not_ready_is_a_retryable_503(refusal: RPCError) -> None:
    with pytest.raises(ApiError) as caught, temporal_errors("x"):
        raise refusal
    _assert_retryable_503(caught.value)


def test_other_failed_preconditions_are_not_taken_for_not_ready() -> None:
    other = RPCError("namespace is not active", RPCStatusCode.FAILED_PRECONDITION, b"")
    with pytest.raises(RPCError), temporal_errors("x"):
        raise other


# --- every start and every Update of every process, through the gateway ---------------------


class _NotReadyHandle:
    async def execute_update(self, *_: Any, **__: Any) -> Any:
        raise plain_update_refusal()


class _NotReadyTemporal:
    def get_workflow_handle(self, _: str) -> _NotReadyHandle:
        return _NotReadyHandle()

    async def execute_update_with_start_workflow(self, *_: Any, **__: Any) -> Any:
        raise update_with_start_refusal()


def _gateway() -> ProcessGateway:
    return ProcessGateway(
        temporal=_NotReadyTemporal(),  # type: ignore[arg-type]
        settings=Settings(),
        sessions=None,  # type: ignore[arg-type]  # a refusal never reaches the store
        idem=IdempotencyGuard(),
    )


UPDATES = every_update()
STARTS = [cls for cls in ALL_WORKFLOWS if issubclass(cls, ProcessWorkflow)]


def test_the_cases_cover_the_registry() -> None:
    assert len(STARTS) == len(ALL_WORKFLOWS) == 7
    assert {p for p, _, _ in UPDATES} == {cls.process for cls in STARTS}


@pytest.mark.parametrize(
    ("process", "name", "method"), UPDATES, ids=[f"{p}-{n}" for p, n, _ in UPDATES]
)
async def test_every_update_to_a_not_ready_process_is_503(
    process: str, name: str, method: Any
) -> None:
    with pytest.raises(ApiError) as caught:
        await _gateway().update_json(f"{process}-1", method, None, target="t", what=name)
    _assert_retryable_503(caught.value)


class _Arg(BaseModel):
    anything: str = "x"


@pytest.mark.parametrize("cls", STARTS, ids=[cls.process for cls in STARTS])
async def test_every_start_joining_a_not_ready_process_is_503(cls: Any) -> None:
    with pytest.raises(ApiError) as caught:
        await _gateway().start(
            cls.run,
            _Arg(),
            workflow_id=f"{cls.process}-1",
            process=cls.process,
            partner_id="p-1",
            summary="s",
            view=_Arg,
        )
    _assert_retryable_503(caught.value)


# --- end to end: the dev server's own refusal -----------------------------------------------


@workflow.defn(name="Certification", sandboxed=False)
class FirstTaskFails:
    """Holds a certification's id with a workflow task that never completes, as a starved
    worker's timed-out first task does."""

    @workflow.run
    async def run(self) -> None:
        raise RuntimeError("this workflow task fails, as a timed-out one does, every attempt")


async def _not_ready_execution(stack: Stack, workflow_id: str) -> WorkflowHandle[Any, Any]:
    """An execution under `workflow_id` whose workflow task has failed twice (attempt 3 is the
    server's threshold for refusing Updates)."""
    queue = f"pf-failing-{uuid.uuid4().hex[:8]}"
    handle: WorkflowHandle[Any, Any] = await stack.client.start_workflow(
        "Certification", id=workflow_id, task_queue=queue
    )

    async def third_attempt() -> bool:
        pending = (await handle.describe()).raw_description.pending_workflow_task
        return pending.attempt >= 3

    async with Worker(stack.client, task_queue=queue, workflows=[FirstTaskFails]):
        await eventually(third_attempt, timeout=60, what="the workflow task's third attempt")
    return handle


async def test_a_start_meeting_a_failing_first_task_is_503_then_retryable(stack: Stack) -> None:
    cobalt = stack.auth("u-cobalt-1", ["partner_admin"], "p-cobalt")
    subject = f"not-ready-{uuid.uuid4().hex[:8]}"
    handle = await _not_ready_execution(stack, certification_id("p-cobalt", subject))
    body = {
        "kind": "cloud_software",
        "subject": subject,
        "level": None,
        "evidence": [{"title": "A case", "url": "https://files.example/case.pdf"}],
    }
    headers = {**cobalt, "Idempotency-Key": f"k-{uuid.uuid4()}"}
    try:
        for _ in range(2):  # the first answer, then the client's retry under the same key
            r = await stack.http.post("/v1/certifications", json=body, headers=headers)
            assert r.status_code == 503, r.text
            assert r.json()["error_code"] == "PF.UNAVAILABLE"
            assert "not ready" in r.json()["error_msg"]
            assert int(r.headers["Retry-After"]) > 0

        # a plain Update (a decision) to the same execution: the same answer
        with pytest.raises(ApiError) as caught:
            await send_update(
                stack.client,
                stack.settings,
                workflow_id=handle.id,
                update=ProcessWorkflow.complete_task,
                arg=CompleteTask(
                    actor=Principal(sub="expert-1", roles=[Role.cert_reviewer]),
                    task_id=f"{handle.id}.1",
                    outcome="pass",
                ),
                update_id=f"complete:{uuid.uuid4().hex}",
                what="completing a task",
            )
        _assert_retryable_503(caught.value)
    finally:
        await handle.terminate("test over")
