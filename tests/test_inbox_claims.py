"""The inbox (GET /v1/tasks): most urgent first, sorts, filters, summaries, pages over ties; and
claims on tasks offered to a role (POST /v1/tasks/{id}/claim, /unclaim) on real workflows."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from domain.opportunity import OpportunityView
from domain.principal import Role
from domain.projection import ProcessRecord, Transition
from domain.tasks import HumanTask
from store.db import transaction
from store.readmodel import apply_transition
from tests.conftest import Stack, eventually
from tests.helpers import Actors, complete, history_actions, submit
from tests.test_invitations import check_replay


async def read_inbox(
    http: httpx.AsyncClient, headers: dict[str, str], **params: Any
) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(100):
        query = {**params, **({"cursor": cursor} if cursor else {})}
        r = await http.get("/v1/tasks", params=query, headers=headers)
        assert r.status_code == 200, r.text
        items += r.json()["items"]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("the inbox never ended")


async def seed_tasks(
    stack: Stack, *, pdm: str, partner: str, dues: list[datetime | None], escalated: int = -1
) -> list[str]:
    """One PO-like process of `partner` with one open task per due time, assigned to `pdm`."""
    now = datetime.now(UTC)
    pid = f"po-{uuid.uuid4().hex[:16]}"
    tasks = [
        HumanTask(
            id=f"{pid}.{i:02d}",
            kind="po.review",
            process="opportunity",
            process_id=pid,
            partner_id=partner,
            assignee=pdm,
            created_at=now - timedelta(minutes=len(dues) - i),
            due_at=due,
            escalated=i == escalated,
            escalate_to_role=Role.dispatcher,
        )
        for i, due in enumerate(dues)
    ]
    # a whole public view, as a workflow writes it: lists read these rows as OpportunityView
    view = OpportunityView.model_validate(
        {
            "id": pid,
            "partner_id": partner,
            "status": "in_review",
            "customer_name": "Foo Ltd",
            "project_name": "Bar",
            "offerings": [],
            "amount": "1200.00",
            "region": None,
            "industry": None,
            "expected_close_date": "2027-03-31",
            "submitted_by": f"{partner}-user",
            "created_at": now.isoformat(),
            "updated_at": now.isoformat(),
        }
    ).model_dump(mode="json")
    record = ProcessRecord(
        id=pid, process="opportunity", partner_id=partner, status="in_review", version=1,
        created_at=now, updated_at=now, view=view,
    )  # fmt: skip
    async with transaction(stack.sessions) as session:
        await apply_transition(session, Transition(record=record, tasks=tasks))
    return [t.id for t in tasks]


async def test_inbox_most_urgent_first_sorts_filters_and_pages_over_ties(stack: Stack) -> None:
    pdm, partner = f"pdm-{uuid.uuid4().hex[:6]}", f"lp-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC).replace(microsecond=0)
    past, soon, later = now - timedelta(days=2), now + timedelta(days=1), now + timedelta(days=9)
    dues = [later, None, soon, past, soon, None, soon, past, later]
    ids = await seed_tasks(stack, pdm=pdm, partner=partner, dues=dues, escalated=3)
    me = stack.auth(pdm, ["pdm"])
    due_of = dict(zip(ids, dues, strict=True))

    def expected(ascending: bool) -> list[str]:
        dated = sorted((i for i in ids if due_of[i]), key=lambda i: (due_of[i], i))
        undated = sorted(i for i in ids if due_of[i] is None)
        return (dated if ascending else dated[::-1]) + (undated if ascending else undated[::-1])

    items = await read_inbox(stack.http, me, assignee="me", limit=2)
    assert [i["id"] for i in items] == expected(True)  # overdue, earliest due, undated last
    assert items[0]["summary"].endswith("PO Foo Ltd / Bar, 1200.00 CNY")
    assert all(i["claimed_by"] is None for i in items)
    for limit in (1, 3, 4):
        page = await read_inbox(stack.http, me, assignee="me", limit=limit, sort="urgency")
        assert [i["id"] for i in page] == expected(True)
    desc = await read_inbox(stack.http, me, assignee="me", limit=2, sort="-due_at")
    assert [i["id"] for i in desc] == expected(False)
    created = await read_inbox(stack.http, me, assignee="me", limit=2, sort="created_at")
    assert [i["id"] for i in created] == ids
    newest = await read_inbox(stack.http, me, assignee="me", limit=4, sort="-created_at")
    assert [i["id"] for i in newest] == ids[::-1]

    async def only(**params: Any) -> set[str]:
        return {i["id"] for i in await read_inbox(stack.http, me, assignee="me", **params)}

    overdue = {i for i in ids if due_of[i] == past}
    assert await only(overdue="true") == overdue
    assert await only(overdue="false") == set(ids) - overdue
    assert await only(due_before=(soon + timedelta(hours=1)).isoformat()) == {
        i for i in ids if due_of[i] in (past, soon)
    }
    assert await only(escalated="true") == {ids[3]}
    assert await only(process="opportunity") == set(ids)
    assert await only(process="certification") == set()
    staff = stack.auth("ops-1", ["ops_admin"])
    assert {i["id"] for i in await read_inbox(stack.http, staff, partner_id=partner)} == set(ids)
    # bad input: clear 4xx in the envelope
    other = stack.auth("u-x", ["partner_admin"], "p-other")
    for headers, params, code in (
        (other, {"partner_id": partner}, 403),
        (me, {"process": "nope"}, 422),
        (me, {"sort": "nope"}, 422),
        (me, {"cursor": "nope"}, 400),
    ):
        r = await stack.http.get("/v1/tasks", params=params, headers=headers)
        assert r.status_code == code, (params, r.text)
        assert r.json()["error_code"].startswith("PF.")
    # a cursor of one order is refused by another
    r = await stack.http.get("/v1/tasks", params={"assignee": "me", "limit": 1}, headers=me)
    cursor = r.json()["next_cursor"]
    r = await stack.http.get(
        "/v1/tasks", params={"cursor": cursor, "sort": "-created_at"}, headers=me
    )
    assert r.status_code == 400


# --- claims -------------------------------------------------------------------------------------


async def dispatch_task(stack: Stack) -> tuple[str, str]:
    """A PO no routing rule matches (p-cobalt): its dispatch task is offered to `dispatcher`."""
    po = await submit(stack.http, Actors(stack).cobalt)
    assert po["status"] == "dispatching", po
    return po["id"], po["open_task_id"]


async def history_length(stack: Stack, workflow_id: str) -> int:
    history = await stack.client.get_workflow_handle(workflow_id).fetch_history()
    return len(history.events)


async def claim(stack: Stack, headers: dict[str, str], task_id: str) -> httpx.Response:
    return await stack.http.post(f"/v1/tasks/{task_id}/claim", headers=headers)


async def test_two_claims_at_once_exactly_one_wins(stack: Stack) -> None:
    _, task_id = await dispatch_task(stack)
    claimers = [stack.auth(f"disp-{uuid.uuid4().hex[:6]}", ["dispatcher"]) for _ in range(4)]
    answers = await asyncio.gather(*(claim(stack, h, task_id) for h in claimers))
    codes = sorted(r.status_code for r in answers)
    assert codes == [200, 409, 409, 409], [r.text for r in answers]
    assert {r.json()["error_code"] for r in answers if r.status_code == 409} == {"PF.TASK_CLAIMED"}
    winner = next(r.json()["claimed_by"] for r in answers if r.status_code == 200)
    r = await stack.http.get(f"/v1/tasks/{task_id}", headers=claimers[0])
    assert r.json()["claimed_by"] == winner


async def test_claimed_task_only_the_claimer_completes_and_leads_still_reassign(
    stack: Stack,
) -> None:
    actors = Actors(stack)
    po_id, task_id = await dispatch_task(stack)
    a, b = stack.auth("disp-a", ["dispatcher"]), stack.auth("disp-b", ["dispatcher"])
    # not a candidate, not claimable, nothing to unclaim
    r = await claim(stack, actors.pdm_li, task_id)  # not offered to pdm: not even visible
    assert r.status_code == 403 and r.json()["error_code"] == "PF.FORBIDDEN", r.text
    r = await stack.http.post(f"/v1/tasks/{task_id}/unclaim", headers=a)
    assert r.status_code == 409 and r.json()["error_code"] == "PF.TASK_NOT_CLAIMED", r.text

    r = await claim(stack, a, task_id)
    assert r.status_code == 200 and r.json()["claimed_by"] == "disp-a", r.text
    assert (await claim(stack, a, task_id)).status_code == 200  # the holder again: no change
    mine = await read_inbox(stack.http, a, assignee="me", process_id=po_id)
    assert [(i["id"], i["claimed_by"]) for i in mine] == [(task_id, "disp-a")]
    assert await read_inbox(stack.http, b, assignee="me", process_id=po_id) == []

    # another dispatcher's completion is refused by the validator: nothing reaches history
    before = await history_length(stack, po_id)
    body = {"outcome": "dispatch", "data": {"pdm": "pdm-li"}}
    r = await stack.http.post(f"/v1/tasks/{task_id}/complete", json=body, headers=b)
    assert r.status_code == 409 and r.json()["error_code"] == "PF.TASK_CLAIMED", r.text
    r = await stack.http.post(f"/v1/tasks/{task_id}/unclaim", headers=b)
    assert r.status_code == 403 and r.json()["error_code"] == "PF.NOT_ASSIGNEE", r.text
    assert await history_length(stack, po_id) == before

    # the claimer gives it back; b claims it; a lead (ops_admin) takes b's claim off
    r = await stack.http.post(
        f"/v1/tasks/{task_id}/unclaim", json={"comment": "on leave"}, headers=a
    )
    assert r.status_code == 200 and r.json()["claimed_by"] is None, r.text
    assert (await claim(stack, b, task_id)).status_code == 200
    r = await stack.http.post(f"/v1/tasks/{task_id}/unclaim", headers=actors.admin)
    assert r.status_code == 200, r.text
    assert (await claim(stack, a, task_id)).status_code == 200

    # a lead's reassignment overrides the claim
    r = await stack.http.post(
        f"/v1/tasks/{task_id}/reassign", json={"assignee": "disp-b"}, headers=actors.admin
    )
    assert r.status_code == 200, r.text

    async def reassigned() -> dict[str, Any] | None:
        t = (await stack.http.get(f"/v1/tasks/{task_id}", headers=actors.admin)).json()
        return t if t["assignee"] == "disp-b" else None

    task = await eventually(reassigned, what="the reassignment in the read model")
    assert task["claimed_by"] is None
    r = await claim(stack, b, task_id)  # assigned to a person now: nothing to claim
    assert r.status_code == 409 and r.json()["error_code"] == "PF.TASK_NOT_CLAIMABLE", r.text
    await complete(stack.http, b, task_id, "dispatch", data={"pdm": "pdm-li"})
    actions = await history_actions(stack.http, actors.cobalt, po_id)
    assert actions.count("task_claimed") == 3  # the repeated claim wrote nothing
    assert actions.count("task_unclaimed") == 2
    assert "task_reassigned" in actions and "dispatched" in actions
    # a comment, then the partner withdraws: the whole history (claims, unclaims, a comment)
    # replays on the current code; recorded under tests/histories for later changes
    r = await stack.http.post(
        f"/v1/opportunities/{po_id}/comments", json={"body": "Dispatched."}, headers=b
    )
    assert r.status_code == 201, r.text
    r = await stack.http.post(f"/v1/opportunities/{po_id}/cancel", json={}, headers=actors.cobalt)
    assert r.status_code == 200, r.text
    await check_replay(stack, po_id, "opportunity_claims_comments")
