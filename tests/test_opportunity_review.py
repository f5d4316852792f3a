"""PO review against the real stack: every rule R-PO-1 … R-PO-11, over HTTP as the portal does."""

from __future__ import annotations

from typing import Any

import pytest

from domain.opportunity import RouteRequest
from store.models import RoutingRule
from store.readmodel import best_rule
from tests.conftest import Stack, eventually
from tests.helpers import (
    ALL_PASS,
    Actors,
    complete,
    get_po,
    history_actions,
    po_body,
    submit,
    wait_po,
)


async def open_task_of(stack: Stack, headers: dict[str, str], po_id: str) -> dict[str, Any]:
    r = await stack.http.get("/v1/tasks", params={"process_id": po_id}, headers=headers)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    assert len(items) == 1, items
    return items[0]


class TestSubmission:
    async def test_r_po_1_submission_keeps_what_the_partner_sent(self, stack: Stack) -> None:
        a = Actors(stack)
        body = po_body(offerings=[], amount="0.01", region=None, industry=None)
        r = await stack.http.post("/v1/opportunities", json=body, headers=a.acme_member)
        assert r.status_code == 201, r.text
        po = r.json()
        for field in (
            "customer_name",
            "project_name",
            "offerings",
            "amount",
            "expected_close_date",
        ):
            assert po[field] == body[field]
        assert po["partner_id"] == "p-acme" and po["submitted_by"] == "u-acme-2"
        assert await get_po(stack.http, a.acme, po["id"]) == po

    @pytest.mark.parametrize("amount", ["0", "-5.00", "12.345", "abc", "NaN", "Infinity", 0, None])
    async def test_r_po_1_amount_must_be_positive_with_two_decimals(
        self, stack: Stack, amount: object
    ) -> None:
        a = Actors(stack)
        r = await stack.http.post("/v1/opportunities", json=po_body(amount=amount), headers=a.acme)
        assert r.status_code == 422, r.text
        assert r.json()["error_code"] == "PF.VALIDATION_FAILED"
        assert any("amount" in e["loc"] for e in r.json()["details"])

    @pytest.mark.parametrize(
        "missing", ["customer_name", "project_name", "amount", "expected_close_date"]
    )
    async def test_r_po_1_required_fields(self, stack: Stack, missing: str) -> None:
        a = Actors(stack)
        body = po_body()
        del body[missing]
        r = await stack.http.post("/v1/opportunities", json=body, headers=a.acme)
        assert r.status_code == 422
        assert r.json()["error_code"] == "PF.VALIDATION_FAILED"

    async def test_r_po_1_status_and_owner_in_the_body_are_refused(self, stack: Stack) -> None:
        """Fields a partner may not set (status, owner, id, flags) are refused with 422 naming
        each, not silently dropped (a typo would be dropped the same way), and nothing starts."""
        a = Actors(stack)
        foreign = {
            "status": "approved",
            "partner_id": "p-bright",
            "id": "po-mine",
            "duplicate_of": "po-x",
            "decision": {"outcome": "approve"},
            "assignee": "me",
        }
        body = po_body(**foreign)
        r = await stack.http.post("/v1/opportunities", json=body, headers=a.acme)
        assert r.status_code == 422 and r.json()["error_code"] == "PF.VALIDATION_FAILED", r.text
        named = {e["loc"][-1] for e in r.json()["details"] if e["type"] == "extra_forbidden"}
        assert named == set(foreign)
        listed = await stack.http.get(
            "/v1/opportunities", params={"q": body["customer_name"]}, headers=a.acme
        )
        assert listed.json()["items"] == []


