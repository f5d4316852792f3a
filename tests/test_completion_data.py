"""A completion's `data` is strict and bounded, for every task kind and outcome (DESIGN R-X-2: a
bad input is a 4xx in the envelope, never a 500, and nothing reaches the workflow).

Found: a PO approval with `"junk": <JSON nested ~200 levels>` made the worker fail decoding the
Update (500), ~900 levels failed the API's serializer (500), and unknown keys were stored on the
task and broadcast. Now each outcome's data model forbids unknown fields, an outcome without one
takes only `{}`, and `data` is bounded in depth and size, all checked by the API before an Update
is sent. The cases are generated from the workflow registry (`task_kinds` of every process
workflow): each task kind and outcome gets a task row in the read model whose workflow does not
exist, so an Update that were sent would answer 404, not 422.

Outcome data that names a person (`domain.tasks.NamesPerson`: po.dispatch's `pdm` and `psm`)
names someone the service knows in that capacity (`store.directory`: the routing table) and,
for work they will hold, not the item's submitter (R-X-5); generated from the same registry.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import pytest
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError

from api.idempotency import scope_of
from domain.principal import Principal, Role
from domain.tasks import DATA_MAX_DEPTH, CompleteTask, NamesPerson, TaskKind, person_fields
from store.db import transaction
from store.directory import DIRECTORIES
from store.models import IdempotencyRecord, TaskRow, utcnow
from tests.conftest import Stack
from tests.helpers import ALL_PASS, Actors, submit
from workflows.opportunity import OpportunityReview
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


# --- outcomes that name a person -----------------------------------------------------------------

# Field names that always name a person; such a field must carry `NamesPerson` (catches a new
# outcome data model that names someone without saying in which capacity).
PERSON_NAMES = re.compile(
    r"^(pdm|psm|assignee|person|user|reviewer|approver|payer|owner|\w+_by|\w+_to|to)$"
)


def people_fields() -> list[tuple[str, str, str, NamesPerson]]:
    """(task kind, outcome, field, mark) for every outcome data field naming a person."""
    found = []
    for _, kind, outcome, spec in CASES:
        model = spec.outcomes[outcome].data_model
        if model is None:
            continue
        marks = person_fields(model)
        for name in model.model_fields:
            assert name in marks or not PERSON_NAMES.match(name), (
                f"{kind}/{outcome} data.{name} names a person: annotate it with NamesPerson"
            )
        for name, mark in marks.items():
            assert mark.directory in DIRECTORIES, (kind, outcome, name, mark)
            found.append((kind, outcome, name, mark))
    return found


def test_every_outcome_field_naming_a_person_says_who_may_be_named() -> None:
    """From the workflow registry: every outcome data field that names a person carries
    `NamesPerson` with a directory the service has (`store.directory.DIRECTORIES`)."""
    found = {(k, o, n): m for k, o, n, m in people_fields()}
    assert found[("po.dispatch", "dispatch", "pdm")] == NamesPerson("pdm", holds_task=True)
    assert found[("po.dispatch", "dispatch", "psm")] == NamesPerson("psm", holds_task=False)


async def open_dispatch_task(stack: Stack) -> tuple[str, str, str]:
    """A po.dispatch task (a PO no routing rule matches): (task id, PO id, its submitter)."""
    po = await submit(stack.http, Actors(stack).cobalt, region=f"nowhere-{uuid.uuid4().hex[:6]}")
    assert po["status"] == "dispatching", po
    return po["open_task_id"], po["id"], po["submitted_by"]


# task kind -> a real open task of that kind; every kind with a person field needs one here
OPEN_TASK = {"po.dispatch": open_dispatch_task}
# (task kind, outcome) -> data naming only people the test deployment knows
VALID_DATA = {("po.dispatch", "dispatch"): {"pdm": "pdm-wang", "psm": "psm-qian"}}


async def test_every_outcome_naming_a_person_refuses_an_unknown_or_ineligible_one(
    stack: Stack,
) -> None:
    """For every person field of every outcome (the registry): naming someone the directory
    does not know is 422 PF.PERSON_UNKNOWN, naming the item's submitter for work they would
    hold is 422 PF.ASSIGNEE_NOT_ELIGIBLE (R-X-5); either way the task stays open, nothing
    reaches the workflow's history and no idempotency record is kept. Then the valid data
    completes it. The finding: po.dispatch to `"pdm": "anyone"` was accepted."""
    dispatcher = Actors(stack).dispatcher
    fields = people_fields()
    for kind, outcome, name, mark in fields:
        assert kind in OPEN_TASK, f"add a way to open a {kind} task to OPEN_TASK"
        task_id, process_id, submitter = await OPEN_TASK[kind](stack)
        handle = stack.client.get_workflow_handle(process_id)
        before = len([e async for e in handle.fetch_history_events()])
        valid = VALID_DATA[(kind, outcome)]
        cases = [({**valid, name: f"nobody-{uuid.uuid4().hex[:6]}"}, "PF.PERSON_UNKNOWN")]
        if mark.holds_task:
            cases.append(({**valid, name: submitter}, "PF.ASSIGNEE_NOT_ELIGIBLE"))
        url = f"/v1/tasks/{task_id}/complete"
        for data, code in cases:
            key = f"people-{uuid.uuid4().hex}"
            r = await stack.http.post(
                url,
                json={"outcome": outcome, "data": data},
                headers={**dispatcher, "Idempotency-Key": key},
            )
            assert r.status_code == 422 and r.json()["error_code"] == code, (kind, name, r.text)
            assert r.json()["details"]["field"] == f"data.{name}", r.text
            async with stack.sessions() as session:
                record = await session.get(IdempotencyRecord, scope_of("disp-1", "POST", url, key))
            assert record is None
        after = len([e async for e in handle.fetch_history_events()])
        assert after == before, "nothing reached the workflow"
        task = await stack.http.get(f"/v1/tasks/{task_id}", headers=dispatcher)
        assert task.json()["status"] == "open"
        r = await stack.http.post(url, json={"outcome": outcome, "data": valid}, headers=dispatcher)
        assert r.status_code == 200, r.text
    assert {(k, n) for k, _, n, _ in fields} >= {("po.dispatch", "pdm"), ("po.dispatch", "psm")}


async def test_r_x_5_the_workflow_refuses_a_dispatch_to_the_submitter_itself(
    stack: Stack,
) -> None:
    """The Update's validator refuses it too (a client that is not our API, the ops CLI): R-X-5
    holds in the workflow, and a refused Update writes nothing to history."""
    task_id, po_id, submitter = await open_dispatch_task(stack)
    handle = stack.client.get_workflow_handle(po_id)
    before = len([e async for e in handle.fetch_history_events()])
    with pytest.raises(WorkflowUpdateFailedError) as caught:
        await handle.execute_update(
            OpportunityReview.complete_task,
            CompleteTask(
                task_id=task_id,
                actor=Principal(sub="disp-1", roles=[Role.dispatcher]),
                outcome="dispatch",
                data={"pdm": submitter},
            ),
        )
    cause = caught.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "PF.ASSIGNEE_NOT_ELIGIBLE"
    after = len([e async for e in handle.fetch_history_events()])
    assert after == before


async def open_review_task(stack: Stack) -> tuple[str, str, str]:
    """A po.review task (p-acme's PO, routed to pdm-li): (task id, PO id, its submitter)."""
    po = await submit(stack.http, Actors(stack).acme)
    assert po["status"] == "in_review", po
    return po["open_task_id"], po["id"], po["submitted_by"]


OPEN_TASK["po.review"] = open_review_task
# a person each directory of the test deployment lists
LISTED = {"pdm": "pdm-wang", "psm": "psm-qian"}


async def test_a_kind_whose_holders_are_listed_is_reassigned_only_to_a_listed_person(
    stack: Stack,
) -> None:
    """Every task kind of the registry with a `holder_directory` (po.review: PDMs of the routing
    table): a reassignment to someone the directory does not list is 422 PF.PERSON_UNKNOWN and
    changes nothing; to a listed person it goes through."""
    kinds = [spec for _, _, _, spec in CASES if spec.holder_directory is not None]
    assert {k.name for k in kinds} >= {"po.review"}
    dispatcher = Actors(stack).dispatcher
    for kind in {k.name: k for k in kinds}.values():
        assert kind.holder_directory in DIRECTORIES, kind
        assert kind.name in OPEN_TASK, f"add a way to open a {kind.name} task to OPEN_TASK"
        task_id, process_id, _ = await OPEN_TASK[kind.name](stack)
        handle = stack.client.get_workflow_handle(process_id)
        before = len([e async for e in handle.fetch_history_events()])
        url = f"/v1/tasks/{task_id}/reassign"
        r = await stack.http.post(url, json={"assignee": "nobody-at-all"}, headers=dispatcher)
        assert r.status_code == 422 and r.json()["error_code"] == "PF.PERSON_UNKNOWN", r.text
        after = len([e async for e in handle.fetch_history_events()])
        assert after == before
        listed = LISTED[kind.holder_directory]
        r = await stack.http.post(url, json={"assignee": listed}, headers=dispatcher)
        assert r.status_code == 200, r.text
