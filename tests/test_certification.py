"""Certification against the real stack: every rule R-CERT-1 … R-CERT-9 over HTTP as the portal
and the experts use it, the certified-at query on both databases, and a recorded history.

Calendar tests use their own API server whose policy runs a year in seconds (`CERT_POLICY`).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity
from temporalio.client import WorkflowHistory, WorkflowUpdateStage
from temporalio.worker import Worker

from domain.certification import (
    CertificationCreate,
    CertificationInput,
    Recertify,
    RequestDefense,
    certification_id,
    valid_until,
)
from domain.policy import Policy, add_duration
from domain.principal import Principal, Role
from domain.projection import ProcessRecord, Transition
from domain.search_attributes import DUE_AT, STAGE
from domain.tasks import CompleteTask
from store import certifications
from store.models import OutboxMessage, ProcessRow
from store.readmodel import apply_transition
from tests.conftest import ApiServer, Stack, eventually
from tests.test_replay import HISTORIES, replayer
from worker import workflow_runner
from workflows.certification import Certification

# A year in seconds: the window opens 4 s before expiry, reminders 3 s and 2 s before it.
CERT_POLICY = Policy(
    cert_validity="PT8S",
    recert_window="PT4S",
    cert_reminders=["PT3S", "PT2S"],
    cert_defense_period="PT3S",
)

PASSING = [
    {"item_id": "arch-1", "mandatory": True, "passed": True},
    {"item_id": "ops-2", "mandatory": True, "passed": True, "note": "exemplary runbooks"},
    {"item_id": "docs-3", "mandatory": False, "passed": False, "note": "add an English summary"},
]
FAILING = [
    {"item_id": "arch-1", "mandatory": True, "passed": True},
    {"item_id": "ops-2", "mandatory": True, "passed": False, "note": "no disaster-recovery drill"},
    {"item_id": "docs-3", "mandatory": False, "passed": False, "note": "add an English summary"},
]
EVIDENCE = [{"title": "Three delivered migrations", "url": "https://files.example/cases.pdf"}]


@dataclass
class Certs:
    """The stack plus what certification tests need: service partners, people, a fast API."""

    stack: Stack
    fast: httpx.AsyncClient  # CERT_POLICY
    svc: dict[str, str]  # partner_admin of p-svc, a service partner
    svc_member: dict[str, str]
    other: dict[str, str]  # partner_admin of p-svc-2
    cobalt: dict[str, str]  # a software partner
    expert: dict[str, str]
    ops: dict[str, str]
    pdm: dict[str, str]

    @property
    def http(self) -> httpx.AsyncClient:
        return self.stack.http


@pytest.fixture(scope="session")
async def certs(stack: Stack) -> AsyncIterator[Certs]:
    admin = stack.auth("ops-1", ["ops_admin"])
    for pid in ("p-svc", "p-svc-2"):
        r = await stack.http.put(
            f"/v1/admin/partners/{pid}",
            json={"name": f"Service partner {pid}", "kind": "service", "region": "east-china"},
            headers=admin,
        )
        assert r.status_code == 200, r.text
    api = ApiServer(stack.settings.model_copy(update={"policy": CERT_POLICY}))
    await api.start()
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as fast:
        yield Certs(
            stack=stack,
            fast=fast,
            svc=stack.auth("u-svc-1", ["partner_admin"], "p-svc"),
            svc_member=stack.auth("u-svc-2", ["partner_member"], "p-svc"),
            other=stack.auth("u-svc2-1", ["partner_admin"], "p-svc-2"),
            cobalt=stack.auth("u-cobalt-1", ["partner_admin"], "p-cobalt"),
            expert=stack.auth("expert-he", ["cert_reviewer"]),
            ops=stack.auth("cert-ops-wu", ["cert_ops"]),
            pdm=stack.auth("pdm-li", ["pdm"]),
        )
    await api.stop()


def cert_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "capability_label",
        "subject": f"migration-{uuid.uuid4().hex[:8]}",
        "level": 2,
        "evidence": EVIDENCE,
    }
    body.update(overrides)
    return body


async def submit(
    http: httpx.AsyncClient, headers: dict[str, str], **overrides: Any
) -> dict[str, Any]:
    r = await http.post("/v1/certifications", json=cert_body(**overrides), headers=headers)
    assert r.status_code == 201, r.text
    view: dict[str, Any] = r.json()
    return view


async def complete(
    http: httpx.AsyncClient,
    headers: dict[str, str],
    task_id: str,
    outcome: str,
    *,
    expect: int = 200,
    **body: Any,
) -> dict[str, Any]:
    r = await http.post(
        f"/v1/tasks/{task_id}/complete", json={"outcome": outcome, **body}, headers=headers
    )
    assert r.status_code == expect, r.text
    result: dict[str, Any] = r.json()
    return result


async def decide(
    c: Certs, view: dict[str, Any], items: list[dict[str, Any]], **body: Any
) -> dict[str, Any]:
    return await complete(
        c.http, c.expert, view["open_task_id"], "decide", data={"items": items}, **body
    )


async def get(c: Certs, cert_id: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    r = await c.http.get(f"/v1/certifications/{cert_id}", headers=headers or c.svc)
    assert r.status_code == 200, r.text
    view: dict[str, Any] = r.json()
    return view


async def actions(c: Certs, cert_id: str) -> list[str]:
    r = await c.http.get(f"/v1/certifications/{cert_id}/history", headers=c.svc)
    assert r.status_code == 200, r.text
    return [item["action"] for item in r.json()["items"]]


async def wait_for(c: Certs, cert_id: str, what: str, predicate: Any) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        view = await get(c, cert_id)
        return view if predicate(view) else None

    return await eventually(probe, timeout=30, what=what)


async def mail_for(c: Certs, cert_id: str) -> list[OutboxMessage]:
    async with c.stack.sessions() as session:
        rows = await session.exec(
            select(OutboxMessage)
            .where(col(OutboxMessage.event_key).startswith(f"{cert_id}:"))
            .order_by(col(OutboxMessage.id))
        )
        return list(rows.all())


async def search_attributes(c: Certs, cert_id: str) -> tuple[str | None, datetime | None]:
    desc = await c.stack.client.get_workflow_handle(cert_id).describe()
    return desc.typed_search_attributes.get(STAGE), desc.typed_search_attributes.get(DUE_AT)


async def run_id(c: Certs, cert_id: str) -> str:
    return (await c.stack.client.get_workflow_handle(cert_id).describe()).run_id


async def _stage_is(c: Certs, cert_id: str, stage: str) -> bool:
    # a timer's transition reaches the read model a workflow task before the search attributes
    return (await search_attributes(c, cert_id))[0] == stage


def when(text: str) -> datetime:
    return datetime.fromisoformat(text)


async def recertify(
    http: httpx.AsyncClient, headers: dict[str, str], cert_id: str, *, expect: int = 200
) -> dict[str, Any]:
    r = await http.post(
        f"/v1/certifications/{cert_id}/recertify",
        json={"evidence": [{"title": "This year's cases"}], "comment": "renewal"},
        headers=headers,
    )
    assert r.status_code == expect, r.text
    result: dict[str, Any] = r.json()
    return result


async def request_defense(
    http: httpx.AsyncClient, headers: dict[str, str], cert_id: str, *, expect: int = 200
) -> dict[str, Any]:
    r = await http.post(
        f"/v1/certifications/{cert_id}/defense",
        json={"reason": "item ops-2 overlooked the drill report we attached"},
        headers=headers,
    )
    assert r.status_code == expect, r.text
    result: dict[str, Any] = r.json()
    return result


class TestSubmission:
    async def test_r_cert_1_submission_opens_a_review_for_the_experts(self, certs: Certs) -> None:
        c = certs
        # what a partner may not set is refused, naming it, and starts nothing (not dropped)
        r = await c.http.post(
            "/v1/certifications",
            json=cert_body(status="passed", partner_id="p-other"),
            headers=c.svc_member,
        )
        assert r.status_code == 422 and r.json()["error_code"] == "PF.VALIDATION_FAILED", r.text
        assert {e["loc"][-1] for e in r.json()["details"]} == {"status", "partner_id"}
        view = await submit(c.http, c.svc_member)
        assert view["id"] == f"cert-p-svc-{view['subject']}"
        assert view["status"] == "in_review" and view["partner_id"] == "p-svc"
        assert view["kind"] == "capability_label" and view["level"] == 2
        assert view["valid_until"] is None and view["window_opens_at"] is None
        assert (
            view["items"] == [] and view["attempt"]["evidence"][0]["title"] == EVIDENCE[0]["title"]
        )
        r = await c.http.get("/v1/tasks", params={"process_id": view["id"]}, headers=c.expert)
        [task] = r.json()["items"]
        assert task["id"] == view["open_task_id"] and task["kind"] == "cert.review"
        assert task["candidate_role"] == "cert_reviewer" and task["assignee"] is None
        assert await get(c, view["id"]) == view
        assert await actions(c, view["id"]) == ["submitted"]

    @pytest.mark.parametrize(
        "overrides",
        [
            {"level": None},  # a capability label needs its level
            {"level": 3},
            {"kind": "cloud_software", "level": 1},  # level is for labels only
            {"kind": "premium"},
            {"subject": "Container_Migration"},
            {"subject": "-leading-dash"},
            {"subject": "x" * 64},
            {"subject": ""},
            {"evidence": []},
            {"evidence": [{"url": "https://files.example/no-title"}]},
        ],
    )
    async def test_r_cert_1_kind_level_subject_and_evidence_are_checked(
        self, certs: Certs, overrides: dict[str, Any]
    ) -> None:
        r = await certs.http.post(
            "/v1/certifications", json=cert_body(**overrides), headers=certs.svc
        )
        assert r.status_code == 422, r.text
        assert r.json()["error_code"] == "PF.VALIDATION_FAILED"

    async def test_r_cert_1_capability_labels_are_for_service_partners(self, certs: Certs) -> None:
        r = await certs.http.post("/v1/certifications", json=cert_body(), headers=certs.cobalt)
        assert r.status_code == 403 and r.json()["error_code"] == "PF.KIND_NOT_ELIGIBLE"
        view = await submit(certs.http, certs.cobalt, kind="cloud_software", level=None)
        assert view["status"] == "in_review" and view["level"] is None

    async def test_a_subject_is_certified_once_per_partner(self, certs: Certs) -> None:
        c = certs
        body = cert_body()
        first = await c.http.post("/v1/certifications", json=body, headers=c.svc)
        assert first.status_code == 201
        again = await c.http.post("/v1/certifications", json=body, headers=c.svc_member)
        assert again.status_code == 409
        assert again.json()["error_code"] == "PF.CERTIFICATION_EXISTS"
        assert again.json()["details"] == {"existing_id": first.json()["id"]}
        # another partner may certify the same subject
        other = await submit(c.http, c.other, subject=body["subject"])
        assert other["id"] == f"cert-p-svc-2-{body['subject']}"

    async def test_r_x_6_same_idempotency_key_returns_the_first_answer(self, certs: Certs) -> None:
        c = certs
        body, key = cert_body(), {"Idempotency-Key": uuid.uuid4().hex}
        one = await c.http.post("/v1/certifications", json=body, headers=c.svc | key)
        two = await c.http.post("/v1/certifications", json=body, headers=c.svc | key)
        assert one.status_code == two.status_code == 201
        assert one.json() == two.json() and two.headers["Idempotent-Replayed"] == "true"

    async def test_only_registered_partner_users_submit(self, certs: Certs) -> None:
        c = certs
        r = await c.http.post("/v1/certifications", json=cert_body(), headers=c.expert)
        assert r.status_code == 403 and r.json()["error_code"] == "PF.FORBIDDEN"
        stranger = c.stack.auth("u-x", ["partner_admin"], "p-unregistered")
        r = await c.http.post("/v1/certifications", json=cert_body(), headers=stranger)
        assert r.status_code == 403 and r.json()["error_code"] == "PF.PARTNER_NOT_REGISTERED"


class TestReview:
    async def test_r_cert_2_failed_item_without_note_is_refused(self, certs: Certs) -> None:
        c = certs
        view = await submit(c.http, c.svc)
        items = [{"item_id": "arch-1", "mandatory": True, "passed": False, "note": "  "}]
        items.append({"item_id": "docs-3", "mandatory": False, "passed": False})
        err = await complete(
            c.http, c.expert, view["open_task_id"], "decide", expect=422, data={"items": items}
        )
        assert err["error_code"] == "PF.IMPROVEMENT_NOTE_REQUIRED"
        assert err["details"] == {"item_ids": ["arch-1", "docs-3"]}
        invalid: list[dict[str, Any]] = [
            {"items": []},
            {"items": PASSING + PASSING[:1]},  # the same item twice
            {"items": [{"item_id": "a", "passed": True}]},  # mandatory or not?
        ]
        for data in invalid:
            err = await complete(
                c.http, c.expert, view["open_task_id"], "decide", expect=422, data=data
            )
            assert err["error_code"] == "PF.INVALID_DATA"
        # nothing was recorded: same state, same history, the task still open
        assert await get(c, view["id"]) == view
        assert await actions(c, view["id"]) == ["submitted"]

    async def test_r_cert_2_passed_only_if_every_mandatory_item_passes(self, certs: Certs) -> None:
        c = certs
        passed = await decide(c, await submit(c.http, c.svc), PASSING)  # an optional item failed
        assert passed["status"] == "passed" and passed["result"]["outcome"] == "pass"
        assert passed["items"] == [{"note": None, **PASSING[0]}, *PASSING[1:]]
        failed = await decide(c, await submit(c.http, c.svc), FAILING)
        assert failed["status"] == "failed" and failed["result"]["outcome"] == "fail"
        assert failed["valid_until"] is None and failed["periods"] == []
        assert when(failed["defense_until"]) == add_duration(
            when(failed["result"]["decided_at"]), Policy().cert_defense_period
        )

    async def test_r_cert_5_valid_for_twelve_calendar_months_from_the_pass(
        self, certs: Certs
    ) -> None:
        c = certs
        view = await decide(c, await submit(c.http, c.svc), PASSING)
        passed_at = when(view["result"]["decided_at"])
        assert when(view["passed_at"]) == passed_at
        assert when(view["valid_until"]) == valid_until(passed_at, "P12M")
        assert when(view["window_opens_at"]) == when(view["valid_until"]) - timedelta(days=60)
        assert [n["kind"] for n in view["notices"]] == [
            "window_opens",
            "reminder",
            "reminder",
            "expiry",
        ]
        assert all(n["state"] == "scheduled" for n in view["notices"])

    async def test_r_cert_4_result_email_carries_per_item_feedback(self, certs: Certs) -> None:
        c = certs
        view = await decide(c, await submit(c.http, c.svc_member), FAILING, comment="close")
        [result_mail] = [m for m in await mail_for(c, view["id"]) if "failed" in m.subject]
        assert result_mail.recipient == "u-svc-2"  # the submitter
        body = result_mail.body
        assert "arch-1 (mandatory): pass" in body
        assert "ops-2 (mandatory): fail - improvement note: no disaster-recovery drill" in body
        assert "docs-3 (optional): fail - improvement note: add an English summary" in body
        assert "defense" in body
        # archived: the read model and the history keep every item
        r = await c.http.get(f"/v1/certifications/{view['id']}/history", headers=c.svc)
        decided = r.json()["items"][-1]
        assert decided["action"] == "review_fail" and decided["actor"] == "expert-he"
        assert [i["item_id"] for i in decided["details"]["items"]] == ["arch-1", "ops-2", "docs-3"]

    async def test_r_x_5_only_certification_experts_decide(self, certs: Certs) -> None:
        c = certs
        view = await submit(c.http, c.svc)
        data = {"items": PASSING}
        for who in (c.pdm, c.ops):
            err = await complete(c.http, who, view["open_task_id"], "decide", expect=403, data=data)
            assert err["error_code"] == "PF.FORBIDDEN"  # not even in their inbox
        # an expert who belongs to the partner does not decide on its items
        own = c.stack.auth("u-svc-9", ["cert_reviewer", "partner_member"], "p-svc")
        err = await complete(c.http, own, view["open_task_id"], "decide", expect=403, data=data)
        assert err["error_code"] == "PF.SELF_DECISION"
        err = await complete(c.http, c.expert, view["open_task_id"], "held", expect=422)
        assert err["error_code"] == "PF.INVALID_OUTCOME"


class TestDefense:
    async def test_r_cert_3_defense_while_the_review_is_pending(self, certs: Certs) -> None:
        c = certs
        view = await submit(c.http, c.svc)
        review_id = view["open_task_id"]
        view = await request_defense(c.http, c.svc_member, view["id"])
        assert view["status"] == "defense_requested"
        assert view["attempt"]["defense"]["requested_by"] == "u-svc-2"
        r = await c.http.get(f"/v1/tasks/{review_id}", headers=c.expert)
        assert r.json()["status"] == "cancelled"  # the experts wait for the defense
        defense_id = view["open_task_id"]
        r = await c.http.get(
            "/v1/tasks", params={"kind": "cert.defense", "process_id": view["id"]}, headers=c.ops
        )
        assert defense_id in [t["id"] for t in r.json()["items"]]
        # only certification operations schedule and hold it; in the future
        await complete(c.http, c.expert, defense_id, "held", expect=403)
        past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
        err = await complete(
            c.http, c.ops, defense_id, "schedule", expect=422, data={"scheduled_at": past}
        )
        assert err["error_code"] == "PF.INVALID_DATA"
        at = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
        view = await complete(
            c.http,
            c.ops,
            defense_id,
            "schedule",
            data={"scheduled_at": at.isoformat(), "meeting": "https://meet.example/d1"},
        )
        assert view["status"] == "defense_scheduled" and view["open_task_id"] == defense_id
        assert when(view["attempt"]["defense"]["scheduled_at"]) == at
        stage, due = await search_attributes(c, view["id"])
        assert stage == "defense_scheduled" and due == at
        assert any("defense scheduled" in m.subject for m in await mail_for(c, view["id"]))
        # one defense per attempt
        err = await request_defense(c.http, c.svc, view["id"], expect=409)
        assert err["error_code"] == "PF.DEFENSE_ALREADY_USED"
        view = await complete(c.http, c.ops, defense_id, "held", comment="partner showed drill")
        assert view["status"] == "in_review" and view["open_task_id"] not in (review_id, None)
        assert view["attempt"]["defense"]["held_by"] == "cert-ops-wu"
        view = await decide(c, view, PASSING)
        assert view["status"] == "passed"
        assert await actions(c, view["id"]) == [
            "submitted",
            "defense_requested",
            "review_suspended",
            "defense_scheduled",
            "defense_held",
            "review_pass",
        ]

    async def test_r_cert_3_defense_within_the_period_after_a_failure(self, certs: Certs) -> None:
        c = certs
        view = await decide(c, await submit(c.http, c.svc), FAILING)
        view = await request_defense(c.http, c.svc, view["id"])
        assert view["status"] == "defense_requested" and view["defense_until"] is None
        view = await complete(c.http, c.ops, view["open_task_id"], "held")
        assert view["status"] == "in_review"
        view = await decide(c, view, PASSING)  # the experts decide again
        assert view["status"] == "passed" and view["valid_until"] is not None

    async def test_r_cert_3_no_defense_after_the_period_or_of_a_pass(self, certs: Certs) -> None:
        c = certs
        view = await submit(c.fast, c.svc)  # cert_defense_period PT3S
        view = await complete(
            c.fast, c.expert, view["open_task_id"], "decide", data={"items": FAILING}
        )
        until = when(view["defense_until"])

        async def period_over() -> bool:
            return datetime.now(UTC) > until + timedelta(milliseconds=200)

        await eventually(period_over, timeout=10, what="the defense period to end")
        err = await request_defense(c.http, c.svc, view["id"], expect=409)
        assert err["error_code"] == "PF.DEFENSE_PERIOD_OVER"
        assert when(err["details"]["defense_until"]) == until
        passed = await decide(c, await submit(c.http, c.svc), PASSING)
        err = await request_defense(c.http, c.svc, passed["id"], expect=409)
        assert err["error_code"] == "PF.WRONG_STATE"
        r = await c.http.post(
            f"/v1/certifications/{passed['id']}/defense", json={"reason": " "}, headers=c.svc
        )
        assert r.status_code == 422


class TestDefenseOnBehalf:
    async def test_r_cert_3_the_partners_pdm_or_cert_ops_request_a_defense_on_its_behalf(
        self, certs: Certs
    ) -> None:
        c = certs
        # a service partner in north-china: the routing table names pdm-wang for it
        pid = f"p-svc-n-{uuid.uuid4().hex[:8]}"
        r = await c.http.put(
            f"/v1/admin/partners/{pid}",
            json={"name": "North services", "kind": "service", "region": "north-china"},
            headers=c.stack.auth("ops-1", ["ops_admin"]),
        )
        assert r.status_code == 200, r.text
        partner = c.stack.auth(f"u-{pid}", ["partner_admin"], pid)
        view = await submit(c.http, partner)
        cid = view["id"]
        for stranger in (c.pdm, c.expert):  # pdm-li is not this partner's PDM
            err = await request_defense(c.http, stranger, cid, expect=403)
            assert err["error_code"] == "PF.FORBIDDEN"
        wang = c.stack.auth("pdm-wang", ["pdm"])
        view = await request_defense(c.http, wang, cid)
        assert view["status"] == "defense_requested"
        defense = view["attempt"]["defense"]
        assert defense["requested_by"] == "pdm-wang" and defense["on_behalf_of"] == pid
        mails = await mail_for(c, cid)
        assert any(m.recipient == f"u-{pid}" and "on your behalf" in m.subject for m in mails), [
            m.subject for m in mails
        ]
        # certification operations, for a failed attempt of another partner
        failed = await decide(c, await submit(c.http, c.svc), FAILING)
        view = await request_defense(c.http, c.ops, failed["id"])
        assert view["attempt"]["defense"]["on_behalf_of"] == "p-svc"
        assert view["attempt"]["defense"]["requested_by"] == "cert-ops-wu"


class TestClarification:
    async def test_r_cert_3_expert_asks_and_the_review_returns_to_them_with_the_answer(
        self, certs: Certs
    ) -> None:
        c = certs
        view = await submit(c.http, c.svc)
        cid, review_id = view["id"], view["open_task_id"]
        err = await complete(c.http, c.expert, review_id, "clarify", expect=422)
        assert err["error_code"] == "PF.COMMENT_REQUIRED"
        # nothing asked yet: nothing to answer
        r = await c.http.post(
            f"/v1/certifications/{cid}/clarification", json={"answer": "early"}, headers=c.svc
        )
        assert r.status_code == 409 and r.json()["error_code"] == "PF.WRONG_STATE"
        view = await complete(
            c.http, c.expert, review_id, "clarify", comment="Which drill report covers ops-2?"
        )
        assert view["status"] == "clarification_requested" and view["open_task_id"] is None
        (asked,) = view["attempt"]["clarifications"]
        assert asked["asked_by"] == "expert-he" and asked["answer"] is None
        assert any("Which drill report" in m.body for m in await mail_for(c, cid))
        r = await c.http.post(
            f"/v1/certifications/{cid}/clarification", json={"answer": " "}, headers=c.svc
        )
        assert r.status_code == 422
        r = await c.http.post(
            f"/v1/certifications/{cid}/clarification",
            json={"answer": "Attachment 3, the March drill."},
            headers=c.svc_member,
        )
        assert r.status_code == 200, r.text
        view = r.json()
        assert view["status"] == "in_review"
        (answered,) = view["attempt"]["clarifications"]
        assert answered["answer"] == "Attachment 3, the March drill."
        assert answered["answered_by"] == "u-svc-2"
        # back to the same expert, not to the pool
        r = await c.http.get(f"/v1/tasks/{view['open_task_id']}", headers=c.expert)
        assert r.status_code == 200, r.text
        assert r.json()["assignee"] == "expert-he" and r.json()["candidate_role"] is None
        other_expert = c.stack.auth("expert-ma", ["cert_reviewer"])
        await complete(
            c.http,
            other_expert,
            view["open_task_id"],
            "decide",
            expect=403,
            data={"items": PASSING},
        )
        r = await c.http.post(
            f"/v1/certifications/{cid}/clarification", json={"answer": "again"}, headers=c.svc
        )
        assert r.status_code == 409 and r.json()["error_code"] == "PF.WRONG_STATE"
        view = await decide(c, view, PASSING)
        assert view["status"] == "passed"
        r = await c.http.get(f"/v1/certifications/{cid}/history", headers=c.svc)
        items = r.json()["items"]
        assert [i["action"] for i in items] == [
            "submitted",
            "clarification_requested",
            "clarification_answered",
            "review_pass",
        ]
        assert items[2]["comment"] == "Attachment 3, the March drill."
        assert items[2]["details"]["asked_by"] == "expert-he"
        if c.stack.db == "sqlite":
            history = await c.stack.client.get_workflow_handle(cid).fetch_history()
            await replayer().replay_workflow(history)
            if os.environ.get("PARTNERFLOW_RECORD_HISTORIES") == "1":
                label = "certification_clarification"
                (HISTORIES / f"{label}__{cid}.json").write_text(history.to_json())


class TestRecertification:
    async def test_r_cert_9_recertification_before_the_window_is_refused(
        self, certs: Certs
    ) -> None:
        c = certs
        view = await decide(c, await submit(c.http, c.svc), PASSING)
        before_run, before_history = await run_id(c, view["id"]), await actions(c, view["id"])
        err = await recertify(c.http, c.svc, view["id"], expect=409)
        assert err["error_code"] == "PF.RECERT_WINDOW_NOT_OPEN"
        assert when(err["details"]["window_opens_at"]) == when(view["window_opens_at"])
        assert when(err["details"]["valid_until"]) == when(view["valid_until"])
        assert "recertification opens on" in err["error_msg"]
        # nothing changed: state, history, run
        assert await get(c, view["id"]) == view
        assert await actions(c, view["id"]) == before_history
        assert await run_id(c, view["id"]) == before_run

    async def test_r_cert_6_cycle_pass_window_recertify_pass(self, certs: Certs) -> None:
        """pass → window opens (partner notified) → recertify (a new run) → pass → validity from
        the recertification's pass date."""
        c = certs
        view = await submit(c.fast, c.svc)
        first_run = await run_id(c, view["id"])
        view = await complete(
            c.fast, c.expert, view["open_task_id"], "decide", data={"items": PASSING}
        )
        first_until = when(view["valid_until"])
        stage, due = await search_attributes(c, view["id"])
        assert stage == "passed" and due == when(view["window_opens_at"])
        view = await wait_for(
            c, view["id"], "the window to open", lambda v: v["status"] != "passed"
        )
        assert view["status"] in ("window_open", "expired")
        assert "recertification_window_opened" in await actions(c, view["id"])
        assert any("window open" in m.subject for m in await mail_for(c, view["id"]))

        view = await recertify(c.http, c.svc_member, view["id"])
        assert view["status"] == "recertifying" and view["attempt"]["number"] == 2
        assert view["attempt"]["kind"] == "recertification"
        assert when(view["valid_until"]) == first_until  # the old certificate until then
        # continue-as-new: a new run, the same state, the pending review carried over
        assert await run_id(c, view["id"]) != first_run
        assert await get(c, view["id"]) == view
        r = await c.http.get("/v1/tasks", params={"process_id": view["id"]}, headers=c.expert)
        assert [t["id"] for t in r.json()["items"]] == [view["open_task_id"]]
        stage, _ = await search_attributes(c, view["id"])
        assert stage == "recertifying"

        view = await decide(c, view, PASSING)
        passed_again = when(view["result"]["decided_at"])
        assert view["status"] == "passed" and passed_again > first_until - timedelta(seconds=4)
        assert when(view["passed_at"]) == passed_again
        assert when(view["valid_until"]) == passed_again + timedelta(seconds=8)
        assert [when(p["valid_until"]) for p in view["periods"]] == [
            first_until,
            passed_again + timedelta(seconds=8),
        ]
        history = await actions(c, view["id"])
        assert history[:2] == ["submitted", "review_pass"]
        assert history.count("review_pass") == 2
        assert history.index("recertification_requested") > history.index("review_pass")

    async def test_r_cert_7_expiry_without_recertification_then_recertify_after_expiry(
        self, certs: Certs
    ) -> None:
        c = certs
        view = await submit(c.fast, c.svc)
        view = await complete(
            c.fast, c.expert, view["open_task_id"], "decide", data={"items": PASSING}
        )
        passed_at, until = when(view["passed_at"]), when(view["valid_until"])
        view = await wait_for(c, view["id"], "the expiry", lambda v: v["status"] == "expired")
        history = await actions(c, view["id"])
        # R-CERT-8: the window and both reminders came before the expiry, each by email
        assert history[-4:] == [
            "recertification_window_opened",
            "expiry_reminder_sent",
            "expiry_reminder_sent",
            "expired",
        ]
        assert [n["state"] for n in view["notices"]] == ["sent"] * 4
        subjects = [m.subject for m in await mail_for(c, view["id"])]
        assert sum("window open" in s for s in subjects) == 1
        assert sum(": expires " in s for s in subjects) == 2
        assert sum(s.endswith(": expired") for s in subjects) == 1
        await eventually(
            lambda: _stage_is(c, view["id"], "expired"), what="Stage to follow the expiry"
        )
        # R-CERT-7: incentives asking from now on hear "not certified"
        async with c.stack.sessions() as session:
            kw: dict[str, Any] = {"partner_id": "p-svc", "subject": view["subject"]}
            assert await certifications.certified(session, **kw, at=passed_at)
            assert not await certifications.certified(session, **kw, at=until)
            assert not await certifications.certified(session, **kw, at=datetime.now(UTC))

        # R-CERT-6: the window stays open after expiry
        view = await recertify(c.http, c.svc, view["id"])
        assert view["status"] == "recertifying"
        view = await decide(c, view, PASSING)
        assert view["status"] == "passed" and when(view["passed_at"]) > until
        async with c.stack.sessions() as session:
            assert await certifications.certified(session, **kw, at=datetime.now(UTC))

    async def test_continue_as_new_keeps_state_and_pending_tasks(self, certs: Certs) -> None:
        """A failed first attempt, then a new one: a new run that carries the state and the
        open review, whose task ids and read-model versions go on where the first run ended."""
        c = certs
        view = await decide(c, await submit(c.http, c.svc), FAILING)
        first_run = await run_id(c, view["id"])
        async with c.stack.sessions() as session:
            row = await session.get(ProcessRow, view["id"])
            assert row is not None
            version_before = row.version
        view = await recertify(c.http, c.svc, view["id"])
        assert view["status"] == "in_review" and view["attempt"]["kind"] == "certification"
        assert view["result"]["outcome"] == "fail"  # the last result is still shown
        assert await run_id(c, view["id"]) != first_run
        assert view["open_task_id"] == f"{view['id']}.2"
        # the carried task is live in the new run: a defense suspends it, ids go on
        view = await request_defense(c.http, c.svc, view["id"])
        assert view["open_task_id"] == f"{view['id']}.3"
        r = await c.http.get(f"/v1/tasks/{view['id']}.2", headers=c.expert)
        assert r.json()["status"] == "cancelled"
        view = await complete(c.http, c.ops, view["open_task_id"], "held")
        view = await decide(c, view, PASSING)
        assert view["status"] == "passed" and view["attempt"]["number"] == 2
        async with c.stack.sessions() as session:
            row = await session.get(ProcessRow, view["id"])
            assert row is not None and row.version > version_before
            assert row.view == view  # the read model follows the new run
        assert await actions(c, view["id"]) == [
            "submitted",
            "review_fail",
            "certification_requested",
            "defense_requested",
            "review_suspended",
            "defense_held",
            "review_pass",
        ]

    async def test_a_second_attempt_waits_for_the_current_one(self, certs: Certs) -> None:
        c = certs
        view = await submit(c.http, c.svc)
        err = await recertify(c.http, c.svc, view["id"], expect=409)
        assert err["error_code"] == "PF.WRONG_STATE"


