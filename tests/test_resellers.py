"""Reseller cooperation applications against the real stack (R-RES-1): a reseller applies to a
distributor; only that distributor's reviewers decide, one by one or in a batch."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import Stack
from tests.test_invitations import check_replay, get, history, outbox_for, post


@dataclass
class Reseller:
    id: str
    admin: dict[str, str]
    member: dict[str, str]


class Cast:
    """A distributor with two reviewers, another distributor, and resellers made per test."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.admin = stack.auth("ops-1", ["ops_admin"])
        self.tag = uuid.uuid4().hex[:8]
        self.distributor_id = f"p-dist-{self.tag}"
        self.other_distributor_id = f"p-dist2-{self.tag}"
        self.reviewer_sub = f"d-{self.tag}-1"
        self.reviewer = stack.auth(self.reviewer_sub, ["distributor"], self.distributor_id)
        self.second_reviewer = stack.auth(f"d-{self.tag}-2", ["distributor"], self.distributor_id)
        self.other_reviewer = stack.auth(
            f"d2-{self.tag}", ["distributor"], self.other_distributor_id
        )

    async def setup(self) -> Cast:
        for pid, name in (
            (self.distributor_id, "Bright Distribution"),
            (self.other_distributor_id, "Other Distribution"),
        ):
            await self.put_partner(pid, name, "distributor", contact_email=f"ops@{pid}.example")
        return self

    async def put_partner(self, pid: str, name: str, kind: str, **extra: Any) -> None:
        r = await self.stack.http.put(
            f"/v1/admin/partners/{pid}",
            json={"name": name, "kind": kind, **extra},
            headers=self.admin,
        )
        assert r.status_code == 200, r.text

    async def reseller(self, n: int = 0) -> Reseller:
        pid = f"p-res-{self.tag}-{n}"
        await self.put_partner(pid, f"Reseller {n}", "reseller")
        return Reseller(
            pid,
            self.stack.auth(f"u-{pid}", ["partner_admin"], pid),
            self.stack.auth(f"m-{pid}", ["partner_member"], pid),
        )

    async def apply(
        self, headers: dict[str, str], distributor_id: str | None = None, *, expect: int = 201
    ) -> dict[str, Any]:
        body = {
            "distributor_id": distributor_id or self.distributor_id,
            "message": "We resell ECS in Zhejiang",
        }
        return await post(
            self.stack.http, "/v1/reseller-applications", headers, expect=expect, json=body
        )


