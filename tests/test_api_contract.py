"""The API contract the portal relies on: auth, the error envelope, object- and function-level
authorization, separation of duties (R-X-5), idempotency (R-X-6), rate limit (R-X-1)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import jwt
import pytest
from temporalio.api.enums.v1 import EventType

from api.auth import mint_token
from config import RateLimit
from tests.conftest import ApiServer, Stack
from tests.helpers import ALL_PASS, Actors, add_pdm, complete, history_actions, po_body, submit


def assert_envelope(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert set(body) == {"error_code", "error_msg", "details"}, body
    assert body["error_code"].startswith("PF.") and body["error_msg"]
    if code is not None:
        assert body["error_code"] == code, body
    return body


class TestAuthentication:
    @pytest.mark.parametrize(
        "header",
        [None, "Bearer", "Basic dXNlcjpwYXNz", "Bearer not-a-jwt", "Bearer a.b.c"],
    )
    async def test_r_x_2_missing_or_malformed_token_is_401(
        self, stack: Stack, header: str | None
    ) -> None:
        headers = {"Authorization": header} if header else {}
        r = await stack.http.get("/v1/tasks", headers=headers)
        assert_envelope(r, 401, "PF.UNAUTHENTICATED")

    async def test_r_x_2_expired_token_is_401(self, stack: Stack) -> None:
        token = jwt.encode(
            # expired two minutes ago: past the PT30S clock leeway
            {"sub": "pdm-li", "roles": ["pdm"], "exp": int(time.time()) - 120},
            stack.settings.jwt_secret,
            algorithm="HS256",
        )
        r = await stack.http.get("/v1/tasks", headers={"Authorization": f"Bearer {token}"})
        assert "expired" in assert_envelope(r, 401, "PF.UNAUTHENTICATED")["error_msg"]

    async def test_r_x_2_token_signed_with_another_key_is_401(self, stack: Stack) -> None:
        token = mint_token(
            "another-secret-that-is-long-enough-0123456789", sub="ops-1", roles=["ops_admin"]
        )
        r = await stack.http.get("/v1/tasks", headers={"Authorization": f"Bearer {token}"})
        assert_envelope(r, 401, "PF.UNAUTHENTICATED")

    async def test_r_x_2_unsigned_token_is_401(self, stack: Stack) -> None:
        token = jwt.encode(
            {"sub": "ops-1", "roles": ["ops_admin"], "exp": int(time.time()) + 60},
            key=None,
            algorithm="none",
        )
        r = await stack.http.get("/v1/tasks", headers={"Authorization": f"Bearer {token}"})
        assert_envelope(r, 401, "PF.UNAUTHENTICATED")

    async def test_r_x_2_unknown_role_in_token_is_401(self, stack: Stack) -> None:
        r = await stack.http.get("/v1/tasks", headers=stack.auth("x", ["emperor"]))
        assert_envelope(r, 401, "PF.UNAUTHENTICATED")


class TestErrors:
    async def test_r_x_2_unknown_route_is_404_in_the_envelope(self, stack: Stack) -> None:
        assert_envelope(await stack.http.get("/v1/nothing-here"), 404, "PF.NOT_FOUND")
        assert_envelope(await stack.http.delete("/v1/tasks"), 405, "PF.METHOD_NOT_ALLOWED")

    async def test_r_x_2_unknown_ids_are_404(self, stack: Stack) -> None:
        a = Actors(stack)
        assert_envelope(
            await stack.http.get("/v1/opportunities/po-nope", headers=a.acme), 404, "PF.NOT_FOUND"
        )
        assert_envelope(
            await stack.http.get("/v1/tasks/po-nope.1", headers=a.pdm_li), 404, "PF.TASK_NOT_FOUND"
        )
        r = await stack.http.post(
            "/v1/tasks/po-nope.1/complete", json={"outcome": "approve"}, headers=a.pdm_li
        )
        assert_envelope(r, 404, "PF.TASK_NOT_FOUND")
        assert_envelope(
            await stack.http.get("/v1/opportunities/po-nope/history", headers=a.acme), 404
        )

    async def test_r_x_2_malformed_json_is_400(self, stack: Stack) -> None:
        a = Actors(stack)
        r = await stack.http.post(
            "/v1/opportunities",
            content=b'{"customer_name": ',
            headers={**a.acme, "Content-Type": "application/json"},
        )
        assert_envelope(r, 400, "PF.MALFORMED_JSON")

    async def test_r_x_2_oversized_body_is_413(self, stack: Stack) -> None:
        a = Actors(stack)
        big = po_body(customer_name="x" * (stack.settings.max_body_bytes + 1))
        r = await stack.http.post("/v1/opportunities", json=big, headers=a.acme)
        assert_envelope(r, 413, "PF.PAYLOAD_TOO_LARGE")

    async def test_r_x_2_unknown_outcome_is_422(self, stack: Stack) -> None:
        a = Actors(stack)
        po = await submit(stack.http, a.acme)
        err = await complete(stack.http, a.pdm_li, po["open_task_id"], "rubber-stamp", expect=422)
        assert err["error_code"] == "PF.INVALID_OUTCOME"
        assert err["details"]["allowed"] == ["approve", "reject", "return"]

    async def test_r_x_2_invalid_cursor_is_400(self, stack: Stack) -> None:
        a = Actors(stack)
        r = await stack.http.get("/v1/tasks", params={"cursor": "%%%"}, headers=a.pdm_li)
        assert_envelope(r, 400, "PF.BAD_REQUEST")


class TestAuthorization:
    async def test_r_x_5_another_partner_cannot_read_or_act(self, stack: Stack) -> None:
        a = Actors(stack)
        po = await submit(stack.http, a.acme)
        for method, path, body in [
            ("GET", f"/v1/opportunities/{po['id']}", None),
            ("GET", f"/v1/opportunities/{po['id']}/history", None),
            ("POST", f"/v1/opportunities/{po['id']}/cancel", {}),
            ("PATCH", f"/v1/opportunities/{po['id']}", {"stage": "won"}),
            ("GET", f"/v1/tasks/{po['open_task_id']}", None),
        ]:
            r = await stack.http.request(method, path, json=body, headers=a.bright)
            assert_envelope(r, 403, "PF.FORBIDDEN")
        r = await stack.http.get("/v1/tasks", params={"process_id": po["id"]}, headers=a.bright)
        assert r.json()["items"] == []

    async def test_r_x_5_a_pdm_cannot_complete_another_pdms_task(self, stack: Stack) -> None:
        a = Actors(stack)
        po = await submit(stack.http, a.acme)
        r = await stack.http.post(
            f"/v1/tasks/{po['open_task_id']}/complete",
            json={"outcome": "approve", "data": {"criteria": ALL_PASS}},
            headers=a.pdm_wang,
        )
        assert_envelope(r, 403)
        assert (await stack.http.get(f"/v1/opportunities/{po['id']}", headers=a.acme)).json()[
            "status"
        ] == "in_review"

    async def test_r_x_5_partner_users_cannot_use_admin_or_staff_routes(self, stack: Stack) -> None:
        a = Actors(stack)
        for method, path, body in [
            ("PUT", "/v1/admin/partners/p-acme", {"name": "x", "kind": "software"}),
            ("PUT", "/v1/admin/routing-rules", []),
            ("PUT", "/v1/admin/accounts/acct-1", {}),
            ("PUT", "/v1/admin/offerings", []),
        ]:
            r = await stack.http.request(method, path, json=body, headers=a.acme)
            assert_envelope(r, 403, "PF.FORBIDDEN")
        po = await submit(stack.http, a.acme)
        r = await stack.http.post(
            f"/v1/tasks/{po['open_task_id']}/complete",
            json={"outcome": "approve", "data": {"criteria": ALL_PASS}},
            headers=a.acme,
        )
        assert_envelope(r, 403)

    async def test_r_x_5_staff_cannot_submit_opportunities(self, stack: Stack) -> None:
        r = await stack.http.post("/v1/opportunities", json=po_body(), headers=Actors(stack).pdm_li)
        assert_envelope(r, 403, "PF.FORBIDDEN")

    async def test_r_x_5_unregistered_partner_cannot_submit(self, stack: Stack) -> None:
        r = await stack.http.post(
            "/v1/opportunities",
            json=po_body(),
            headers=stack.auth("u-ghost", ["partner_admin"], "p-ghost"),
        )
        assert_envelope(r, 403, "PF.PARTNER_NOT_REGISTERED")

    async def test_r_x_5_nobody_decides_on_their_own_partners_item(self, stack: Stack) -> None:
        a = Actors(stack)
        po = await submit(stack.http, a.acme)
        insider = stack.auth("pdm-li", ["pdm"], "p-acme")  # the PDM, but a member of p-acme
        err = await complete(
            stack.http,
            insider,
            po["open_task_id"],
            "approve",
            expect=403,
            data={"criteria": ALL_PASS},
        )
        assert err["error_code"] == "PF.SELF_DECISION"

    async def test_r_x_5_nobody_decides_on_what_they_submitted(self, stack: Stack) -> None:
        a = Actors(stack)
        # pdm-li is (oddly) also a partner admin of p-acme: submits, and is routed to self
        both = stack.auth("pdm-li", ["partner_admin", "pdm"], "p-acme")
        po = await submit(stack.http, both)
        assert po["assignee"] == "pdm-li"
        err = await complete(
            stack.http,
            a.pdm_li,
            po["open_task_id"],
            "approve",
            expect=403,
            data={"criteria": ALL_PASS},
        )
        assert err["error_code"] == "PF.SELF_DECISION"

    async def test_r_x_5_refused_updates_leave_no_trace_in_history(self, stack: Stack) -> None:
        a = Actors(stack)
        po = await submit(stack.http, a.acme)
        handle = stack.client.get_workflow_handle(po["id"])
        before = len((await handle.fetch_history()).events)
        await complete(
            stack.http,
            a.pdm_wang,
            po["open_task_id"],
            "approve",
            expect=403,
            data={"criteria": ALL_PASS},
        )
        await complete(stack.http, a.pdm_li, po["open_task_id"], "nope", expect=422)
        events = (await handle.fetch_history()).events
        assert not any(
            e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
            and e.workflow_execution_update_accepted_event_attributes.accepted_request.input.name
            == "complete_task"
            for e in events
        )
        assert len(events) == before
        assert await history_actions(stack.http, a.acme, po["id"]) == ["submitted", "routed"]


class TestConflicts:
    async def test_r_x_6_completed_task_is_409(self, stack: Stack) -> None:
        a = Actors(stack)
        po = await submit(stack.http, a.acme)
        await complete(
            stack.http, a.pdm_li, po["open_task_id"], "approve", data={"criteria": ALL_PASS}
        )
        err = await complete(
            stack.http,
            a.pdm_li,
            po["open_task_id"],
            "reject",
            expect=409,
            comment="changed my mind",
        )
        assert err["error_code"] == "PF.TASK_NOT_OPEN"

    async def test_r_x_6_same_idempotency_key_returns_the_first_answer(self, stack: Stack) -> None:
        a = Actors(stack)
        body = po_body()
        key = {"Idempotency-Key": f"portal-{uuid.uuid4()}"}
        r1 = await stack.http.post("/v1/opportunities", json=body, headers={**a.acme, **key})
        r2 = await stack.http.post("/v1/opportunities", json=body, headers={**a.acme, **key})
        assert r1.status_code == r2.status_code == 201
        assert r1.json() == r2.json()
        assert r2.headers.get("idempotent-replayed") == "true"
        r3 = await stack.http.post("/v1/opportunities", json=po_body(), headers={**a.acme, **key})
        assert_envelope(r3, 422, "PF.IDEMPOTENCY_KEY_REUSED")

    async def test_r_x_6_concurrent_repeats_start_one_workflow(self, stack: Stack) -> None:
        a = Actors(stack)
        body = po_body()
        key = {"Idempotency-Key": f"portal-{uuid.uuid4()}"}
        rs = await asyncio.gather(
            *(
                stack.http.post("/v1/opportunities", json=body, headers={**a.acme, **key})
                for _ in range(5)
            )
        )
        # R-X-6: a repeat while the first is in flight is 409 PF.IDEMPOTENCY_KEY_IN_FLIGHT
        # (retry later for the first answer); every 201 is the first answer.
        assert {r.status_code for r in rs} <= {201, 409}
        for r in rs:
            if r.status_code == 409:
                assert_envelope(r, 409, "PF.IDEMPOTENCY_KEY_IN_FLIGHT")
                assert r.headers.get("retry-after")
        created = [r for r in rs if r.status_code == 201]
        assert created and len({r.json()["id"] for r in created}) == 1
        po_id = created[0].json()["id"]
        again = await stack.http.post("/v1/opportunities", json=body, headers={**a.acme, **key})
        assert again.status_code == 201 and again.content == created[0].content
        count = 0
        async for _ in stack.client.list_workflows(f"WorkflowId = '{po_id}'"):
            count += 1
        assert count == 1

    async def test_r_x_6_repeated_decision_is_recorded_once(self, stack: Stack) -> None:
        a = Actors(stack)
        po = await submit(stack.http, a.acme)
        key = {"Idempotency-Key": f"decision-{uuid.uuid4()}"}
        body = {"outcome": "approve", "data": {"criteria": ALL_PASS}}
        path = f"/v1/tasks/{po['open_task_id']}/complete"
        r1 = await stack.http.post(path, json=body, headers={**a.pdm_li, **key})
        r2 = await stack.http.post(path, json=body, headers={**a.pdm_li, **key})
        assert r1.status_code == r2.status_code == 200
        assert r1.json() == r2.json()
        acts = await history_actions(stack.http, a.acme, po["id"])
        assert acts.count("review_approve") == 1


class TestBulkAndInbox:
    async def test_bulk_complete_reports_each_task(self, stack: Stack) -> None:
        a = Actors(stack)
        mine = [await submit(stack.http, a.acme) for _ in range(2)]
        other = await submit(stack.http, a.bright, region="north-china")  # pdm-wang's
        ids = [p["open_task_id"] for p in mine] + [other["open_task_id"], "po-nope.1"]
        r = await stack.http.post(
            "/v1/tasks/bulk-complete",
            headers=a.pdm_li,
            json={"task_ids": ids, "outcome": "approve", "data": {"criteria": ALL_PASS}},
        )
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["succeeded"] == 2 and out["failed"] == 2
        by_id = {x["task_id"]: x for x in out["results"]}
        assert all(by_id[p["open_task_id"]]["process"]["status"] == "approved" for p in mine)
        assert by_id[other["open_task_id"]]["status_code"] == 403
        assert by_id["po-nope.1"]["error_code"] == "PF.TASK_NOT_FOUND"

    async def test_inbox_pages_most_urgent_first(self, stack: Stack) -> None:
        a = Actors(stack)
        pdm_id = f"pdm-{uuid.uuid4().hex[:6]}"
        pdm = stack.auth(pdm_id, ["pdm"])
        await add_pdm(stack.http, a.admin, pdm_id)  # a review goes only to a known PDM
        mine = []
        for _ in range(5):
            po = await submit(stack.http, a.acme)
            r = await stack.http.post(
                f"/v1/tasks/{po['open_task_id']}/reassign",
                json={"assignee": pdm_id},
                headers=a.dispatcher,
            )
            assert r.status_code == 200, r.text
            mine.append(po["open_task_id"])
        seen: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params: dict[str, str | int] = {"assignee": "me", "limit": 2}
            if cursor:
                params["cursor"] = cursor
            page = (await stack.http.get("/v1/tasks", params=params, headers=pdm)).json()
            seen += page["items"]
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert sorted(t["id"] for t in seen) == sorted(mine)
        dues = [t["due_at"] for t in seen]
        assert dues == sorted(dues)  # earliest due (overdue) first (issue 13)


class TestOperations:
    async def test_health_readiness_and_metrics(self, stack: Stack) -> None:
        assert (await stack.http.get("/healthz")).json() == {"status": "ok"}
        assert (await stack.http.get("/readyz")).json() == {"status": "ready"}
        r = await stack.http.get("/metrics")
        assert r.status_code == 200 and "partnerflow_http_requests_total" in r.text

    async def test_openapi_documents_the_envelope_and_examples(self, stack: Stack) -> None:
        spec = (await stack.http.get("/openapi.json")).json()
        op = spec["paths"]["/v1/opportunities"]["post"]
        assert "403" in op["responses"] and "ErrorEnvelope" in str(op["responses"]["422"])
        assert "examples" in str(spec["components"]["schemas"]["OpportunityCreate"])

    async def test_r_x_1_over_the_rate_limit_is_429_with_retry_after(self, stack: Stack) -> None:
        limited = ApiServer(
            stack.settings.model_copy(
                update={"rate_limit": RateLimit(requests_per_second=0.5, burst=3)}
            )
        )
        await limited.start()
        try:
            async with httpx.AsyncClient(base_url=limited.url) as http:
                headers = Actors(stack).pdm_li
                codes = [
                    (await http.get("/v1/tasks", headers=headers)).status_code for _ in range(5)
                ]
                assert codes[:3] == [200, 200, 200] and codes[3] == 429
                r = await http.get("/v1/tasks", headers=headers)
                assert_envelope(r, 429, "PF.RATE_LIMITED")
                assert int(r.headers["Retry-After"]) >= 1
                # another caller has a bucket of its own
                assert (
                    await http.get("/v1/tasks", headers=Actors(stack).pdm_wang)
                ).status_code == 200
        finally:
            await limited.stop()
