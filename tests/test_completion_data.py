"""A completion's `data` is strict and bounded, for every task kind and outcome (DESIGN R-X-2: a
bad input is a 4xx in the envelope, never a 500, and nothing reaches the workflow).

Found: a PO approval with `"junk": <JSON nested ~200 levels>` made the worker fail decoding the
Update (500), ~900 levels failed the API's serializer (500), and unknown keys were stored on the
task and broadcast. Now each outcome's data model forbids unknown fields, an outcome without one
takes only `{}`, and `data` is bounded in depth and size, all checked by the API before an Update
is sent. The cases are generated from the workflow registry (`task_kinds` of every process
workflow): each task kind and outcome gets a task row in the read model whose workflow does not
exist, so an Update that were sent would answer 404, not 422.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from domain.tasks import DATA_MAX_DEPTH, TaskKind
from store.db import transaction
from store.models import TaskRow, utcnow
from tests.conftest import Stack
from tests.helpers import ALL_PASS, Actors, submit
from workflows.registry import ALL_WORKFLOWS


def nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value


def every_outcome() -> list[tuple[str, str, str, TaskKind]]:
    cases = []
    for cls in ALL_WORKFLOWS:
        kinds: dict[str, TaskKind] = cls.task_kinds  # type: ignore[attr-defined]
        for kind in kinds.values():
            for outcome in sorted(kind.outcomes):
                cases.append((cls.process, kind.name, outcome, kind))  # type: ignore[attr-defined]
    return cases


CASES = every_outcome()


def test_every_data_model_forbids_unknown_fields() -> None:
    assert {"po.review", "po.dispatch"} <= {k for _, k, _, _ in CASES}
    for _, kind, outcome, spec in CASES:
        model = spec.outcomes[outcome].data_model
        if model is not None:
            assert model.model_config.get("extra") == "forbid", (kind, outcome)


def raw(body: dict[str, Any]) -> bytes:
    # the standard encoder copes with 900 levels; httpx's json= may not
    return json.dumps(body).encode()


async def test_junk_in_data_is_refused_before_the_workflow_for_every_outcome(
    stack: Stack,
) -> None:
    admin = Actors(stack).admin
    headers = {**admin, "content-type": "application/json"}
    for process, kind, outcome, _ in CASES:
        task_id = f"nowf-{uuid.uuid4().hex[:12]}.1"
        async with transaction(stack.sessions) as session:
            session.add(
                TaskRow(
                    id=task_id,
                    kind=kind,
                    process=process,
                    process_id=task_id[:-2],
                    status="open",
                    created_at=utcnow(),
                    body={},
                )
            )
        url = f"/v1/tasks/{task_id}/complete"
        bodies = {
            "unknown key": {"outcome": outcome, "comment": "c", "data": {"junk": 1}},
            "deep junk": {"outcome": outcome, "comment": "c", "data": {"junk": nested(200)}},
            "very deep junk": {"outcome": outcome, "comment": "c", "data": {"junk": nested(900)}},
            "just too deep": {
                "outcome": outcome,
                "comment": "c",
                "data": {"junk": nested(DATA_MAX_DEPTH)},
            },
        }
        for what, body in bodies.items():
            r = await stack.http.post(url, content=raw(body), headers=headers)
            assert 400 <= r.status_code < 500, (kind, outcome, what, r.status_code, r.text)
            assert r.json()["error_code"] in {"PF.INVALID_DATA", "PF.VALIDATION_FAILED"}, (
                kind,
                outcome,
                what,
                r.text,
            )


async def test_a_po_approval_with_junk_stays_open_and_nothing_reaches_history(
    stack: Stack,
) -> None:
    a = Actors(stack)
    po = await submit(stack.http, a.acme)
    r = await stack.http.get(
        "/v1/tasks", params={"assignee": "me", "process_id": po["id"]}, headers=a.pdm_li
    )
    task = next(t for t in r.json()["items"] if t["process_id"] == po["id"])
    handle = stack.client.get_workflow_handle(po["id"])
    before = len([e async for e in handle.fetch_history_events()])
    for junk in (1, nested(200), nested(900)):
        body = {"outcome": "approve", "data": {"criteria": ALL_PASS, "junk": junk}}
        r = await stack.http.post(
            f"/v1/tasks/{task['id']}/complete",
            content=raw(body),
            headers={**a.pdm_li, "content-type": "application/json"},
        )
        assert r.status_code == 422, r.text
    after = len([e async for e in handle.fetch_history_events()])
    assert after == before, "no Update reached the workflow"
    r = await stack.http.get(f"/v1/tasks/{task['id']}", headers=a.pdm_li)
    assert r.json()["status"] == "open" and "junk" not in json.dumps(r.json())
