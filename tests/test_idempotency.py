"""R-X-6, exact idempotency, over every POST/PATCH route of the app's route table, and the
issue's end-to-end cases: two users with one key, a key reused after its process closed, twenty
concurrent repeats, two actors deciding one task with one key. Also DESIGN §3: a POST whose body
fields are all optional accepts no body (generated from the OpenAPI)."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from datetime import UTC, datetime, timedelta

import httpx
from fastapi.routing import APIRoute
from sqlmodel import select

from api.frame import COMMAND_METHODS, CommandRoute
from api.idempotency import DONE, IN_FLIGHT, fingerprint, scope_of
from api.main import create_app
from api.openapi import route_table
from store.models import IdempotencyRecord, ProcessRow
from tests.conftest import Stack, eventually
from tests.helpers import ALL_PASS, Actors, complete, history_actions, po_body
from tests.test_certification import FAILING, PASSING, Certs, certs  # noqa: F401
from tests.test_certification import submit as cert_submit
from tests.test_incentives import Staff, funding_head, new_partner
from tests.test_incentives import apply as apply_incentive
from tests.test_invitations import (  # noqa: F401 - `short` is a fixture
    People,
    associated_partner,
    invite,
    new_account,
    outbox_for,
    post,
    short,
    wait_status,
)
from tests.test_resellers import Cast

SUB = "ops-idem"


def command_routes(stack: Stack) -> list[tuple[str, APIRoute, str]]:
    """(method, route, full path) for every POST and PATCH of the app, from its route table."""
    found = [
        (method, route, path)
        for route, path in route_table(create_app(stack.settings).routes)
        for method in sorted((route.methods or set()) & COMMAND_METHODS)
    ]
    assert len(found) >= 20  # the issue counted twenty; new routes join automatically
    return found


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", lambda m: f"x-{uuid.uuid4().hex[:8]}", path)


async def seed(
    stack: Stack, *, method: str, path: str, key: str, body: bytes, state: str, answer: bytes
) -> None:
    now = datetime.now(UTC)
    async with stack.sessions() as session, session.begin():
        session.add(
            IdempotencyRecord(
                scope=scope_of(SUB, method, path, key),
                fingerprint=fingerprint(method, path, "", body),
                state=state,
                attempt=uuid.uuid4().hex,
                status_code=201 if state == DONE else None,
                content_type="application/json" if state == DONE else None,
                response=answer if state == DONE else None,
                created_at=now,
                locked_until=now + timedelta(minutes=5),
                expires_at=now + timedelta(hours=24),
            )
        )


async def test_r_x_6_every_command_route_is_framed_and_binds_its_key(stack: Stack) -> None:
    """Generated from the route table: for every POST/PATCH, the same key and request replays the
    first answer byte for byte; another request under the key is 422; a key in flight is 409;
    another caller with the same key never gets that answer. The first answer is seeded at the
    idempotency layer (the guard answers before the handler), so no route needs live state."""
    me = stack.auth(SUB, ["ops_admin"])
    other = stack.auth("ops-idem-2", ["ops_admin"])
    for method, route, template in command_routes(stack):
        assert isinstance(route, CommandRoute), template
        path = concrete(template)
        first = b'{"first": "request"}'
        answer = json.dumps({"first_answer": path}).encode()
        key = f"k-{uuid.uuid4()}"
        await seed(stack, method=method, path=path, key=key, body=first, state=DONE, answer=answer)
        headers = {**me, "Idempotency-Key": key, "content-type": "application/json"}
        same = await stack.http.request(method, path, content=first, headers=headers)
        assert same.status_code == 201 and same.content == answer, (method, path, same.text)
        assert same.headers["idempotent-replayed"] == "true"
        # the same JSON value spelled differently is the same request
        spaced = await stack.http.request(
            method, path, content=b'{ "first" :  "request" }', headers=headers
        )
        assert spaced.content == answer
        changed = await stack.http.request(
            method, path, content=b'{"first": "changed"}', headers=headers
        )
        assert changed.status_code == 422, (method, path, changed.text)
        assert changed.json()["error_code"] == "PF.IDEMPOTENCY_KEY_REUSED"
        someone = await stack.http.request(
            method, path, content=first, headers={**headers, **other}
        )
        assert someone.content != answer and "idempotent-replayed" not in someone.headers
        busy = f"k-{uuid.uuid4()}"
        await seed(
            stack, method=method, path=path, key=busy, body=first, state=IN_FLIGHT, answer=b""
        )
        r = await stack.http.request(
            method, path, content=first, headers={**headers, "Idempotency-Key": busy}
        )
        assert r.status_code == 409 and r.json()["error_code"] == "PF.IDEMPOTENCY_KEY_IN_FLIGHT"
        assert r.headers.get("retry-after")


async def test_r_x_6_a_refusal_releases_the_key(stack: Stack) -> None:
    """A 4xx changed nothing: the client may fix the request and retry with the same key."""
    a = Actors(stack)
    key = {"Idempotency-Key": f"fix-{uuid.uuid4()}"}
    bad = await stack.http.post(
        "/v1/opportunities", json=po_body(amount="-1"), headers={**a.acme, **key}
    )
    assert bad.status_code == 422
    good = await stack.http.post("/v1/opportunities", json=po_body(), headers={**a.acme, **key})
    assert good.status_code == 201, good.text


async def test_r_x_6_two_users_of_one_partner_with_one_key_get_two_pos(stack: Stack) -> None:
    """The issue's example: same partner, same key, different customers → two POs, both read."""
    a = Actors(stack)
    key = {"Idempotency-Key": f"shared-{uuid.uuid4()}"}
    one, two = po_body(), po_body()
    r1 = await stack.http.post("/v1/opportunities", json=one, headers={**a.acme, **key})
    r2 = await stack.http.post("/v1/opportunities", json=two, headers={**a.acme_member, **key})
    assert r1.status_code == r2.status_code == 201, (r1.text, r2.text)
    assert r1.json()["id"] != r2.json()["id"]
    assert "idempotent-replayed" not in r2.headers
    for r, body in ((r1, one), (r2, two)):
        got = await stack.http.get(f"/v1/opportunities/{r.json()['id']}", headers=a.acme)
        assert got.status_code == 200 and got.json()["customer_name"] == body["customer_name"]