class TestAuthorization:
    async def test_r_x_5_another_partner_cannot_read_or_act(self, certs: Certs) -> None:
        c = certs
        view = await submit(c.http, c.svc)
        cid = view["id"]
        for method, path, body in (
            ("GET", f"/v1/certifications/{cid}", None),
            ("GET", f"/v1/certifications/{cid}/history", None),
            ("POST", f"/v1/certifications/{cid}/defense", {"reason": "let us in"}),
            ("POST", f"/v1/certifications/{cid}/recertify", {"evidence": EVIDENCE}),
            ("POST", f"/v1/certifications/{cid}/clarification", {"answer": "let us in"}),
            ("GET", f"/v1/tasks/{view['open_task_id']}", None),
        ):
            r = await c.http.request(method, path, json=body, headers=c.other)
            assert r.status_code == 403, (path, r.text)
            assert r.json()["error_code"] == "PF.FORBIDDEN"
        r = await c.http.get("/v1/tasks", params={"process_id": cid}, headers=c.other)
        assert r.json()["items"] == []
        # staff read it; they do not act for the partner (R-CERT-3: but for its PDM and
        # certification operations asking for a defense, TestDefenseOnBehalf)
        assert (await get(c, cid, c.expert))["id"] == cid
        r = await c.http.post(
            f"/v1/certifications/{cid}/defense", json={"reason": "x"}, headers=c.expert
        )
        assert r.status_code == 403
        r = await c.http.post(
            f"/v1/certifications/{cid}/clarification", json={"answer": "x"}, headers=c.ops
        )
        assert r.status_code == 403
        r = await c.http.get("/v1/certifications/cert-p-svc-nothing-here", headers=c.svc)
        assert r.status_code == 404 and r.json()["error_code"] == "PF.NOT_FOUND"
        assert await actions(c, cid) == ["submitted"]