async def inbox(stack: Stack, headers: dict[str, str], **params: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = (
        await get(
            stack.http,
            "/v1/tasks?"
            + "&".join(f"{k}={v}" for k, v in {"kind": "res.review", **params}.items()),
            headers,
        )
    )["items"]
    return items


class TestResellerApplication:
    async def test_r_res_1_distributor_approves_an_application(self, stack: Stack) -> None:
        c = await Cast(stack).setup()
        reseller = await c.reseller()
        app = await c.apply(reseller.admin)
        assert app["status"] == "in_review" and app["distributor_id"] == c.distributor_id
        assert app["partner_id"] == reseller.id
        assert app["open_task_id"] and app["message"] == "We resell ECS in Zhejiang"
        mine = await inbox(stack, c.reviewer, assignee="me")
        assert [t["id"] for t in mine] == [app["open_task_id"]]
        assert mine[0]["candidate_role"] == "distributor"
        view = await post(
            stack.http,
            f"/v1/tasks/{app['open_task_id']}/complete",
            c.reviewer,
            json={"outcome": "approve"},
        )
        assert view["status"] == "approved" and view["decision"]["by"] == c.reviewer_sub
        path = f"/v1/reseller-applications/{app['id']}"
        assert (await get(stack.http, path, reseller.member))["status"] == "approved"
        assert await history(stack, path, reseller.admin) == ["applied", "review_approve"]
        rows = await outbox_for(stack, app["id"])
        assert [r.recipient for r in rows] == [
            f"ops@{c.distributor_id}.example",
            app["submitted_by"],
        ]
        assert "approved" in rows[1].subject
        # approved: a second application to the same distributor is refused
        err = await c.apply(reseller.admin, expect=409)
        assert err["error_code"] == "PF.APPLICATION_EXISTS"
        assert err["details"] == {"existing_id": app["id"]}
        await check_replay(stack, app["id"], "reseller_application_approved")

    async def test_r_res_1_batch_approval_reports_each_item(self, stack: Stack) -> None:
        c = await Cast(stack).setup()
        apps = [await c.apply((await c.reseller(n)).admin) for n in range(3)]
        elsewhere = await c.apply((await c.reseller(9)).admin, c.other_distributor_id)
        task_ids = [a["open_task_id"] for a in apps]
        # one reviewer sees all three in the inbox, none of the other distributor's
        seen = {t["id"] for t in await inbox(stack, c.second_reviewer, assignee="me")}
        assert set(task_ids) <= seen and elsewhere["open_task_id"] not in seen
        batch = [*task_ids[:2], elsewhere["open_task_id"], task_ids[2]]
        result = await post(
            stack.http,
            "/v1/tasks/bulk-complete",
            c.reviewer,
            json={"task_ids": batch, "outcome": "approve"},
        )
        assert result["succeeded"] == 3 and result["failed"] == 1
        by_task = {r["task_id"]: r for r in result["results"]}
        assert [r["task_id"] for r in result["results"]] == batch  # reported in order
        for task_id in task_ids:
            assert by_task[task_id]["ok"] and by_task[task_id]["process"]["status"] == "approved"
        bad = by_task[elsewhere["open_task_id"]]
        assert not bad["ok"] and bad["status_code"] == 403 and bad["error_code"] == "PF.FORBIDDEN"
        for app in apps:
            view = await get(stack.http, f"/v1/reseller-applications/{app['id']}", c.reviewer)
            assert view["status"] == "approved"
        other = await get(
            stack.http, f"/v1/reseller-applications/{elsewhere['id']}", c.other_reviewer
        )
        assert other["status"] == "in_review"  # untouched by the failed item

    async def test_r_res_1_batch_reject_needs_a_comment_per_item(self, stack: Stack) -> None:
        c = await Cast(stack).setup()
        resellers = [await c.reseller(n) for n in range(2)]
        apps = [await c.apply(r.admin) for r in resellers]
        task_ids = [a["open_task_id"] for a in apps]
        result = await post(
            stack.http,
            "/v1/tasks/bulk-complete",
            c.reviewer,
            json={"task_ids": task_ids, "outcome": "reject"},
        )
        assert result["failed"] == 2
        assert {r["error_code"] for r in result["results"]} == {"PF.COMMENT_REQUIRED"}
        result = await post(
            stack.http,
            "/v1/tasks/bulk-complete",
            c.reviewer,
            json={"task_ids": task_ids, "outcome": "reject", "comment": "Region is covered"},
        )
        assert result["succeeded"] == 2
        view = await get(stack.http, f"/v1/reseller-applications/{apps[0]['id']}", c.reviewer)
        assert view["status"] == "rejected" and view["decision"]["comment"] == "Region is covered"
        # after a rejection the reseller may apply again
        again = await c.apply(resellers[0].admin)
        assert again["id"] != apps[0]["id"]

    async def test_r_res_1_only_the_named_distributors_reviewers_decide(self, stack: Stack) -> None:
        c = await Cast(stack).setup()
        reseller = await c.reseller()
        app = await c.apply(reseller.admin)
        task_path = f"/v1/tasks/{app['open_task_id']}/complete"
        pdm = stack.auth("pdm-li", ["pdm"])
        # a reviewer of another distributor, the reseller itself, a PDM: none may decide
        for headers, code in (
            (c.other_reviewer, "PF.FORBIDDEN"),
            (reseller.admin, "PF.NOT_ASSIGNEE"),
            (pdm, "PF.FORBIDDEN"),
        ):
            err = await post(
                stack.http, task_path, headers, json={"outcome": "approve"}, expect=403
            )
            assert err["error_code"] == code
        assert await inbox(stack, c.other_reviewer) == []
        err = await get(
            stack.http, f"/v1/reseller-applications/{app['id']}", c.other_reviewer, expect=403
        )
        assert err["error_code"] == "PF.FORBIDDEN"
        # the named distributor's reviewer does
        view = await post(
            stack.http, task_path, c.second_reviewer, json={"outcome": "reject", "comment": "no"}
        )
        assert view["status"] == "rejected"

    @pytest.mark.parametrize("kind", ["solution_provider", "distributor"])
    async def test_r_res_1_only_resellers_apply_and_only_to_distributors(
        self, stack: Stack, kind: str
    ) -> None:
        c = await Cast(stack).setup()
        pid = f"p-{kind}-{c.tag}"
        await c.put_partner(pid, "Not a reseller", kind)
        err = await c.apply(stack.auth(f"u-{pid}", ["partner_admin"], pid), expect=403)
        assert err["error_code"] == "PF.NOT_A_RESELLER"
        reseller = await c.reseller()
        for target in ("p-acme", f"p-missing-{c.tag}"):  # a solution provider; nobody
            err = await c.apply(reseller.admin, target, expect=422)
            assert err["error_code"] == "PF.DISTRIBUTOR_NOT_FOUND"
        err = await c.apply(reseller.member, expect=403)  # admins apply
        assert err["error_code"] == "PF.FORBIDDEN"