class TestRouting:
    async def test_r_po_2_most_specific_rule_wins(self, stack: Stack) -> None:
        a = Actors(stack)
        # region + industry (pdm-sun) beats region alone (pdm-wang)
        po = await submit(stack.http, a.bright, region="north-china", industry="finance")
        assert po["assignee"] == "pdm-sun" and po["status"] == "in_review"
        po = await submit(stack.http, a.bright, region="north-china", industry="retail")
        assert po["assignee"] == "pdm-wang" and po["psm"] == "psm-qian"
        # the partner's own rule beats a matching region rule
        po = await submit(stack.http, a.acme, region="north-china", industry="finance")
        assert po["assignee"] == "pdm-li"

    def test_r_po_2_specificity_order_unit(self) -> None:
        rules = [
            RoutingRule(position=0, industry="finance", pdm="by-industry"),
            RoutingRule(position=1, region="r1", pdm="by-region"),
            RoutingRule(position=2, region="r1", industry="finance", pdm="by-both"),
            RoutingRule(position=3, partner_id="p1", pdm="by-partner"),
            RoutingRule(position=4, region="r1", pdm="by-region-later"),
        ]

        def pdm(
            partner_id: str = "p9", region: str | None = None, industry: str | None = None
        ) -> str | None:
            req = RouteRequest(
                partner_id=partner_id, region=region, industry=industry, offerings=[]
            )
            rule = best_rule(rules, req)
            return rule.pdm if rule else None

        assert pdm(partner_id="p1", region="r1", industry="finance") == "by-partner"
        assert pdm(region="r1", industry="finance") == "by-both"
        assert pdm(region="r1") == "by-region"  # the earlier of two equal rules
        assert pdm(industry="finance") == "by-industry"
        assert pdm(region="r2") is None

    async def test_r_po_3_unmatched_po_goes_through_the_dispatcher(self, stack: Stack) -> None:
        a = Actors(stack)
        po = await submit(stack.http, a.cobalt, region="west-china")
        assert po["status"] == "dispatching" and po["assignee"] is None
        task = await open_task_of(stack, a.dispatcher, po["id"])
        assert task["kind"] == "po.dispatch" and task["candidate_role"] == "dispatcher"
        # a PDM cannot dispatch; the dispatcher must name a PDM
        await complete(
            stack.http, a.pdm_li, task["id"], "dispatch", expect=403, data={"pdm": "pdm-li"}
        )
        err = await complete(stack.http, a.dispatcher, task["id"], "dispatch", expect=422, data={})
        assert err["error_code"] == "PF.INVALID_DATA"
        view = await complete(
            stack.http, a.dispatcher, task["id"], "dispatch", data={"pdm": "pdm-wang"}
        )
        assert view["status"] == "in_review" and view["assignee"] == "pdm-wang"
        review = await open_task_of(stack, a.pdm_wang, po["id"])
        assert review["kind"] == "po.review" and review["assignee"] == "pdm-wang"
        await complete(stack.http, a.pdm_wang, review["id"], "approve", data={"criteria": ALL_PASS})
        assert await history_actions(stack.http, a.cobalt, po["id"]) == [
            "submitted",
            "routed",
            "dispatched",
            "review_approve",
        ]


