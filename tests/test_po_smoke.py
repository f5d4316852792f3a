"""The walkthrough of the README: submit, inbox, approve, history (R-PO-1, R-PO-2, R-X-3)."""

from __future__ import annotations

from tests.conftest import Stack
from tests.helpers import ALL_PASS, Actors, complete, history_actions, submit


async def test_r_po_2_routed_po_is_reviewed_by_its_pdm_and_approved(stack: Stack) -> None:
    a = Actors(stack)
    po = await submit(stack.http, a.acme)
    assert po["status"] == "in_review" and po["assignee"] == "pdm-li"
    assert po["psm"] == "psm-zhao" and po["offering_unmatched"] is False

    # most urgent first: a fresh PO's task may sit behind older ones, so ask for this PO's
    r = await stack.http.get(
        "/v1/tasks", params={"assignee": "me", "process_id": po["id"]}, headers=a.pdm_li
    )
    assert r.status_code == 200
    task = next(t for t in r.json()["items"] if t["process_id"] == po["id"])
    assert task["kind"] == "po.review" and task["status"] == "open" and task["due_at"]

    view = await complete(stack.http, a.pdm_li, task["id"], "approve", data={"criteria": ALL_PASS})
    assert view["status"] == "approved"
    assert view["decision"]["by"] == "pdm-li" and view["decision"]["criteria"] == ALL_PASS
    assert await history_actions(stack.http, a.acme, po["id"]) == [
        "submitted",
        "routed",
        "review_approve",
    ]