async def test_commands_racing_a_recertification_go_to_the_next_run(certs: Certs) -> None:
    """A defense accepted while the recertification's commit is in flight is applied before the
    hand-over, never refused as if the certification had closed. Orchestration only: the store
    is a stand-in that holds that commit until the defense is accepted."""
    if certs.stack.db != "sqlite":
        pytest.skip("orchestration only: the store is a stand-in")
    client = certs.stack.client
    entered, release = asyncio.Event(), asyncio.Event()

    @activity.defn(name="apply_transition")
    async def apply_transition_stand_in(t: Transition) -> None:
        if any(a.action == "certification_requested" for a in t.audit):
            entered.set()
            await release.wait()

    partner = Principal(sub="u-race", roles=[Role.partner_admin], partner_id="p-race")
    expert = Principal(sub="expert-he", roles=[Role.cert_reviewer])
    body = CertificationCreate.model_validate(cert_body(kind="cloud_software", level=None))
    task_queue = f"cert-race-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[Certification],
        activities=[apply_transition_stand_in],
        workflow_runner=workflow_runner(),
    ):
        handle = await client.start_workflow(
            Certification.run,
            CertificationInput(
                partner_id="p-race", submitted_by="u-race", certification=body, policy=Policy()
            ),
            id=certification_id("p-race", body.subject),
            task_queue=task_queue,
        )

        async def review_open() -> str | None:
            view: dict[str, Any] = await handle.query("state", result_type=dict)
            return view["open_task_id"]  # type: ignore[no-any-return]

        task_id = await eventually(review_open, what="the review task")
        await handle.execute_update(
            "complete_task",
            CompleteTask(task_id=task_id, actor=expert, outcome="decide", data={"items": FAILING}),
            result_type=dict,
        )
        first_run = (await handle.describe()).run_id
        recertified = asyncio.create_task(
            handle.execute_update(
                "recertify", Recertify(actor=partner, evidence=body.evidence), result_type=dict
            )
        )
        await asyncio.wait_for(entered.wait(), 10)
        defense = await handle.start_update(
            "request_defense",
            RequestDefense(actor=partner, reason="the drill report was attached"),
            wait_for_stage=WorkflowUpdateStage.ACCEPTED,
            result_type=dict,
        )
        release.set()
        assert (await recertified)["status"] == "in_review"
        view = await defense.result()
        assert view["status"] == "defense_requested"
        assert view["open_task_id"] == f"{handle.id}.3"

        async def next_run() -> bool:
            return (await handle.describe()).run_id != first_run

        await eventually(next_run, what="the next run")
        carried = await client.get_workflow_handle(handle.id).query("state", result_type=dict)
        assert carried == view
        await handle.terminate("test over")


