"""An Update that finds its workflow closed is 409 PF.PROCESS_CLOSED, for every process and every
Update (the one place Updates are sent: `api.processes.ProcessGateway.update_json`).

Four parallel answers to one dissociation raced: the workflow completed between the route's read
and its Update, Temporal answered NOT_FOUND ("workflow not found", no "completed" in it) and the
API said 404 "no such process" for a process the read model knows. The gateway now asks the read
model: a known id is closed (409); an unknown one stays 404. Enumerated over the workflow
registry (every Update of every process workflow), with a Temporal client that answers NOT_FOUND
as the server does for a run that closed meanwhile.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.service import RPCError, RPCStatusCode

from api.errors import ApiError
from api.idempotency import IdempotencyGuard
from api.processes import ProcessGateway
from config import Settings
from store.db import transaction
from store.models import ProcessRow
from tests.helpers import every_update


class _ClosedHandle:
    async def execute_update(self, *_: Any, **__: Any) -> Any:
        raise RPCError("workflow not found for ID", RPCStatusCode.NOT_FOUND, b"")


class _Temporal:
    def get_workflow_handle(self, _: str) -> _ClosedHandle:
        return _ClosedHandle()


CASES = every_update()


def test_the_registry_has_every_process_and_its_updates() -> None:
    processes = {p for p, _, _ in CASES}
    assert {"opportunity", "dissociation"} <= processes
    assert {"complete_task", "submitted"} <= {n for _, n, _ in CASES}


@pytest.mark.parametrize(
    ("process", "name", "method"), CASES, ids=[f"{p}-{n}" for p, n, _ in CASES]
)
async def test_an_update_to_a_closed_workflow_is_process_closed(
    sessions: async_sessionmaker[AsyncSession], process: str, name: str, method: Any
) -> None:
    known = f"{process[:4]}-{name}-known"
    now = datetime.now(UTC)
    async with transaction(sessions) as session:
        session.add(
            ProcessRow(
                id=known,
                process=process,
                status="closed",
                version=3,
                created_at=now,
                updated_at=now,
                view={},
            )
        )
    gateway = ProcessGateway(
        temporal=_Temporal(),  # type: ignore[arg-type]
        settings=Settings(),
        sessions=sessions,
        idem=IdempotencyGuard(),
    )
    with pytest.raises(ApiError) as closed:
        await gateway.update_json(known, method, None, target=known, what=name)
    assert closed.value.code == "PF.PROCESS_CLOSED"
    assert closed.value.status_code == 409
    with pytest.raises(ApiError) as unknown:
        await gateway.update_json("nobody-knows", method, None, target="x", what=name)
    assert unknown.value.code == "PF.NOT_FOUND"
