"""Comments on every process (POST/GET /v1/{resource}/{id}/comments): in its history (R-X-3),
visible as the process (R-X-8), idempotent (R-X-6); routes enumerated from the resource table,
on running workflows (an Update) and closed ones (written after the last audit entry)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from api.routes.lists import RESOURCES, Resource
from tests.conftest import Stack
from tests.helpers import Actors, history_actions, submit
from tests.test_lists import seed

RESOURCE_PARAMS = [pytest.param(r, id=r.path) for r in RESOURCES]


def test_every_list_resource_has_comment_routes() -> None:
    from api.main import create_app
    from config import Settings

    paths = create_app(Settings()).openapi()["paths"]
    for resource in RESOURCES:
        ops = paths[f"/v1/{resource.path}/{{item_id}}/comments"]
        assert set(ops) >= {"get", "post"}, resource.path


@pytest.mark.parametrize("resource", RESOURCE_PARAMS)
async def test_r_x_3_r_x_8_comments_on_every_resource(stack: Stack, resource: Resource) -> None:
    partner, other = f"lp-{uuid.uuid4().hex[:10]}", f"lp-{uuid.uuid4().hex[:10]}"
    # a read-model row with no running workflow: the closed-process path
    [item_id] = await seed(stack, resource, partner_id=partner, n=1, at=datetime.now(UTC))
    base = f"/v1/{resource.path}/{item_id}"
    owner = stack.auth("u-owner", ["partner_admin"], partner)
    stranger = stack.auth("u-other", ["partner_admin"], other)
    staff = stack.auth("ops-1", ["ops_admin"])

    r = await stack.http.post(f"{base}/comments", json={"body": "first"}, headers=owner)
    assert r.status_code == 201, r.text
    assert r.json()["actor"] == "u-owner" and r.json()["body"] == "first"
    key = {"Idempotency-Key": uuid.uuid4().hex}
    r1 = await stack.http.post(
        f"{base}/comments", json={"body": "second"}, headers={**staff, **key}
    )
    r2 = await stack.http.post(
        f"{base}/comments", json={"body": "second"}, headers={**staff, **key}
    )
    # the same answer (byte-for-byte replay is the idempotency layer's own test: stored as
    # JSONB on PostgreSQL, its keys come back reordered today)
    assert r1.status_code == r2.status_code == 201 and r1.json() == r2.json()
    r = await stack.http.get(f"{base}/comments", headers=owner)
    assert r.status_code == 200, r.text
    assert [(c["actor"], c["body"]) for c in r.json()["items"]] == [
        ("u-owner", "first"),
        ("ops-1", "second"),
    ]
    page = await stack.http.get(f"{base}/comments", params={"limit": 1}, headers=owner)
    rest = await stack.http.get(
        f"{base}/comments", params={"cursor": page.json()["next_cursor"]}, headers=owner
    )
    assert [c["body"] for c in page.json()["items"] + rest.json()["items"]] == ["first", "second"]
    r = await stack.http.get(f"{base}/history", headers=owner)
    assert [(e["action"], e["comment"]) for e in r.json()["items"]][-2:] == [
        ("commented", "first"),
        ("commented", "second"),
    ]

    # R-X-8: another partner neither reads nor writes; no token is 401; bad bodies are 422
    for method, json_body in (("GET", None), ("POST", {"body": "x"})):
        r = await stack.http.request(method, f"{base}/comments", headers=stranger, json=json_body)
        assert r.status_code == 403 and r.json()["error_code"] == "PF.FORBIDDEN", r.text
        r = await stack.http.request(method, f"{base}/comments", json=json_body)
        assert r.status_code == 401, r.text
    for bad in ({"body": ""}, {"body": "   "}, {"body": "x" * 4001}, {}, {"body": "x", "y": 1}):
        r = await stack.http.post(f"{base}/comments", json=bad, headers=owner)
        assert r.status_code == 422, (bad, r.text)
    r = await stack.http.post(
        f"/v1/{resource.path}/no-such-id/comments", json={"body": "x"}, headers=owner
    )
    assert r.status_code == 404, r.text
    r = await stack.http.get(f"{base}/comments", headers=owner)
    assert len(r.json()["items"]) == 2  # nothing refused was written


async def test_r_x_3_comments_on_a_running_and_a_closed_po_are_in_its_history(
    stack: Stack,
) -> None:
    actors = Actors(stack)
    po = await submit(stack.http, actors.acme)
    base = f"/v1/opportunities/{po['id']}"
    before = await stack.client.get_workflow_handle(po["id"]).fetch_history()
    r = await stack.http.post(
        f"{base}/comments", json={"body": "Tender is on 3 March."}, headers=actors.acme
    )
    assert r.status_code == 201, r.text
    r = await stack.http.post(
        f"{base}/comments", json={"body": "Thanks, noted."}, headers=actors.pdm_li
    )
    assert r.status_code == 201, r.text
    after = await stack.client.get_workflow_handle(po["id"]).fetch_history()
    assert len(after.events) > len(before.events)  # the running workflow recorded them
    r = await stack.http.post(f"{base}/cancel", json={"reason": "lost"}, headers=actors.acme)
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    await stack.client.get_workflow_handle(po["id"]).result()  # the workflow has closed
    r = await stack.http.post(f"{base}/comments", json={"body": "Closed."}, headers=actors.acme)
    assert r.status_code == 201, r.text
    actions = await history_actions(stack.http, actors.acme, po["id"])
    assert actions[-4:] == ["commented", "commented", "cancelled", "commented"], actions
    r = await stack.http.get(f"{base}/comments", headers=actors.bright)
    assert r.status_code == 403
    r = await stack.http.get(f"{base}/comments", headers=actors.acme_member)
    assert [c["body"] for c in r.json()["items"]] == [
        "Tender is on 3 March.",
        "Thanks, noted.",
        "Closed.",
    ]