async def test_r_x_6_twenty_concurrent_repeats_of_one_key_make_one_po(stack: Stack) -> None:
    a = Actors(stack)
    body = po_body()
    headers = {**a.acme, "Idempotency-Key": f"burst-{uuid.uuid4()}"}
    rs = await asyncio.gather(
        *(stack.http.post("/v1/opportunities", json=body, headers=headers) for _ in range(20))
    )
    assert {r.status_code for r in rs} <= {201, 409}
    assert all(
        r.json()["error_code"] == "PF.IDEMPOTENCY_KEY_IN_FLIGHT" for r in rs if r.status_code == 409
    )

    async def first_answer() -> httpx.Response | None:
        r = await stack.http.post("/v1/opportunities", json=body, headers=headers)
        return r if r.status_code == 201 else None

    final = await eventually(first_answer, timeout=30, what="the first answer")
    assert all(r.content == final.content for r in rs if r.status_code == 201)
    async with stack.sessions() as session:
        rows = (
            await session.exec(
                select(ProcessRow).where(
                    ProcessRow.process == "opportunity", ProcessRow.partner_id == "p-acme"
                )
            )
        ).all()
    mine = [r for r in rows if r.view.get("customer_name") == body["customer_name"]]
    assert [r.id for r in mine] == [final.json()["id"]]


async def test_r_x_6_two_actors_with_one_key_on_one_task_one_decides(stack: Stack) -> None:
    """Two dispatchers take the same role-offered task at once with the same key, naming two
    different PDMs: one 200, the other refused, and the audit names the one who decided."""
    a = Actors(stack)
    po = (
        await stack.http.post(
            "/v1/opportunities", json=po_body(region="west-china"), headers=a.cobalt
        )
    ).json()
    assert po["status"] == "dispatching"
    tasks = await stack.http.get("/v1/tasks", params={"process_id": po["id"]}, headers=a.dispatcher)
    task_id = tasks.json()["items"][0]["id"]
    key = f"dispatch-{uuid.uuid4()}"
    d1 = stack.auth("disp-1", ["dispatcher"])
    d2 = stack.auth("disp-2", ["dispatcher"])
    r1, r2 = await asyncio.gather(
        *(
            stack.http.post(
                f"/v1/tasks/{task_id}/complete",
                json={"outcome": "dispatch", "data": {"pdm": pdm}},
                headers={**who, "Idempotency-Key": key},
            )
            for who, pdm in ((d1, "pdm-li"), (d2, "pdm-wang"))
        )
    )
    codes = sorted([r1.status_code, r2.status_code])
    assert codes[0] == 200 and codes[1] in (409, 422), (r1.text, r2.text)
    winner = "disp-1" if r1.status_code == 200 else "disp-2"
    history = (
        await stack.http.get(f"/v1/opportunities/{po['id']}/history", headers=a.cobalt)
    ).json()["items"]
    dispatched = [h for h in history if h["action"] == "dispatched"]
    assert [h["actor"] for h in dispatched] == [winner]