class TestDuplicates:
    async def test_r_po_4_duplicate_of_another_partner_is_flagged_and_earlier_approval_wins(
        self, stack: Stack
    ) -> None:
        a = Actors(stack)
        first = await submit(stack.http, a.acme)
        second = await submit(
            stack.http,
            a.bright,
            region="north-china",
            customer_name="  " + first["customer_name"].upper() + " ",
            project_name=first["project_name"].replace(" ", "  "),
        )
        assert first["duplicate_of"] is None
        assert second["duplicate_of"] == first["id"]
        # the reviewer sees the flag on the task's process summary
        task2 = await open_task_of(stack, a.pdm_wang, second["id"])
        r = await stack.http.get(f"/v1/tasks/{task2['id']}", headers=a.pdm_wang)
        assert r.json()["process_summary"]["duplicate_of"] == first["id"]

        task1 = await open_task_of(stack, a.pdm_li, first["id"])
        await complete(stack.http, a.pdm_li, task1["id"], "approve", data={"criteria": ALL_PASS})
        err = await complete(
            stack.http, a.pdm_wang, task2["id"], "approve", expect=409, data={"criteria": ALL_PASS}
        )
        assert err["error_code"] == "PF.DUPLICATE_OF_APPROVED"
        assert err["details"]["duplicate_of"] == first["id"]
        still = await get_po(stack.http, a.bright, second["id"])
        assert still["status"] == "in_review" and still["open_task_id"] == task2["id"]
        # rejecting the duplicate is still possible
        view = await complete(
            stack.http,
            a.pdm_wang,
            task2["id"],
            "reject",
            comment="duplicate of an approved PO",
            data={"criteria": ALL_PASS},
        )
        assert view["status"] == "rejected"

    async def test_r_po_4_same_partner_cannot_open_the_same_po_twice(self, stack: Stack) -> None:
        a = Actors(stack)
        body = po_body()
        r1 = await stack.http.post("/v1/opportunities", json=body, headers=a.acme)
        r2 = await stack.http.post("/v1/opportunities", json=body, headers=a.acme_member)
        assert r1.status_code == 201
        assert r2.status_code == 409, r2.text
        assert r2.json()["error_code"] == "PF.OPPORTUNITY_EXISTS"
        assert r2.json()["details"]["existing_id"] == r1.json()["id"]
        # once the first is withdrawn the partner may submit it again
        r = await stack.http.post(
            f"/v1/opportunities/{r1.json()['id']}/cancel", json={}, headers=a.acme
        )
        assert r.status_code == 200
        r3 = await stack.http.post("/v1/opportunities", json=body, headers=a.acme)
        assert r3.status_code == 201 and r3.json()["id"] != r1.json()["id"]


class TestDeadlines:
    async def test_r_po_5_reminder_at_half_sla_then_escalation_to_dispatcher(
        self, stack: Stack
    ) -> None:
        a = Actors(stack)
        po = await submit(stack.fast_http, a.acme)  # po_review_sla PT4S
        task = await open_task_of(stack, a.pdm_li, po["id"])

        async def actions() -> list[str]:
            return await history_actions(stack.http, a.acme, po["id"])

        await eventually(
            lambda: _has(actions, "task_reminded"), timeout=20, what="the reminder at half the SLA"
        )
        await eventually(
            lambda: _has(actions, "task_escalated"), timeout=20, what="the escalation on breach"
        )
        r = await stack.http.get("/v1/tasks", params={"process_id": po["id"]}, headers=a.dispatcher)
        escalated = r.json()["items"]
        assert len(escalated) == 1 and escalated[0]["escalated"] is True
        # the dispatcher reassigns; the new PDM decides, the old one no longer may
        r = await stack.http.post(
            f"/v1/tasks/{task['id']}/reassign", json={"assignee": "pdm-wang"}, headers=a.dispatcher
        )
        assert r.status_code == 200, r.text
        assert r.json()["assignee"] == "pdm-wang"
        await complete(
            stack.http, a.pdm_li, task["id"], "approve", expect=403, data={"criteria": ALL_PASS}
        )
        view = await complete(
            stack.http, a.pdm_wang, task["id"], "approve", data={"criteria": ALL_PASS}
        )
        assert view["status"] == "approved"
        acts = await actions()
        assert (
            acts.index("task_reminded")
            < acts.index("task_escalated")
            < acts.index("task_reassigned")
        )

    async def test_r_po_5_only_dispatchers_and_ops_reassign(self, stack: Stack) -> None:
        a = Actors(stack)
        po = await submit(stack.http, a.acme)
        r = await stack.http.post(
            f"/v1/tasks/{po['open_task_id']}/reassign",
            json={"assignee": "pdm-wang"},
            headers=a.pdm_li,
        )
        assert r.status_code == 403 and r.json()["error_code"] == "PF.FORBIDDEN"


async def _has(actions: object, action: str) -> bool:
    return action in await actions()  # type: ignore[operator]