# --- the certified-at query, on both databases ------------------------------------------------


def _at(day: int, month: int = 1, year: int = 2025) -> datetime:
    return datetime(year, month, day, tzinfo=UTC)


async def _record(
    sessions: async_sessionmaker[AsyncSession],
    *,
    partner_id: str,
    subject: str,
    kind: str,
    level: int | None,
    periods: list[tuple[datetime, datetime]],
) -> None:
    cid = f"cert-{partner_id}-{subject}"
    view = {
        "id": cid,
        "partner_id": partner_id,
        "kind": kind,
        "subject": subject,
        "level": level,
        "status": "passed",
        "attempt": {
            "number": 1,
            "kind": "certification",
            "submitted_by": "u",
            "submitted_at": _at(1, 1, 2024).isoformat(),
            "evidence": EVIDENCE,
        },
        "periods": [{"passed_at": a.isoformat(), "valid_until": b.isoformat()} for a, b in periods],
        "submitted_by": "u",
        "created_at": _at(1, 1, 2024).isoformat(),
        "updated_at": _at(1, 1, 2024).isoformat(),
    }
    record = ProcessRecord(
        id=cid,
        process="certification",
        partner_id=partner_id,
        status="passed",
        match_key=f"{partner_id}|{subject}",
        version=1,
        created_at=_at(1, 1, 2024),
        updated_at=_at(1, 1, 2024),
        view=view,
    )
    async with sessions() as session, session.begin():
        await apply_transition(session, Transition(record=record))