async def test_r_x_6_a_key_reused_after_the_po_closed_loses_nothing(stack: Stack) -> None:
    """PO: a user's PO closes (cancelled); a colleague sends a new one with the same key. The
    new one is its own process, visible, with its own history."""
    a = Actors(stack)
    key = f"reused-{uuid.uuid4()}"
    old = (
        await stack.http.post(
            "/v1/opportunities", json=po_body(), headers={**a.acme, "Idempotency-Key": key}
        )
    ).json()
    r = await stack.http.post(f"/v1/opportunities/{old['id']}/cancel", headers=a.acme)
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    body = po_body()
    new = await stack.http.post(
        "/v1/opportunities", json=body, headers={**a.acme_member, "Idempotency-Key": key}
    )
    assert new.status_code == 201 and new.json()["id"] != old["id"]
    view = (await stack.http.get(f"/v1/opportunities/{new.json()['id']}", headers=a.acme)).json()
    assert view["customer_name"] == body["customer_name"] and view["status"] != "cancelled"
    assert "submitted" in await history_actions(stack.http, a.acme, new.json()["id"])
    # a decision on the new PO works
    await complete(
        stack.http,
        a.pdm_li,
        view["open_task_id"],
        "reject",
        comment="no budget",
        data={"criteria": ALL_PASS},
    )


async def test_r_x_6_an_invitation_key_reused_after_expiry_loses_nothing(
    stack: Stack,
    short: httpx.AsyncClient,  # noqa: F811 - the fixture imported above
) -> None:
    """The issue's example: an invitation sent with key K expires; a colleague invites another
    account with K. The answer, GET and the accept all concern the new invitation."""
    p = People(stack)
    colleague = stack.auth("u-acme-3", ["partner_admin"], "p-acme")
    key = f"invite-{uuid.uuid4()}"
    first_account = await new_account(stack)
    old = await invite(short, {**p.acme, "Idempotency-Key": key}, first_account)
    await wait_status(stack.http, f"/v1/invitations/{old['id']}", p.acme, "expired")
    second_account = await new_account(stack)
    new = await invite(stack.http, {**colleague, "Idempotency-Key": key}, second_account)
    assert new["id"] != old["id"] and new["status"] == "pending"
    assert new["account_id"] == second_account
    got = (await stack.http.get(f"/v1/invitations/{new['id']}", headers=p.acme)).json()
    assert got["status"] == "pending" and got["account_id"] == second_account
    # its e-mail is its own (outbox keys name the new process), not a collision with the old
    mails = await outbox_for(stack, new["id"])
    assert mails and all(m.event_key.startswith(f"{new['id']}:") for m in mails)
    await post(stack.http, f"/v1/invitations/{new['id']}/accept", p.account(second_account))
    assert await associated_partner(stack, second_account) == "p-acme"