class TestPartnerActions:
    async def test_r_po_6_partner_withdraws_before_decision(self, stack: Stack) -> None:
        a = Actors(stack)
        po = await submit(stack.http, a.acme)
        r = await stack.http.post(
            f"/v1/opportunities/{po['id']}/cancel",
            json={"reason": "customer postponed"},
            headers=a.bright,
        )
        assert r.status_code == 403
        r = await stack.http.post(
            f"/v1/opportunities/{po['id']}/cancel",
            json={"reason": "customer postponed"},
            headers=a.acme,
        )
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        r = await stack.http.get(f"/v1/tasks/{po['open_task_id']}", headers=a.pdm_li)
        assert r.json()["status"] == "cancelled"
        await complete(
            stack.http,
            a.pdm_li,
            po["open_task_id"],
            "approve",
            expect=409,
            data={"criteria": ALL_PASS},
        )

    async def test_r_po_6_no_withdrawal_after_decision(self, stack: Stack) -> None:
        a = Actors(stack)
        po = await submit(stack.http, a.acme)
        await complete(
            stack.http, a.pdm_li, po["open_task_id"], "approve", data={"criteria": ALL_PASS}
        )
        r = await stack.http.post(f"/v1/opportunities/{po['id']}/cancel", json={}, headers=a.acme)
        assert r.status_code == 409 and r.json()["error_code"] == "PF.WRONG_STATE"

    async def test_r_po_7_return_for_information_and_resubmit_to_same_pdm(
        self, stack: Stack
    ) -> None:
        a = Actors(stack)
        po = await submit(stack.http, a.acme)
        err = await complete(stack.http, a.pdm_li, po["open_task_id"], "return", expect=422)
        assert err["error_code"] == "PF.COMMENT_REQUIRED"
        view = await complete(
            stack.http,
            a.pdm_li,
            po["open_task_id"],
            "return",
            comment="attach the tender notice",
            data={"criteria": ALL_PASS},
        )
        assert view["status"] == "returned" and view["decision"]["comment"]
        edited = po_body(
            customer_name=po["customer_name"], project_name=po["project_name"], amount="990000.00"
        )
        r = await stack.http.post(
            f"/v1/opportunities/{po['id']}/resubmit",
            json={**edited, "comment": "attached"},
            headers=a.acme,
        )
        assert r.status_code == 200, r.text
        again = r.json()
        assert again["status"] == "in_review" and again["assignee"] == "pdm-li"
        assert again["amount"] == "990000.00" and again["open_task_id"] != po["open_task_id"]
        r = await stack.http.post(
            f"/v1/opportunities/{po['id']}/resubmit", json=edited, headers=a.acme
        )
        assert r.status_code == 409 and r.json()["error_code"] == "PF.WRONG_STATE"

    async def test_r_po_7_reject_needs_a_reason(self, stack: Stack) -> None:
        a = Actors(stack)
        po = await submit(stack.http, a.acme)
        err = await complete(
            stack.http, a.pdm_li, po["open_task_id"], "reject", expect=422, comment="   "
        )
        assert err["error_code"] == "PF.COMMENT_REQUIRED"
        view = await complete(
            stack.http,
            a.pdm_li,
            po["open_task_id"],
            "reject",
            comment="customer unknown",
            data={"criteria": {**ALL_PASS, "customer_real": False}},
        )
        assert view["status"] == "rejected" and view["decision"]["comment"] == "customer unknown"


class TestFlagsAndCriteria:
    @pytest.mark.parametrize("offerings", [["quantum-annealer"], []])
    async def test_r_po_8_unrecognised_offering_still_flows_flagged(
        self, stack: Stack, offerings: list[str]
    ) -> None:
        a = Actors(stack)
        po = await submit(stack.http, a.acme, offerings=offerings)
        assert po["offering_unmatched"] is True and po["status"] == "in_review"
        r = await stack.http.get(f"/v1/tasks/{po['open_task_id']}", headers=a.pdm_li)
        assert r.json()["process_summary"]["offering_unmatched"] is True

    async def test_r_po_10_decision_records_each_criterion(self, stack: Stack) -> None:
        a = Actors(stack)
        po = await submit(stack.http, a.acme)
        tid = po["open_task_id"]
        err = await complete(stack.http, a.pdm_li, tid, "approve", expect=422)
        assert err["error_code"] == "PF.INVALID_DATA"
        failing = {**ALL_PASS, "project_real": False}
        err = await complete(
            stack.http, a.pdm_li, tid, "approve", expect=422, data={"criteria": failing}
        )
        assert err["error_code"] == "PF.CRITERIA_NOT_MET"
        assert err["details"]["failed"] == ["project_real"]
        view = await complete(
            stack.http,
            a.pdm_li,
            tid,
            "reject",
            comment="project not real",
            data={"criteria": failing},
        )
        assert view["decision"]["criteria"] == failing
        r = await stack.http.get(f"/v1/opportunities/{po['id']}/history", headers=a.acme)
        decision = r.json()["items"][-1]
        assert decision["actor"] == "pdm-li" and decision["details"]["criteria"] == failing


