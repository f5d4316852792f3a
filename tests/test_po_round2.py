"""PO rules as DESIGN.md states them after its reading of the seeds (issue 14): R-PO-3 (a PSM
after dispatch), R-PO-4 (one approved among duplicates, legal forms folded), R-PO-7 / R-PO-9
(the PDM who holds the review), R-PO-10 (criteria on every outcome, configurable); against the
real stack, over HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlmodel import col, select

from domain.opportunity import customer_key, match_key
from domain.policy import Policy
from store.migrate import upgrade
from store.models import OutboxMessage, ProcessRow
from tests.conftest import ApiServer, Stack
from tests.helpers import ALL_PASS, Actors, complete, get_po, po_body, submit
from tests.test_replay import HISTORIES, replayer


async def open_task(stack: Stack, headers: dict[str, str], po_id: str) -> dict[str, Any]:
    r = await stack.http.get("/v1/tasks", params={"process_id": po_id}, headers=headers)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    assert len(items) == 1, items
    return items[0]


async def notices_to(stack: Stack, po_id: str, recipient: str) -> list[OutboxMessage]:
    async with stack.sessions() as session:
        rows = await session.exec(
            select(OutboxMessage)
            .where(col(OutboxMessage.event_key).startswith(f"{po_id}:"))
            .where(OutboxMessage.recipient == recipient)
        )
        return list(rows.all())


@asynccontextmanager
async def api_with(stack: Stack, policy: Policy) -> AsyncIterator[httpx.AsyncClient]:
    """The real API of this stack (same store and worker) with a policy of its own."""
    server = ApiServer(stack.settings.model_copy(update={"policy": policy}))
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            yield http
    finally:
        await server.stop()


def body_of(view: dict[str, Any], **over: Any) -> dict[str, Any]:
    fields = (
        "customer_name",
        "project_name",
        "offerings",
        "amount",
        "region",
        "industry",
        "expected_close_date",
    )
    return {**{k: view[k] for k in fields}, **over}


# --- R-PO-3 -----------------------------------------------------------------------------------


class TestDispatchNamesAPsm:
    async def test_r_po_3_dispatcher_names_the_psm_who_gets_the_psm_notices(
        self, stack: Stack
    ) -> None:
        a = Actors(stack)
        po = await submit(stack.http, a.cobalt, region="west-china")
        assert po["status"] == "dispatching" and po["psm"] is None
        view = await complete(
            stack.http,
            a.dispatcher,
            po["open_task_id"],
            "dispatch",
            data={"pdm": "pdm-wang", "psm": "psm-qian"},
        )
        assert view["assignee"] == "pdm-wang" and view["psm"] == "psm-qian"
        await complete(
            stack.http, a.pdm_wang, view["open_task_id"], "approve", data={"criteria": ALL_PASS}
        )
        r = await stack.http.patch(
            f"/v1/opportunities/{po['id']}", json={"stage": "won"}, headers=a.cobalt
        )
        assert r.status_code == 200, r.text
        assert len(await notices_to(stack, po["id"], "psm-qian")) == 1
        pdm_notes = await notices_to(stack, po["id"], "pdm-wang")
        assert not any(n.subject.endswith(" is won") for n in pdm_notes)

    async def test_r_po_3_no_psm_named_gives_the_unmatched_psm(self, stack: Stack) -> None:
        a = Actors(stack)
        unified = stack.settings.policy.unmatched_psm
        po = await submit(stack.http, a.cobalt, region="west-china")
        view = await complete(
            stack.http, a.dispatcher, po["open_task_id"], "dispatch", data={"pdm": "pdm-wang"}
        )
        assert view["psm"] == unified
        await complete(
            stack.http, a.pdm_wang, view["open_task_id"], "approve", data={"criteria": ALL_PASS}
        )
        r = await stack.http.patch(
            f"/v1/opportunities/{po['id']}", json={"stage": "won"}, headers=a.cobalt
        )
        assert r.status_code == 200, r.text
        assert len(await notices_to(stack, po["id"], unified)) == 1


# --- R-PO-4 -----------------------------------------------------------------------------------


def fullwidth(text: str) -> str:
    """The full-width form a Chinese keyboard often types (ideographic space for a space)."""
    return "".join("\u3000" if c == " " else chr(ord(c) + 0xFEE0) for c in text)


SAME_CUSTOMERS = [
    ("杭州湖畔物流有限公司", "杭州湖畔物流"),
    ("杭州湖畔物流股份有限公司", "杭州湖畔物流有限责任公司"),
    ("湖畔集团", "湖畔"),
    ("Lakeside Logistics Co., Ltd.", "LAKESIDE LOGISTICS"),
    ("Lakeside Logistics Co.,Ltd", "lakeside logistics inc."),
    ("Lakeside Logistics Corp.", "Lakeside  Logistics, LLC"),
    (fullwidth("Lakeside Logistics"), "Lakeside Logistics GmbH"),
]
DIFFERENT_CUSTOMERS = [
    ("Lakeside Logistics", "Lakeside Logistics Shipping"),
    ("湖畔物流", "湖畔科技"),
    ("Inc.", "Co."),  # nothing but a legal form keeps it
]


class TestDuplicateKey:
    @pytest.mark.parametrize(("one", "other"), SAME_CUSTOMERS)
    def test_r_po_4_legal_forms_width_case_spacing_punctuation_fold(
        self, one: str, other: str
    ) -> None:
        assert customer_key(one) == customer_key(other)
        assert match_key(one, "Warehouse  Platform") == match_key(other, "warehouse-platform")

    @pytest.mark.parametrize(("one", "other"), DIFFERENT_CUSTOMERS)
    def test_r_po_4_different_customers_stay_apart(self, one: str, other: str) -> None:
        assert customer_key(one) != customer_key(other)
        assert customer_key(one)

    async def test_r_po_4_legal_form_duplicate_of_another_partner_is_flagged(
        self, stack: Stack
    ) -> None:
        a = Actors(stack)
        tag = uuid.uuid4().hex[:6]
        first = await submit(stack.http, a.acme, customer_name=f"湖畔物流{tag}股份有限公司")
        second = await submit(
            stack.http,
            a.bright,
            region="north-china",
            customer_name=f"湖畔物流{tag}",
            project_name=first["project_name"].upper(),
        )
        assert second["duplicate_of"] == first["id"]
        third = await submit(
            stack.http,
            a.bright,
            region="north-china",
            customer_name=f"Lakeside {tag} Co., Ltd.",
        )
        fourth = await submit(
            stack.http,
            a.acme,
            customer_name=f"LAKESIDE {tag} INC.",
            project_name=third["project_name"],
        )
        assert fourth["duplicate_of"] == third["id"]

    async def test_r_po_4_two_pdms_approving_duplicates_at_once_exactly_one_wins(
        self, stack: Stack
    ) -> None:
        a = Actors(stack)
        for _ in range(3):
            first = await submit(stack.http, a.acme)
            second = await submit(
                stack.http,
                a.bright,
                region="north-china",
                customer_name=first["customer_name"] + " Co., Ltd.",
                project_name=first["project_name"],
            )
            results = await asyncio.gather(
                stack.http.post(
                    f"/v1/tasks/{first['open_task_id']}/complete",
                    json={"outcome": "approve", "data": {"criteria": ALL_PASS}},
                    headers=a.pdm_li,
                ),
                stack.http.post(
                    f"/v1/tasks/{second['open_task_id']}/complete",
                    json={"outcome": "approve", "data": {"criteria": ALL_PASS}},
                    headers=a.pdm_wang,
                ),
            )
            assert sorted(r.status_code for r in results) == [200, 409], [r.text for r in results]
            loser = next(r for r in results if r.status_code == 409)
            assert loser.json()["error_code"] == "PF.DUPLICATE_OF_APPROVED"
            statuses = sorted(
                [(await get_po(stack.http, a.admin, po["id"]))["status"] for po in (first, second)]
            )
            assert statuses == ["approved", "in_review"]  # the refused one changed nothing

    async def test_r_po_4_own_key_follows_an_edited_customer(self, stack: Stack) -> None:
        a = Actors(stack)
        po = await submit(stack.http, a.acme)
        view = await complete(
            stack.http, a.pdm_li, po["open_task_id"], "approve", data={"criteria": ALL_PASS}
        )
        tag = uuid.uuid4().hex[:6]
        moved = f"Harbour Foods {tag}"
        r = await stack.http.patch(
            f"/v1/opportunities/{po['id']}", json={"customer_name": moved}, headers=a.acme
        )
        assert r.status_code == 200, r.text
        async with stack.sessions() as session:
            row = await session.get(ProcessRow, po["id"])
        assert row is not None and row.match_key == match_key(moved, view["project_name"])
        await complete(
            stack.http, a.pdm_li, r.json()["open_task_id"], "approve", data={"criteria": ALL_PASS}
        )
        # under its new key it wins over another partner's duplicate ...
        dup = await submit(
            stack.http,
            a.bright,
            region="north-china",
            customer_name=f"{moved} Co., Ltd.",
            project_name=view["project_name"],
        )
        assert dup["duplicate_of"] == po["id"]
        err = await complete(
            stack.http,
            a.pdm_wang,
            dup["open_task_id"],
            "approve",
            expect=409,
            data={"criteria": ALL_PASS},
        )
        assert err["details"]["duplicate_of"] == po["id"]
        # ... and its old key is free for someone else's PO
        old = await submit(
            stack.http,
            a.bright,
            region="north-china",
            customer_name=view["customer_name"],
            project_name=view["project_name"],
        )
        assert old["duplicate_of"] is None
        await complete(
            stack.http, a.pdm_wang, old["open_task_id"], "approve", data={"criteria": ALL_PASS}
        )


# --- R-PO-7 / R-PO-9 --------------------------------------------------------------------------


class TestTheHolderOfTheReview:
    async def test_r_po_7_returned_after_reassignment_goes_back_to_the_new_pdm(
        self, stack: Stack
    ) -> None:
        a = Actors(stack)
        po = await submit(stack.http, a.acme)
        assert po["assignee"] == "pdm-li"
        r = await stack.http.post(
            f"/v1/tasks/{po['open_task_id']}/reassign",
            json={"assignee": "pdm-wang"},
            headers=a.dispatcher,
        )
        assert r.status_code == 200, r.text
        view = await complete(
            stack.http,
            a.pdm_wang,
            po["open_task_id"],
            "return",
            comment="attach the contract",
            data={"criteria": ALL_PASS},
        )
        assert view["status"] == "returned" and view["assignee"] == "pdm-wang"
        r = await stack.http.post(
            f"/v1/opportunities/{po['id']}/resubmit", json=body_of(view), headers=a.acme
        )
        assert r.status_code == 200, r.text
        again = r.json()
        assert again["assignee"] == "pdm-wang"
        task = await open_task(stack, a.pdm_wang, po["id"])
        assert task["assignee"] == "pdm-wang"
        await complete(
            stack.http, a.pdm_li, task["id"], "approve", expect=403, data={"criteria": ALL_PASS}
        )
        view = await complete(
            stack.http, a.pdm_wang, task["id"], "approve", data={"criteria": ALL_PASS}
        )
        assert view["status"] == "approved" and view["assignee"] == "pdm-wang"

    async def test_r_po_9_reverification_goes_to_the_pdm_who_last_held_the_review(
        self, stack: Stack
    ) -> None:
        a = Actors(stack)
        po = await submit(stack.http, a.acme)
        r = await stack.http.post(
            f"/v1/tasks/{po['open_task_id']}/reassign",
            json={"assignee": "pdm-wang"},
            headers=a.dispatcher,
        )
        assert r.status_code == 200, r.text
        await complete(
            stack.http, a.pdm_wang, po["open_task_id"], "approve", data={"criteria": ALL_PASS}
        )
        r = await stack.http.patch(
            f"/v1/opportunities/{po['id']}",
            json={"project_name": f"Cold chain {uuid.uuid4().hex[:6]}"},
            headers=a.acme,
        )
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "in_review" and r.json()["assignee"] == "pdm-wang"
        assert (await open_task(stack, a.pdm_wang, po["id"]))["assignee"] == "pdm-wang"


# --- R-PO-10 ----------------------------------------------------------------------------------


class TestCriteriaOnEveryOutcome:
    @pytest.mark.parametrize("outcome", ["reject", "return"])
    async def test_r_po_10_every_outcome_records_each_criterion(
        self, stack: Stack, outcome: str
    ) -> None:
        a = Actors(stack)
        po = await submit(stack.http, a.acme)
        tid = po["open_task_id"]
        for data in (
            {},
            {"criteria": {"customer_real": False}},
            {"criteria": {**ALL_PASS, "budget": True}},
        ):
            err = await complete(
                stack.http, a.pdm_li, tid, outcome, expect=422, comment="why", data=data
            )
            assert err["error_code"] == "PF.INVALID_DATA", err
            assert err["details"]["required"] == list(ALL_PASS)
        assert (await get_po(stack.http, a.acme, po["id"]))["status"] == "in_review"
        failing = {**ALL_PASS, "partner_role": False}
        view = await complete(
            stack.http, a.pdm_li, tid, outcome, comment="why", data={"criteria": failing}
        )
        assert view["decision"]["criteria"] == failing
        r = await stack.http.get(f"/v1/opportunities/{po['id']}/history", headers=a.acme)
        assert r.json()["items"][-1]["details"]["criteria"] == failing

    async def test_r_po_10_the_criteria_list_is_configurable(self, stack: Stack) -> None:
        a = Actors(stack)
        policy = stack.settings.policy.model_copy(
            update={"po_review_criteria": ["customer_real", "budget_confirmed"]}
        )
        async with api_with(stack, policy) as http:
            po = await submit(http, a.acme)
        tid = po["open_task_id"]
        err = await complete(
            stack.http, a.pdm_li, tid, "approve", expect=422, data={"criteria": ALL_PASS}
        )
        assert err["error_code"] == "PF.INVALID_DATA"
        assert err["details"]["missing"] == ["budget_confirmed"]
        criteria = {"customer_real": True, "budget_confirmed": True}
        view = await complete(stack.http, a.pdm_li, tid, "approve", data={"criteria": criteria})
        assert view["status"] == "approved" and view["decision"]["criteria"] == criteria


# --- replay -----------------------------------------------------------------------------------


async def test_r_po_3_r_po_4_r_po_7_r_po_9_r_po_10_history_replays(stack: Stack) -> None:
    """A dispatched PO (with its PSM), reassigned, returned with criteria, resubmitted to the
    new PDM, approved (claiming its key), re-verified after a customer change, approved, won and
    delivered: recorded as `opportunity_rules_round2`, replayed on the current code."""
    if stack.db != "sqlite":
        pytest.skip("one recording is enough; the workflow code does not depend on the store")
    a = Actors(stack)
    po = await submit(stack.http, a.cobalt, region="nowhere")
    view = await complete(
        stack.http,
        a.dispatcher,
        po["open_task_id"],
        "dispatch",
        data={"pdm": "pdm-wang", "psm": "psm-qian"},
    )
    r = await stack.http.post(
        f"/v1/tasks/{view['open_task_id']}/reassign",
        json={"assignee": "pdm-li"},
        headers=a.dispatcher,
    )
    assert r.status_code == 200, r.text
    view = await complete(
        stack.http,
        a.pdm_li,
        view["open_task_id"],
        "return",
        comment="more info",
        data={"criteria": ALL_PASS},
    )
    r = await stack.http.post(
        f"/v1/opportunities/{po['id']}/resubmit", json=body_of(view), headers=a.cobalt
    )
    assert r.status_code == 200, r.text
    await complete(
        stack.http, a.pdm_li, r.json()["open_task_id"], "approve", data={"criteria": ALL_PASS}
    )
    r = await stack.http.patch(
        f"/v1/opportunities/{po['id']}",
        json={"customer_name": po_body()["customer_name"]},
        headers=a.cobalt,
    )
    assert r.status_code == 200, r.text
    await complete(
        stack.http, a.pdm_li, r.json()["open_task_id"], "approve", data={"criteria": ALL_PASS}
    )
    for stage in ("won", "delivered"):
        r = await stack.http.patch(
            f"/v1/opportunities/{po['id']}", json={"stage": stage}, headers=a.cobalt
        )
        assert r.status_code == 200, r.text
    handle = stack.client.get_workflow_handle(po["id"])
    assert (await handle.result())["status"] == "delivered"
    history = await handle.fetch_history()
    await replayer().replay_workflow(history)
    if os.environ.get("PARTNERFLOW_RECORD_HISTORIES") == "1":
        (HISTORIES / f"opportunity_rules_round2__{po['id']}.json").write_text(history.to_json())


def test_r_po_4_upgrade_rekeys_existing_opportunities(tmp_path: Path) -> None:
    """Migration 0006: rows and "one open PO" claims written with the old fold get the key the
    code computes now, so an old "Acme Co., Ltd." and a new "ACME" are duplicates."""
    url = f"sqlite:///{tmp_path / 'upgrade.db'}"
    upgrade(url, "0002")
    engine = sa.create_engine(url)
    view = {"customer_name": "Acme Co., Ltd.", "project_name": "Data Lake"}
    old_key = "acmecoltd|datalake"
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO processes (id, process, partner_id, status, match_key, version,"
                " created_at, updated_at, view) VALUES ('po-1', 'opportunity', 'p-a',"
                " 'approved', :key, 1, '2026-01-01', '2026-01-01', :view)"
            ),
            {"key": old_key, "view": json.dumps(view)},
        )
        conn.execute(
            sa.text(
                "INSERT INTO claims (scope, key, owner_id, created_at)"
                " VALUES ('po-open', :key, 'po-1', '2026-01-01')"
            ),
            {"key": f"p-a|{old_key}"},
        )
    upgrade(url, "head")
    with engine.connect() as conn:
        key = conn.execute(sa.text("SELECT match_key FROM processes WHERE id = 'po-1'")).scalar()
        claim = conn.execute(sa.text("SELECT key FROM claims WHERE owner_id = 'po-1'")).scalar()
    engine.dispose()
    assert key == match_key("ACME", "data lake") == "acme|datalake"
    assert claim == f"p-a|{key}"
