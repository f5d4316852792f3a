"""What an event carries and who sees it (DESIGN §3 `event`, R-X-8).

Found: a `customer_invitation.*` event carried the registration link's `token` (stored, sent to
webhooks, listed to ops), and `task.*` events carried the raw task body (reminder and SLA, the
escalation role, `data`) to every reader of the process, e.g. a PDM read a dispatcher's dispatch
task through /v1/events while GET /v1/tasks/{id} answered 403. Now no credential-named key is in
an event or a public view, a task event carries the task's public shape (TaskPublic) and is shown
exactly to who may see the task. Enumerated over every task event type, every process view model
of the route table and every process of the registry.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from api.main import create_app
from api.routes.tasks import TaskPublic
from domain.events import (
    PROCESS_STATUSES,
    TASK_EVENT_FIELDS,
    TASK_TYPES,
    is_secret_key,
)
from domain.principal import Role
from domain.projection import ProcessRecord, Transition
from domain.tasks import HumanTask, TaskStatus
from store.events import TaskBefore, events_for
from store.models import ProcessRow
from tests.conftest import Stack, eventually
from tests.helpers import Actors, submit
from tests.test_events import feed_of

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def raw_task(**changes: Any) -> HumanTask:
    values: dict[str, Any] = dict(
        id="x-1.1",
        kind="po.dispatch",
        process="opportunity",
        process_id="x-1",
        partner_id="p-acme",
        candidate_role=Role.dispatcher,
        status=TaskStatus.open,
        created_at=T0,
        sla="PT4H",
        due_at=T0 + timedelta(hours=4),
        remind_at=T0 + timedelta(hours=2),
        escalate_to_role=Role.ops_admin,
        data={"internal": "x"},
    )
    values.update(changes)
    return HumanTask(**values)


def record(process: str, view: dict[str, Any], version: int = 2) -> ProcessRecord:
    return ProcessRecord(
        id="x-1",
        process=process,
        partner_id="p-acme",
        status="sent",
        version=version,
        created_at=T0,
        updated_at=T0,
        view=view,
    )


OPEN = TaskBefore(status="open", assignee=None, escalated=False)
TASK_EVENT_CASES: dict[str, tuple[HumanTask, TaskBefore | None]] = {
    "task.opened": (raw_task(), None),
    "task.completed": (raw_task(status=TaskStatus.completed, outcome="dispatch"), OPEN),
    "task.cancelled": (raw_task(status=TaskStatus.cancelled), OPEN),
    "task.escalated": (raw_task(escalated=True), OPEN),
    "task.reassigned": (raw_task(assignee="disp-2"), OPEN),
}


def test_every_task_event_type_carries_the_tasks_public_shape() -> None:
    assert set(TASK_EVENT_CASES) == set(TASK_TYPES)
    assert set(TASK_EVENT_FIELDS) == set(TaskPublic.model_fields) - {"summary"}
    previous = ProcessRow(id="x-1", process="opportunity", status="sent", version=1, view={})
    for type_, (task, before) in TASK_EVENT_CASES.items():
        t = Transition(record=record("opportunity", {"status": "sent"}), tasks=[task])
        events = events_for(
            t, previous=previous, previous_tasks={} if before is None else {task.id: before}
        )
        data = next(e["data"] for e in events if e["type"] == type_)
        assert set(data) == set(TASK_EVENT_FIELDS), type_
        for raw_only in ("remind_at", "sla", "escalate_to_role", "data", "assignee_partner_id"):
            assert raw_only not in data, (type_, raw_only)
        TaskPublic.model_validate(data)


def answered_schemas() -> dict[str, dict[str, Any]]:
    """Every OpenAPI schema a route answers with (2xx), and the schemas they refer to."""
    from config import Settings

    spec = create_app(Settings()).openapi()
    schemas: dict[str, dict[str, Any]] = spec["components"]["schemas"]
    todo: list[Any] = []
    for item in spec["paths"].values():
        for op in item.values():
            for status, answer in op.get("responses", {}).items():
                if str(status).startswith("2"):
                    todo.append(answer)
    seen: dict[str, dict[str, Any]] = {}
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
                name = ref.rsplit("/", 1)[1]
                if name not in seen:
                    seen[name] = schemas[name]
                    todo.append(schemas[name])
            todo.extend(node.values())
        elif isinstance(node, list):
            todo.extend(node)
    return seen


# Answers that make a credential and show it once to its maker (a replay shows null).
SHOWN_ONCE = {"WebhookSubscriptionPublic", "CustomerInvitationCreated"}


def test_no_public_view_or_event_has_a_credential_named_field() -> None:
    """Every model answered by a route (reads, lists, process views), except the creators'
    one-time answers; and every process's events, whatever its view holds."""
    answered = answered_schemas()
    assert {"CustomerInvitationPublic", "OpportunityView", "EventPage"} <= set(answered)
    for name, schema in answered.items():
        if name in SHOWN_ONCE:
            continue
        secret = [f for f in schema.get("properties", {}) if is_secret_key(f)]
        assert not secret, (name, secret)
    for process in PROCESS_STATUSES:
        view = {"id": "x-1", "status": "sent", "token": "t", "signing_secret": "s"}
        events = events_for(
            Transition(record=record(process, view)), previous=None, previous_tasks={}
        )
        assert events, process
        for e in events:
            assert not [k for k in e["data"] if is_secret_key(k)], (process, e["type"])


async def test_r_x_8_task_events_go_to_who_may_see_the_task(stack: Stack) -> None:
    """An unmatched PO's dispatch task: the dispatcher and the partner see its events, a PDM
    (who reads POs, and gets 403 on the task) does not; the PDM still sees the PO's events.
    Every task event any actor sees is one GET /v1/tasks/{id} lets them read."""
    a = Actors(stack)
    po = await submit(stack.http, a.cobalt, region="west-china")
    assert po["status"] == "dispatching"

    async def dispatch_opened() -> dict[str, Any] | None:
        events = await feed_of(stack.http, a.dispatcher)
        return next(
            (e for e in events if e["process_id"] == po["id"] and e["type"] == "task.opened"),
            None,
        )

    opened = await eventually(dispatch_opened, what="task.opened for the dispatcher")
    assert set(opened["data"]) == set(TASK_EVENT_FIELDS)
    task_id = opened["data"]["id"]
    r = await stack.http.get(f"/v1/tasks/{task_id}", headers=a.pdm_li)
    assert r.status_code == 403
    pdm_feed = [e for e in await feed_of(stack.http, a.pdm_li) if e["process_id"] == po["id"]]
    assert pdm_feed and not [e for e in pdm_feed if e["type"].startswith("task.")]
    for who in (a.cobalt, a.dispatcher, a.pdm_li, a.pdm_wang, a.acme, a.admin):
        for e in await feed_of(stack.http, who):
            if e["type"].startswith("task."):
                r = await stack.http.get(f"/v1/tasks/{e['data']['id']}", headers=who)
                assert r.status_code == 200, (e["type"], e["data"]["id"], r.text)