class TestProgress:
    async def _approved(self, stack: Stack, a: Actors) -> dict[str, Any]:
        po = await submit(stack.http, a.acme)
        return await complete(
            stack.http, a.pdm_li, po["open_task_id"], "approve", data={"criteria": ALL_PASS}
        )

    async def test_r_po_9_progress_update_keeps_approval(self, stack: Stack) -> None:
        a = Actors(stack)
        po = await self._approved(stack, a)
        r = await stack.http.patch(
            f"/v1/opportunities/{po['id']}",
            json={"amount": "1400000.00", "expected_close_date": "2027-06-30"},
            headers=a.acme,
        )
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "approved" and r.json()["amount"] == "1400000.00"

    async def test_r_po_9_new_customer_reopens_verification(self, stack: Stack) -> None:
        a = Actors(stack)
        po = await self._approved(stack, a)
        r = await stack.http.patch(
            f"/v1/opportunities/{po['id']}",
            # (" Group" would be the same customer: a legal form, R-PO-4)
            json={"customer_name": po["customer_name"] + " Suzhou"},
            headers=a.acme,
        )
        assert r.status_code == 200, r.text
        view = r.json()
        assert view["status"] == "in_review" and view["assignee"] == "pdm-li"
        await complete(
            stack.http, a.pdm_li, view["open_task_id"], "approve", data={"criteria": ALL_PASS}
        )
        assert "reverification_requested" in await history_actions(stack.http, a.acme, po["id"])

    async def test_r_po_9_progress_before_approval_is_refused(self, stack: Stack) -> None:
        a = Actors(stack)
        po = await submit(stack.http, a.acme)
        r = await stack.http.patch(
            f"/v1/opportunities/{po['id']}", json={"stage": "won"}, headers=a.acme
        )
        assert r.status_code == 409 and r.json()["error_code"] == "PF.WRONG_STATE"

    async def test_r_po_11_approved_moves_to_won_then_delivered(self, stack: Stack) -> None:
        a = Actors(stack)
        po = await self._approved(stack, a)
        r = await stack.http.patch(
            f"/v1/opportunities/{po['id']}", json={"stage": "delivered"}, headers=a.acme
        )
        assert r.status_code == 409 and r.json()["error_code"] == "PF.INVALID_STAGE"
        for stage in ("won", "delivered"):
            r = await stack.http.patch(
                f"/v1/opportunities/{po['id']}", json={"stage": stage}, headers=a.acme
            )
            assert r.status_code == 200, r.text
            assert r.json()["status"] == stage
        # delivered is final: the workflow has completed, later changes are refused
        handle = stack.client.get_workflow_handle(po["id"])
        result = await handle.result()
        assert result["status"] == "delivered"
        r = await stack.http.patch(
            f"/v1/opportunities/{po['id']}", json={"amount": "1.00"}, headers=a.acme
        )
        assert r.status_code == 409 and r.json()["error_code"] == "PF.PROCESS_CLOSED"

    async def test_r_po_11_lost_is_final(self, stack: Stack) -> None:
        a = Actors(stack)
        po = await self._approved(stack, a)
        r = await stack.http.patch(
            f"/v1/opportunities/{po['id']}", json={"stage": "lost"}, headers=a.acme
        )
        assert r.json()["status"] == "lost"
        await wait_po(stack.http, a.acme, po["id"], lambda v: v["status"] == "lost", "lost")