async def test_r_cert_7_r_inc_1_certified_at_a_moment(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await _record(
        sessions,
        partner_id="p-a",
        subject="containers",
        kind="capability_label",
        level=2,
        periods=[(_at(10, 1, 2024), _at(10, 1, 2025)), (_at(1, 3, 2025), _at(1, 3, 2026))],
    )
    await _record(
        sessions,
        partner_id="p-a",
        subject="bigdata",
        kind="capability_label",
        level=1,
        periods=[(_at(5, 6, 2024), _at(5, 6, 2025))],
    )
    await _record(
        sessions,
        partner_id="p-b",
        subject="saas",
        kind="cloud_software",
        level=None,
        periods=[(_at(1, 2, 2025), _at(1, 2, 2026))],
    )
    async with sessions() as s:

        async def certified(at: datetime, **kw: Any) -> bool:
            return await certifications.certified(s, at=at, **kw)

        assert await certified(_at(10, 1, 2024), partner_id="p-a", subject="containers")
        assert not await certified(_at(10, 1, 2025), partner_id="p-a", subject="containers")
        assert not await certified(_at(20, 2, 2025), partner_id="p-a", subject="containers")
        assert await certified(_at(1, 3, 2025), partner_id="p-a", subject="containers")
        assert await certified(datetime(2025, 3, 1, 12), partner_id="p-a", subject="containers")
        # by kind and label level, whatever the subject
        assert await certified(_at(1, 7, 2024), partner_id="p-a", kind="capability_label", level=1)
        assert not await certified(_at(1, 7, 2025), partner_id="p-a", level=1)
        assert await certified(_at(1, 7, 2025), partner_id="p-a", level=2)
        assert not await certified(_at(1, 7, 2025), partner_id="p-a", kind="cloud_software")
        assert await certified(_at(1, 7, 2025), partner_id="p-b", kind="cloud_software")
        # a partner never hears about another's certificates
        assert not await certified(_at(1, 7, 2025), partner_id="p-b", subject="containers")
        assert not await certified(_at(1, 7, 2025), partner_id="p-c")

        labels_2025 = await certifications.passed_in_year(
            s, partner_id="p-a", year=2025, kind="capability_label"
        )
        assert [v.subject for v in labels_2025] == ["containers"]  # recertified in 2025
        labels_2024 = await certifications.passed_in_year(s, partner_id="p-a", year=2024)
        assert [v.subject for v in labels_2024] == ["bigdata", "containers"]
        assert await certifications.passed_in_year(s, partner_id="p-a", year=2024, level=1)


# --- a recorded history, replayed (tests/test_replay.py replays the committed files) -----------


async def test_full_certification_history_replays(certs: Certs) -> None:
    """Two runs of one certification: submission, a defense round, a pass, the window opening,
    a recertification (continue-as-new); then the next run's failed review and its pass."""
    c = certs
    if c.stack.db != "sqlite":
        pytest.skip("one recording is enough; the workflow code does not depend on the store")
    view = await submit(c.fast, c.svc)
    cid = view["id"]
    first_run = await run_id(c, cid)
    view = await request_defense(c.fast, c.svc, cid)
    at = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    await complete(c.fast, c.ops, view["open_task_id"], "schedule", data={"scheduled_at": at})
    view = await complete(c.fast, c.ops, view["open_task_id"], "held", comment="convincing")
    view = await decide(c, view, PASSING)
    await wait_for(c, cid, "the window to open", lambda v: v["status"] != "passed")
    view = await recertify(c.fast, c.svc, cid)
    second_run = await run_id(c, cid)
    view = await decide(c, view, FAILING)
    view = await request_defense(c.fast, c.svc, cid)
    view = await complete(c.fast, c.ops, view["open_task_id"], "held")
    view = await decide(c, view, PASSING)
    assert view["status"] == "passed" and view["attempt"]["number"] == 2

    for label, rid in (("certification_cycle", first_run), ("certification_next", second_run)):
        history = await c.stack.client.get_workflow_handle(cid, run_id=rid).fetch_history()
        await replayer().replay_workflow(history)
        await replayer().replay_workflow(WorkflowHistory.from_json(cid, history.to_json()))
        if os.environ.get("PARTNERFLOW_RECORD_HISTORIES") == "1":
            HISTORIES.mkdir(exist_ok=True)
            for old in HISTORIES.glob(f"{label}__*.json"):
                old.unlink()
            (HISTORIES / f"{label}__{cid}.json").write_text(history.to_json())
