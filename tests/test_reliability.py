"""Faults survived, nothing lost, nothing done twice (issue 8): the PO review under races,
duplicates and a missing worker."""

from __future__ import annotations

import asyncio
import uuid

import httpx

from tests.conftest import ApiServer, Stack, eventually
from tests.helpers import ALL_PASS, Actors, history_actions, po_body, submit
from worker import running_worker


async def test_r_x_6_fifty_concurrent_completions_one_winner(stack: Stack) -> None:
    a = Actors(stack)
    po = await submit(stack.http, a.acme)
    path = f"/v1/tasks/{po['open_task_id']}/complete"
    body = {"outcome": "approve", "data": {"criteria": ALL_PASS}}
    responses = await asyncio.gather(
        *(stack.http.post(path, json=body, headers=a.pdm_li) for _ in range(50))
    )
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) == 1, codes
    assert set(codes) == {200, 409}, codes
    assert {r.json()["error_code"] for r in responses if r.status_code == 409} == {
        "PF.TASK_NOT_OPEN"
    }
    assert (await history_actions(stack.http, a.acme, po["id"])).count("review_approve") == 1


async def test_r_x_6_twenty_concurrent_repeats_of_one_key(stack: Stack) -> None:
    a = Actors(stack)
    body = po_body()
    headers = {**a.acme, "Idempotency-Key": f"portal-{uuid.uuid4()}"}
    responses = await asyncio.gather(
        *(stack.http.post("/v1/opportunities", json=body, headers=headers) for _ in range(20))
    )
    # R-X-6: repeats that arrive while the first is in flight are 409 IN_FLIGHT; every 201 is
    # the first answer, byte for byte
    assert {r.status_code for r in responses} <= {201, 409}
    created = [r for r in responses if r.status_code == 201]
    assert created
    first = created[0].json()
    assert all(r.content == created[0].content for r in created)
    assert all(
        r.json()["error_code"] == "PF.IDEMPOTENCY_KEY_IN_FLIGHT"
        for r in responses
        if r.status_code == 409
    )
    ids = [w.id async for w in stack.client.list_workflows(f"WorkflowId = '{first['id']}'")]
    assert ids == [first["id"]]
    assert await history_actions(stack.http, a.acme, first["id"]) == ["submitted", "routed"]


async def test_r_po_4_concurrent_same_po_exactly_one_accepted(stack: Stack) -> None:
    a = Actors(stack)
    body = po_body()
    responses = await asyncio.gather(
        *(
            stack.http.post("/v1/opportunities", json=body, headers=h)
            for h in [a.acme, a.acme_member] * 5
        )
    )
    codes = sorted(r.status_code for r in responses)
    assert codes.count(201) == 1, [r.text for r in responses]
    assert codes.count(409) == 9
    winner = next(r.json()["id"] for r in responses if r.status_code == 201)
    assert {r.json()["details"]["existing_id"] for r in responses if r.status_code == 409} == {
        winner
    }


async def test_no_worker_decision_is_503_and_never_applied_later(stack: Stack) -> None:
    """The API gives up after its timeout; a worker that comes back must not apply the decision."""
    settings = stack.settings.model_copy(
        update={"task_queue": f"pf-noworker-{uuid.uuid4().hex[:8]}", "update_timeout_seconds": 2}
    )
    api = ApiServer(settings)
    await api.start()
    a = Actors(stack)
    try:
        async with httpx.AsyncClient(base_url=api.url, timeout=30) as http:
            async with running_worker(settings, stack.client, send_notifications=False):
                po = await submit(http, a.acme)
            # the worker is gone
            r = await http.post(
                f"/v1/tasks/{po['open_task_id']}/complete",
                json={"outcome": "approve", "data": {"criteria": ALL_PASS}},
                headers=a.pdm_li,
            )
            assert r.status_code == 503, r.text
            assert r.json()["error_code"] == "PF.WORKER_UNAVAILABLE"
            assert "Retry-After" in r.headers
            async with running_worker(settings, stack.client, send_notifications=False):
                handle = stack.client.get_workflow_handle(po["id"])

                async def processed() -> bool:
                    # the worker has run a workflow task since it came back: the admitted
                    # update was seen (and refused) by now
                    tasks = await handle.query("open_tasks")
                    return bool(tasks)

                await eventually(processed, timeout=20, what="the worker to catch up")
                view = (await http.get(f"/v1/opportunities/{po['id']}", headers=a.acme)).json()
                assert view["status"] == "in_review" and view["decision"] is None
                assert await history_actions(http, a.acme, po["id"]) == ["submitted", "routed"]
                # and the same decision, retried now, goes through
                r = await http.post(
                    f"/v1/tasks/{po['open_task_id']}/complete",
                    json={"outcome": "approve", "data": {"criteria": ALL_PASS}},
                    headers=a.pdm_li,
                )
                assert r.status_code == 200, r.text
    finally:
        await api.stop()