async def test_design_3_a_post_with_only_optional_fields_accepts_no_body(stack: Stack) -> None:
    """Generated from the OpenAPI: every POST whose body schema has no required field (or which
    has no body) answers something other than 422 when sent no body at all. One case is the
    issue's `POST /v1/opportunities/{id}/cancel`."""
    spec = (await stack.http.get("/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    me = stack.auth(SUB, ["ops_admin"])
    checked = []
    for path, ops in spec["paths"].items():
        op = ops.get("post")
        if op is None:
            continue
        body = op.get("requestBody")
        if body is not None:
            schema = body["content"]["application/json"]["schema"]
            refs = [schema.get("$ref")] + [s.get("$ref") for s in schema.get("anyOf", [])]
            resolved = [schemas[r.rsplit("/", 1)[1]] for r in refs if r]
            if not resolved or any(s.get("required") for s in resolved):
                continue
        r = await stack.http.post(concrete(path), headers=me)
        assert r.status_code != 422, (path, r.text)
        checked.append(path)
    assert "/v1/opportunities/{po_id}/cancel" in checked


async def test_r_x_6_two_cert_experts_with_one_key_on_one_task_one_decides(
    certs: Certs,  # noqa: F811 - the fixture imported above
) -> None:
    """The issue's example: two certification experts complete the same role-offered review at
    once with the same key, one passing and one failing it: one 200, the other refused, and the
    audit names the one who decided."""
    c = certs
    view = await cert_submit(c.http, c.svc)
    key = f"review-{uuid.uuid4()}"
    experts = {"expert-he": PASSING, "expert-liu": FAILING}
    r1, r2 = await asyncio.gather(
        *(
            c.http.post(
                f"/v1/tasks/{view['open_task_id']}/complete",
                json={"outcome": "decide", "data": {"items": items}},
                headers={**c.stack.auth(sub, ["cert_reviewer"]), "Idempotency-Key": key},
            )
            for sub, items in experts.items()
        )
    )
    codes = sorted([r1.status_code, r2.status_code])
    assert codes[0] == 200 and codes[1] in (409, 422), (r1.text, r2.text)
    winner = "expert-he" if r1.status_code == 200 else "expert-liu"
    status = "passed" if winner == "expert-he" else "failed"
    assert (r1 if r1.status_code == 200 else r2).json()["status"] == status
    items = (await c.http.get(f"/v1/certifications/{view['id']}/history", headers=c.svc)).json()[
        "items"
    ]
    assert [h["actor"] for h in items if h["actor"] in experts] == [winner]


async def test_r_x_6_a_customer_link_key_reused_after_expiry_loses_nothing(
    stack: Stack,
    short: httpx.AsyncClient,  # noqa: F811 - the fixture imported above
) -> None:
    """Customer invitations: a link sent with key K expires; a colleague sends a link to
    another customer with K: a new link, its own e-mail, and the customer registers with it."""
    p = People(stack)
    colleague = stack.auth("u-acme-3", ["partner_admin"], "p-acme")
    key = f"link-{uuid.uuid4()}"

    def link_body() -> dict[str, str]:
        return {"email": f"it-{uuid.uuid4().hex[:8]}@lakeside.example", "customer_name": "L"}

    old = await post(
        short,
        "/v1/customer-invitations",
        {**p.acme, "Idempotency-Key": key},
        expect=201,
        json=link_body(),
    )
    await wait_status(stack.http, f"/v1/customer-invitations/{old['id']}", p.acme, "expired")
    body = link_body()
    new = await post(
        stack.http,
        "/v1/customer-invitations",
        {**colleague, "Idempotency-Key": key},
        expect=201,
        json=body,
    )
    assert new["id"] != old["id"] and new["status"] == "sent" and new["email"] == body["email"]
    got = await stack.http.get(f"/v1/customer-invitations/{new['id']}", headers=p.acme)
    assert got.json()["status"] == "sent"
    mails = await outbox_for(stack, new["id"])
    assert [m.recipient for m in mails] == [body["email"]]
    customer = await new_account(stack, enterprise_verified=True)
    view = await post(
        stack.http, new["registration_path"], p.account(customer), json={"token": new["token"]}
    )
    assert view["status"] == "registered"


async def test_r_x_6_a_reseller_key_reused_after_rejection_loses_nothing(stack: Stack) -> None:
    """Reseller applications: one sent with key K is rejected (closed); a colleague applies again
    with K. A new application, in review, with its own e-mail, and the distributor approves it."""
    c = await Cast(stack).setup()
    reseller = await c.reseller()
    colleague = stack.auth(f"u2-{reseller.id}", ["partner_admin"], reseller.id)
    key = f"coop-{uuid.uuid4()}"
    old = await c.apply({**reseller.admin, "Idempotency-Key": key})
    rejected = await post(
        stack.http,
        f"/v1/tasks/{old['open_task_id']}/complete",
        c.reviewer,
        json={"outcome": "reject", "comment": "not this year"},
    )
    assert rejected["status"] == "rejected"
    new = await c.apply({**colleague, "Idempotency-Key": key})
    assert new["id"] != old["id"] and new["status"] == "in_review"
    got = await stack.http.get(f"/v1/reseller-applications/{new['id']}", headers=reseller.admin)
    assert got.json()["status"] == "in_review"
    assert [m.recipient for m in await outbox_for(stack, new["id"])] == [
        f"ops@{c.distributor_id}.example"
    ]
    view = await post(
        stack.http,
        f"/v1/tasks/{new['open_task_id']}/complete",
        c.reviewer,
        json={"outcome": "approve"},
    )
    assert view["status"] == "approved"


async def test_r_x_6_an_incentive_key_reused_after_rejection_loses_nothing(stack: Stack) -> None:
    """Incentives: an application sent with key K is rejected (closed); a colleague applies for
    another project with K. A new application, in review, visible, and the reviewer decides it."""
    staff = Staff(stack)
    partner = await new_partner(stack)
    key = f"inc-{uuid.uuid4()}"
    old = await apply_incentive(
        stack.http, {**partner.admin, "Idempotency-Key": key}, funding_head()
    )
    r = await stack.http.post(
        f"/v1/tasks/{old['open_task_id']}/complete",
        json={"outcome": "reject", "comment": "out of scope"},
        headers=staff.reviewer,
    )
    assert r.status_code == 200 and r.json()["status"] == "rejected", r.text
    body = funding_head()
    new = await apply_incentive(stack.http, {**partner.member, "Idempotency-Key": key}, body)
    assert new["id"] != old["id"] and new["status"] == "in_review"
    got = await stack.http.get(f"/v1/incentives/{new['id']}", headers=partner.admin)
    assert got.json()["status"] == "in_review" and got.json()["project"] == body["project"]
    r = await stack.http.post(
        f"/v1/tasks/{new['open_task_id']}/complete",
        json={"outcome": "reject", "comment": "still out of scope"},
        headers=staff.reviewer,
    )
    assert r.status_code == 200 and r.json()["status"] == "rejected", r.text
