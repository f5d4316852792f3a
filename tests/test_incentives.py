"""Incentives against the real stack: R-INC-1 … R-INC-10, over HTTP as the portal, reviewers and
finance use them. Every test applies for fresh partners of its own: the monthly limit (R-INC-4)
counts per partner, so tests never share one."""

from __future__ import annotations

import asyncio
import os
import uuid
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlmodel import col, select
from temporalio.client import WorkflowHistory

from api.routes.incentives import submission_time
from domain.certification import (
    Attempt,
    CertificationKind,
    CertificationStatus,
    CertificationView,
    Period,
    certification_match_key,
)
from domain.incentive_caps import CapFacts, IncentiveCaps, cap_for
from domain.policy import Policy
from domain.projection import ProcessRecord, Transition
from domain.search_attributes import DUE_AT
from store.db import transaction
from store.incentives import claims_of, person_holder
from store.models import OutboxMessage, ProcessRow
from store.readmodel import apply_transition
from tests.conftest import ApiServer, Stack, eventually
from tests.helpers import ALL_PASS, complete, submit
from tests.test_replay import HISTORIES, replayer

Headers = dict[str, str]


# --- people and reference data ---------------------------------------------------------------


class Staff:
    def __init__(self, stack: Stack) -> None:
        self.reviewer = stack.auth("rev-1", ["incentive_reviewer"])
        self.reviewer_2 = stack.auth("rev-2", ["incentive_reviewer"])
        self.finance = stack.auth("fin-1", ["finance"])
        self.finance_2 = stack.auth("fin-2", ["finance"])
        self.finance_lead = stack.auth("fl-1", ["finance_lead"])
        self.admin = stack.auth("ops-1", ["ops_admin"])


class Partner:
    """A fresh partner of its own: its id, its main account and a member."""

    def __init__(self, stack: Stack, pid: str, body: dict[str, Any]) -> None:
        self.id = pid
        self.body = body
        self.admin = stack.auth(f"u-{pid}-admin", ["partner_admin"], pid)
        self.member = stack.auth(f"u-{pid}-member", ["partner_member"], pid)
        self.sub = f"u-{pid}-admin"


async def new_partner(
    stack: Stack,
    kind: str = "solution_provider",
    *,
    tier: str | None = "core",
    region: str | None = "north-china",
    certified: bool = True,
) -> Partner:
    pid = f"p-inc-{uuid.uuid4().hex[:10]}"
    body: dict[str, Any] = {
        "name": f"Partner {pid}",
        "kind": kind,
        "tier": tier,
        "region": region,
        "business_info_certified": certified,
    }
    r = await stack.http.put(f"/v1/admin/partners/{pid}", json=body, headers=Staff(stack).admin)
    assert r.status_code == 200, r.text
    return Partner(stack, pid, body)


async def delivered_po(
    stack: Stack, partner: Partner, http: httpx.AsyncClient | None = None
) -> str:
    """R-PO-11: submitted, approved by its PDM, won, delivered."""
    http = http or stack.http
    po = await submit(http, partner.admin, region="north-china", industry="logistics")
    pdm = stack.auth(po["assignee"], ["pdm"])
    await complete(http, pdm, po["open_task_id"], "approve", data={"criteria": ALL_PASS})
    for stage in ("won", "delivered"):
        r = await http.patch(
            f"/v1/opportunities/{po['id']}", json={"stage": stage}, headers=partner.admin
        )
        assert r.status_code == 200, r.text
    return str(po["id"])


async def insert_certification(
    stack: Stack,
    partner_id: str,
    *,
    kind: str = "capability_label",
    subject: str = "data-migration",
    level: int = 2,
    passed_at: datetime | None = None,
    valid_for: timedelta = timedelta(days=365),
    status: str = "passed",
    version: int = 1,
    cert_id: str | None = None,
) -> str:
    """A certification as the certification process records it in the read model (the same
    CertificationView the Certification workflow writes); `expired` ends its validity now."""
    passed = passed_at or datetime.now(UTC)
    cert_id = cert_id or f"cert-{uuid.uuid4().hex[:12]}"
    until = passed + valid_for if status != "expired" else datetime.now(UTC) - timedelta(seconds=1)
    view = CertificationView(
        id=cert_id,
        partner_id=partner_id,
        kind=CertificationKind(kind),
        subject=subject,
        level=level,
        status=CertificationStatus(status),
        passed_at=passed,
        valid_until=until,
        attempt=Attempt(
            number=1, kind="certification", submitted_by="u-test", submitted_at=passed, evidence=[]
        ),
        periods=[Period(passed_at=passed, valid_until=until)],
        submitted_by="u-test",
        created_at=passed,
        updated_at=passed,
    ).model_dump(mode="json")
    async with transaction(stack.sessions) as session:
        await apply_transition(
            session,
            Transition(
                record=ProcessRecord(
                    id=cert_id,
                    process="certification",
                    partner_id=partner_id,
                    status=status,
                    match_key=certification_match_key(partner_id, subject),
                    version=version,
                    created_at=passed,
                    updated_at=passed,
                    view=view,
                )
            ),
        )
    return cert_id


# --- applying and moving along ----------------------------------------------------------------


def funding_head(amount: object = "10000.00", **over: Any) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    body = {
        "source": "funding_head",
        "person": f"emp-{tag}",
        "project": f"Project {tag}",
        "amount": amount,
    }
    body.update(over)
    return body


async def apply(
    http: httpx.AsyncClient, headers: Headers, body: dict[str, Any], expect: int = 201
) -> dict[str, Any]:
    r = await http.post("/v1/incentives", json=body, headers=headers)
    assert r.status_code == expect, r.text
    result: dict[str, Any] = r.json()
    return result


def refused(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert body["error_code"] == code, body
    return body


async def get_inc(stack: Stack, headers: Headers, inc_id: str) -> dict[str, Any]:
    r = await stack.http.get(f"/v1/incentives/{inc_id}", headers=headers)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


async def actions(stack: Stack, headers: Headers, inc_id: str) -> list[str]:
    r = await stack.http.get(f"/v1/incentives/{inc_id}/history", headers=headers)
    assert r.status_code == 200, r.text
    return [item["action"] for item in r.json()["items"]]


async def post(
    http: httpx.AsyncClient, path: str, headers: Headers, json: Any = None, expect: int = 200
) -> dict[str, Any]:
    r = await http.post(path, json=json, headers=headers)
    assert r.status_code == expect, r.text
    result: dict[str, Any] = r.json()
    return result


async def approved(
    stack: Stack, partner: Partner, http: httpx.AsyncClient | None = None, amount: str = "10000.00"
) -> dict[str, Any]:
    http = http or stack.http
    inc = await apply(http, partner.admin, funding_head(amount))
    return await complete(
        http, Staff(stack).reviewer, inc["open_task_id"], "approve", data={"amount": amount}
    )


async def invoiced(
    stack: Stack, partner: Partner, http: httpx.AsyncClient | None = None
) -> dict[str, Any]:
    """Approved, payment requested, invoice number entered: waiting for finance's check."""
    http = http or stack.http
    inc = await approved(stack, partner, http)
    await post(http, f"/v1/incentives/{inc['id']}/payment-request", partner.admin)
    return await post(
        http,
        f"/v1/incentives/{inc['id']}/invoice",
        partner.admin,
        {"invoice_number": "44031234"},
    )


async def outbox_to(stack: Stack, inc_id: str, recipient: str) -> list[OutboxMessage]:
    async with stack.sessions() as session:
        rows = (
            await session.exec(
                select(OutboxMessage)
                .where(col(OutboxMessage.event_key).startswith(f"{inc_id}:"))
                .where(OutboxMessage.recipient == recipient)
                .order_by(col(OutboxMessage.id))
            )
        ).all()
    return list(rows)


async def incentives_of(stack: Stack, partner_id: str) -> list[ProcessRow]:
    async with stack.sessions() as session:
        rows = await session.exec(
            select(ProcessRow).where(
                ProcessRow.process == "incentive", ProcessRow.partner_id == partner_id
            )
        )
        return list(rows.all())


async def month_claims(stack: Stack, partner_id: str) -> list[str]:
    from store.models import Claim

    async with stack.sessions() as session:
        rows = await session.exec(
            select(Claim.owner_id).where(
                Claim.scope == "inc-month", col(Claim.key).startswith(f"{partner_id}|")
            )
        )
        return sorted(rows.all())


@asynccontextmanager
async def api_at(stack: Stack, clock: list[datetime], policy: Policy | None = None) -> Any:
    """The real API with its own policy, whose submission time is `clock[0]`."""
    settings = stack.settings
    if policy is not None:
        settings = settings.model_copy(update={"policy": policy})
    server = ApiServer(settings)
    app = server.server.config.app
    assert isinstance(app, FastAPI)
    app.dependency_overrides[submission_time] = lambda: clock[0]
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            yield http
    finally:
        await server.stop()


# --- the whole way ---------------------------------------------------------------------------


class TestFromDeliveredPoToPaid:
    async def test_r_inc_1_to_r_inc_10_delivered_po_to_paid_entirely_over_the_api(
        self, stack: Stack
    ) -> None:
        staff = Staff(stack)
        acme = await new_partner(stack, tier="core")
        po_id = await delivered_po(stack, acme)
        inc = await apply(
            stack.http,
            acme.admin,
            {"source": "opportunity", "opportunity_id": po_id, "amount": "120000.00"},
        )
        assert inc["status"] == "in_review" and inc["amount"] == "120000.00"
        assert inc["cap"] == "300000.00" and inc["program"] == "solution_provider/core"
        assert inc["source_details"]["project_name"].startswith("Warehouse platform")
        assert inc["candidate_role"] == "incentive_reviewer"

        # R-INC-5: the reviewer approves a lower amount
        view = await complete(
            stack.http, staff.reviewer, inc["open_task_id"], "approve", data={"amount": "99999.99"}
        )
        assert view["status"] == "pending_payment_application"
        assert view["amount_approved"] == "99999.99" and view["amount"] == "120000.00"

        # R-INC-6 / R-INC-7: payment request issues the invoice list
        view = await post(stack.http, f"/v1/incentives/{inc['id']}/payment-request", acme.admin)
        assert view["status"] == "invoice_list_issued"
        r = await stack.http.get(f"/v1/incentives/{inc['id']}/invoice-list", headers=acme.admin)
        assert r.status_code == 200, r.text
        invoice_list = r.json()
        assert invoice_list["total"] == "99999.99" and invoice_list["currency"] == "CNY"
        assert [line["amount"] for line in invoice_list["lines"]] == ["99999.99"]
        assert po_id in invoice_list["lines"][0]["description"]
        view = await post(
            stack.http,
            f"/v1/incentives/{inc['id']}/invoice",
            acme.admin,
            {"invoice_number": "44031234"},
        )
        assert view["status"] == "invoice_submitted" and view["invoice_number"] == "44031234"

        # R-INC-8: finance finds it qualified; R-INC-9: the payout is due within the SLA
        check = await _open_task(stack, staff.finance, inc["id"], "inc.invoice_check")
        view = await complete(stack.http, staff.finance, check["id"], "qualified")
        assert view["status"] == "awaiting_payout" and view["payout_breached"] is False
        qualified_at = datetime.fromisoformat(view["qualified_at"])
        due = datetime.fromisoformat(view["payout_due_at"])
        assert due == qualified_at + timedelta(days=15)
        payout = await _open_task(stack, staff.finance, inc["id"], "inc.payout")
        assert datetime.fromisoformat(payout["due_at"]) == due  # in finance's inbox
        assert payout["candidate_role"] == "finance"

        async def due_at_in_temporal() -> datetime | None:
            desc = await stack.client.get_workflow_handle(inc["id"]).describe()
            return desc.typed_search_attributes.get(DUE_AT)

        shown = await eventually(due_at_in_temporal, timeout=20, what="DueAt in Temporal")
        assert shown == due

        # R-INC-10: paid with method and reference; the partner is notified (R-X-5: by another
        # finance user than the one who qualified the invoice)
        view = await complete(
            stack.http,
            staff.finance_2,
            payout["id"],
            "paid",
            data={"method": "bank_transfer", "reference": "BOC-2027-000123"},
        )
        assert view["status"] == "paid"
        assert view["payout"]["reference"] == "BOC-2027-000123"
        assert view["payout"]["method"] == "bank_transfer"
        assert view["payout"]["amount"] == "99999.99" and view["payout"]["on_time"] is True
        assert (await get_inc(stack, acme.member, inc["id"]))["status"] == "paid"
        notes = await outbox_to(stack, inc["id"], acme.sub)
        assert any("BOC-2027-000123" in n.body and "paid" in n.subject for n in notes)
        assert await actions(stack, acme.admin, inc["id"]) == [
            "submitted",
            "review_approve",
            "payment_requested",
            "invoice_list_issued",
            "invoice_submitted",
            "invoice_qualified",
            "paid",
        ]
        result = await stack.client.get_workflow_handle(inc["id"]).result()
        assert result["status"] == "paid"


async def _open_task(stack: Stack, headers: Headers, inc_id: str, kind: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        r = await stack.http.get(
            "/v1/tasks", params={"process_id": inc_id, "kind": kind}, headers=headers
        )
        assert r.status_code == 200, r.text
        items: list[dict[str, Any]] = r.json()["items"]
        return items[0] if items else None

    return await eventually(probe, timeout=20, what=f"an open {kind} task")


# --- R-INC-1 sources --------------------------------------------------------------------------


class TestSources:
    async def test_r_inc_1_opportunity_must_exist(self, stack: Stack) -> None:
        p = await new_partner(stack)
        r = await stack.http.post(
            "/v1/incentives",
            json={"source": "opportunity", "opportunity_id": "po-nope", "amount": "1.00"},
            headers=p.admin,
        )
        refused(r, 404, "PF.INCENTIVE_SOURCE_NOT_FOUND")

    async def test_r_inc_1_opportunity_of_another_partner_is_refused(self, stack: Stack) -> None:
        owner, other = await new_partner(stack), await new_partner(stack)
        po_id = await delivered_po(stack, owner)
        r = await stack.http.post(
            "/v1/incentives",
            json={"source": "opportunity", "opportunity_id": po_id, "amount": "1.00"},
            headers=other.admin,
        )
        refused(r, 403, "PF.INCENTIVE_SOURCE_NOT_OWNED")

    async def test_r_inc_1_opportunity_must_be_delivered(self, stack: Stack) -> None:
        p = await new_partner(stack)
        po = await submit(stack.http, p.admin, region="north-china", industry="logistics")
        body = {"source": "opportunity", "opportunity_id": po["id"], "amount": "1.00"}
        r = await stack.http.post("/v1/incentives", json=body, headers=p.admin)
        assert refused(r, 409, "PF.OPPORTUNITY_NOT_DELIVERED")["details"]["status"] == "in_review"
        pdm = stack.auth(po["assignee"], ["pdm"])
        await complete(stack.http, pdm, po["open_task_id"], "approve", data={"criteria": ALL_PASS})
        r = await stack.http.post("/v1/incentives", json=body, headers=p.admin)
        refused(r, 409, "PF.OPPORTUNITY_NOT_DELIVERED")
        assert await incentives_of(stack, p.id) == [] and await month_claims(stack, p.id) == []

    async def test_r_inc_1_opportunity_only_from_the_main_account(self, stack: Stack) -> None:
        p = await new_partner(stack)
        po_id = await delivered_po(stack, p)
        body = {"source": "opportunity", "opportunity_id": po_id, "amount": "1.00"}
        r = await stack.http.post("/v1/incentives", json=body, headers=p.member)
        refused(r, 403, "PF.MAIN_ACCOUNT_REQUIRED")
        await apply(stack.http, p.admin, body)

    async def test_r_inc_1_opportunity_only_for_solution_providers(self, stack: Stack) -> None:
        p = await new_partner(stack, "distributor", tier=None, region="region-1")
        po_id = await delivered_po(stack, p)
        r = await stack.http.post(
            "/v1/incentives",
            json={"source": "opportunity", "opportunity_id": po_id, "amount": "1.00"},
            headers=p.admin,
        )
        body = refused(r, 403, "PF.PARTNER_KIND_NOT_ELIGIBLE")
        assert body["details"] == {"partner_kind": "distributor", "needed": "solution_provider"}

    async def test_r_inc_1_one_application_per_opportunity(self, stack: Stack) -> None:
        p = await new_partner(stack)
        po_id = await delivered_po(stack, p)
        body = {"source": "opportunity", "opportunity_id": po_id, "amount": "1.00"}
        first = await apply(stack.http, p.admin, body)
        r = await stack.http.post("/v1/incentives", json=body, headers=p.admin)
        assert refused(r, 409, "PF.INCENTIVE_EXISTS")["details"]["existing_id"] == first["id"]
        # a rejected application frees its source
        await complete(
            stack.http, Staff(stack).reviewer, first["open_task_id"], "reject", comment="no"
        )
        await apply(stack.http, p.admin, body)

    @pytest.mark.parametrize(
        ("body", "missing"),
        [
            ({"source": "opportunity"}, "opportunity_id"),
            ({"source": "capability_label"}, "certification_id"),
            ({"source": "funding_head", "project": "x"}, "person"),
            ({"source": "funding_head", "person": "x"}, "project"),
            ({"source": "opportunity", "opportunity_id": "po-1", "person": "x"}, "belong"),
            ({"source": "lottery"}, "source"),
        ],
    )
    async def test_r_inc_1_source_fields_are_required(
        self, stack: Stack, body: dict[str, Any], missing: str
    ) -> None:
        p = await new_partner(stack)
        r = await stack.http.post(
            "/v1/incentives", json={**body, "amount": "1.00"}, headers=p.admin
        )
        assert missing in r.text
        refused(r, 422, "PF.VALIDATION_FAILED")

    async def test_r_inc_1_capability_label_certified_this_year(self, stack: Stack) -> None:
        p = await new_partner(stack, "service", tier=None)
        cert_id = await insert_certification(stack, p.id, subject="data-migration", level=1)
        inc = await apply(
            stack.http,
            p.member,
            {"source": "capability_label", "certification_id": cert_id, "amount": "20000.00"},
        )
        # no level-2 label: the cited level-1 label's entry is the cap (R-INC-2)
        assert inc["program"] == "service/level-1" and inc["cap"] == "20000.00"
        assert inc["source_details"]["subject"] == "data-migration"
        r = await stack.http.post(
            "/v1/incentives",
            json={"source": "capability_label", "certification_id": cert_id, "amount": "1.00"},
            headers=p.admin,
        )
        refused(r, 409, "PF.INCENTIVE_EXISTS")

    @pytest.mark.parametrize(
        ("what", "cert"),
        [
            (
                "passed last year",
                {"passed_at": datetime(datetime.now(UTC).year - 1, 12, 31, 12, tzinfo=UTC)},
            ),
            ("expired (R-CERT-7)", {"valid_for": timedelta(seconds=-1), "status": "expired"}),
            ("not a capability label", {"kind": "cloud_software"}),
        ],
    )
    async def test_r_inc_1_capability_label_not_certified_this_year_is_refused(
        self, stack: Stack, what: str, cert: dict[str, Any]
    ) -> None:
        p = await new_partner(stack, "service", tier=None)
        cert_id = await insert_certification(stack, p.id, **cert)
        r = await stack.http.post(
            "/v1/incentives",
            json={"source": "capability_label", "certification_id": cert_id, "amount": "1.00"},
            headers=p.admin,
        )
        refused(r, 409, "PF.LABEL_NOT_CERTIFIED_THIS_YEAR")

    async def test_r_inc_1_label_expired_since_the_application_is_no_longer_paid(
        self, stack: Stack
    ) -> None:
        """R-CERT-7: incentives that depend on an expired label are no longer eligible."""
        p = await new_partner(stack, "service", tier=None)
        cert_id = await insert_certification(stack, p.id, level=1)
        inc = await apply(
            stack.http,
            p.admin,
            {"source": "capability_label", "certification_id": cert_id, "amount": "100.00"},
        )
        await complete(
            stack.http,
            Staff(stack).reviewer,
            inc["open_task_id"],
            "approve",
            data={"amount": "100.00"},
        )
        await insert_certification(
            stack, p.id, level=1, status="expired", version=2, cert_id=cert_id
        )
        r = await stack.http.post(f"/v1/incentives/{inc['id']}/payment-request", headers=p.admin)
        refused(r, 409, "PF.LABEL_NO_LONGER_CERTIFIED")
        assert (await get_inc(stack, p.admin, inc["id"]))["status"] == "pending_payment_application"

    async def test_r_inc_1_capability_label_checks_owner_kind_and_existence(
        self, stack: Stack
    ) -> None:
        owner, other = (
            await new_partner(stack, "service", tier=None),
            await new_partner(stack, "service", tier=None),
        )
        cert_id = await insert_certification(stack, owner.id)
        body = {"source": "capability_label", "certification_id": cert_id, "amount": "1.00"}
        refused(
            await stack.http.post("/v1/incentives", json=body, headers=other.admin),
            403,
            "PF.INCENTIVE_SOURCE_NOT_OWNED",
        )
        missing = {**body, "certification_id": "cert-nope"}
        refused(
            await stack.http.post("/v1/incentives", json=missing, headers=owner.admin),
            404,
            "PF.INCENTIVE_SOURCE_NOT_FOUND",
        )
        provider = await new_partner(stack)
        refused(
            await stack.http.post("/v1/incentives", json=body, headers=provider.admin),
            403,
            "PF.PARTNER_KIND_NOT_ELIGIBLE",
        )

    async def test_r_inc_1_status_owner_and_amounts_in_the_body_are_refused(
        self, stack: Stack
    ) -> None:
        """Fields an applicant may not set are refused with 422 naming each (not dropped), and
        no application starts; without them the same application is taken as sent."""
        p, other = await new_partner(stack), await new_partner(stack)
        foreign = {
            "status": "paid",
            "partner_id": other.id,
            "amount_approved": "99999.00",
            "cap": "99999999.00",
            "id": "inc-mine",
        }
        application = funding_head("10.00")
        r = await stack.http.post(
            "/v1/incentives", json={**application, **foreign}, headers=p.admin
        )
        body = refused(r, 422, "PF.VALIDATION_FAILED")
        assert {e["loc"][-1] for e in body["details"]} == set(foreign)
        listed = await stack.http.get("/v1/incentives", headers=p.admin)
        assert listed.json()["items"] == []
        inc = await apply(stack.http, p.admin, application)
        assert (inc["status"], inc["partner_id"], inc["amount_approved"]) == (
            "in_review",
            p.id,
            None,
        )
        assert inc["id"] != "inc-mine" and inc["cap"] == "300000.00"

    async def test_r_inc_1_staff_and_unregistered_partners_cannot_apply(self, stack: Stack) -> None:
        refused(
            await stack.http.post(
                "/v1/incentives", json=funding_head(), headers=Staff(stack).reviewer
            ),
            403,
            "PF.FORBIDDEN",
        )
        ghost = stack.auth("u-ghost", ["partner_admin"], "p-inc-unregistered")
        refused(
            await stack.http.post("/v1/incentives", json=funding_head(), headers=ghost),
            403,
            "PF.PARTNER_NOT_REGISTERED",
        )


# --- R-INC-2 amounts and caps -----------------------------------------------------------------


class TestCaps:
    @pytest.mark.parametrize(
        "amount", ["0", "0.00", "-5.00", "12.345", "abc", "NaN", "Infinity", 1.5, 5, None]
    )
    async def test_r_inc_2_amount_is_positive_with_two_decimals(
        self, stack: Stack, amount: object
    ) -> None:
        p = await new_partner(stack)
        r = await stack.http.post(
            "/v1/incentives", json=funding_head(amount=amount), headers=p.admin
        )
        body = refused(r, 422, "PF.VALIDATION_FAILED")
        assert any("amount" in e["loc"] for e in body["details"]), body

    @pytest.mark.parametrize(
        ("partner", "cap", "program"),
        [
            ({"kind": "solution_provider", "tier": "core"}, "300000.00", "solution_provider/core"),
            (
                {"kind": "solution_provider", "tier": "leading"},
                "100000.00",
                "solution_provider/leading",
            ),
            ({"kind": "distributor", "region": "region-1"}, "300000.00", "distributor/region-1"),
            ({"kind": "distributor", "region": "region-2"}, "300000.00", "distributor/region-2"),
            ({"kind": "distributor", "region": "region-3"}, "200000.00", "distributor/region-3"),
        ],
    )
    async def test_r_inc_2_cap_per_program_and_tier(
        self, stack: Stack, partner: dict[str, Any], cap: str, program: str
    ) -> None:
        p = await new_partner(
            stack, partner["kind"], tier=partner.get("tier"), region=partner.get("region")
        )
        over = str(Decimal(cap) + Decimal("0.01"))
        r = await stack.http.post("/v1/incentives", json=funding_head(over), headers=p.admin)
        body = refused(r, 422, "PF.INCENTIVE_OVER_CAP")
        assert body["details"] == {"cap": cap, "program": program}
        assert await incentives_of(stack, p.id) == [] and await month_claims(stack, p.id) == []
        inc = await apply(stack.http, p.admin, funding_head(cap))
        assert (inc["amount"], inc["cap"], inc["program"]) == (cap, cap, program)

    async def test_r_inc_2_software_partner_cap_follows_its_certification(
        self, stack: Stack
    ) -> None:
        p = await new_partner(stack, "software", tier=None)
        r = await stack.http.post("/v1/incentives", json=funding_head("1.00"), headers=p.admin)
        assert refused(r, 422, "PF.NO_INCENTIVE_CAP")["details"] == {"program": "software/-"}
        await insert_certification(stack, p.id, kind="cloud_software", subject="erp", level=1)
        r = await stack.http.post("/v1/incentives", json=funding_head("50000.01"), headers=p.admin)
        refused(r, 422, "PF.INCENTIVE_OVER_CAP")
        inc = await apply(stack.http, p.admin, funding_head("50000.00"))
        assert inc["program"] == "software/cloud_software"
        await insert_certification(stack, p.id, kind="advanced_cloud_software", subject="erp")
        inc = await apply(stack.http, p.admin, funding_head("80000.00"))
        assert inc["program"] == "software/advanced_cloud_software"

    async def test_r_inc_1_r_inc_2_service_partner_cites_level_1_paid_by_level_2_labels(
        self, stack: Stack
    ) -> None:
        """R-INC-1: the application cites a level-1 label certified this year (a level-2 label
        is not cited); R-INC-2: the cap is the largest configured entry among the partner's
        valid level-2 labels, else the cited level-1 label's; the same gives Funding Head's."""
        caps = IncentiveCaps(
            service={
                "level-1": Decimal("20000.00"),
                "level-2": Decimal("50000.00"),
                "big-data": Decimal("90000.00"),
            }
        )
        policy = Policy(incentive_caps=caps)
        clock = [datetime.now(UTC)]
        async with api_at(stack, clock, policy) as http:
            p = await new_partner(stack, "service", tier=None)
            ops = await insert_certification(stack, p.id, subject="ops", level=1)
            clock[0] = datetime.now(UTC)
            body = {"source": "capability_label", "certification_id": ops, "amount": "20000.01"}
            # no level-2 label: the cited level-1 label's entry
            r = await http.post("/v1/incentives", json=body, headers=p.admin)
            assert refused(r, 422, "PF.INCENTIVE_OVER_CAP")["details"]["cap"] == "20000.00"
            # Funding Head: no level-2 label, the level-1 label's entry
            inc = await apply(http, p.admin, funding_head("20000.00"))
            assert inc["program"] == "service/level-1"
            # with valid level-2 labels the largest of their entries wins
            migration = await insert_certification(stack, p.id, subject="migration", level=2)
            await insert_certification(stack, p.id, subject="big-data", level=2)
            await insert_certification(
                stack, p.id, subject="expired-one", level=2, status="expired"
            )
            clock[0] = datetime.now(UTC)
            inc = await apply(http, p.admin, {**body, "amount": "90000.00"})
            assert inc["cap"] == "90000.00" and inc["program"] == "service/big-data"
            inc = await apply(http, p.admin, funding_head("90000.00"))
            assert inc["program"] == "service/big-data"
            # a level-2 label is not what an application cites
            r = await http.post(
                "/v1/incentives",
                json={**body, "certification_id": migration, "amount": "1.00"},
                headers=p.admin,
            )
            refused(r, 409, "PF.LABEL_LEVEL_NOT_ELIGIBLE")

    async def test_r_inc_2_partner_without_a_cap_is_refused(self, stack: Stack) -> None:
        p = await new_partner(stack, "reseller", tier=None)
        r = await stack.http.post("/v1/incentives", json=funding_head("1.00"), headers=p.admin)
        refused(r, 422, "PF.NO_INCENTIVE_CAP")
        untiered = await new_partner(stack, tier="emerging")
        r = await stack.http.post(
            "/v1/incentives", json=funding_head("1.00"), headers=untiered.admin
        )
        refused(r, 422, "PF.NO_INCENTIVE_CAP")

    async def test_r_inc_2_the_cap_table_is_configurable(self, stack: Stack) -> None:
        caps = IncentiveCaps(solution_provider={"core": Decimal("500.00"), "emerging": "700.00"})
        p = await new_partner(stack, tier="emerging")
        core = await new_partner(stack, tier="core")
        async with api_at(stack, [datetime.now(UTC)], Policy(incentive_caps=caps)) as http:
            inc = await apply(http, p.admin, funding_head("700.00"))
            assert inc["program"] == "solution_provider/emerging"
            r = await http.post("/v1/incentives", json=funding_head("500.01"), headers=core.admin)
            assert refused(r, 422, "PF.INCENTIVE_OVER_CAP")["details"]["cap"] == "500.00"

    def test_r_inc_2_cap_table_defaults_and_environment(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from config import Settings

        caps = IncentiveCaps()
        assert cap_for(caps, CapFacts(kind="solution_provider", tier="core")).cap == Decimal(
            "300000.00"
        )
        assert cap_for(
            caps,
            CapFacts(kind="software", certifications=["cloud_software", "advanced_cloud_software"]),
        ).cap == Decimal("80000.00")
        assert cap_for(caps, CapFacts(kind="service", label_subject="x", label_level=2)).cap == (
            Decimal("50000.00")
        )
        monkeypatch.setenv(
            "PARTNERFLOW_POLICY__INCENTIVE_CAPS__SERVICE", '{"migration": "20000.00"}'
        )
        service = Settings().policy.incentive_caps.service
        assert service == {"migration": Decimal("20000.00")}


# --- R-INC-3 Funding Head ---------------------------------------------------------------------


class TestFundingHead:
    async def test_r_inc_3_one_person_one_path(self, stack: Stack) -> None:
        first, second = await new_partner(stack), await new_partner(stack)
        body = funding_head(person="Li Ming 0420")
        await apply(stack.http, first.admin, body)
        # the same person through another partner: refused, however they spell it
        other = funding_head(person="li  ming-0420")
        r = await stack.http.post("/v1/incentives", json=other, headers=second.admin)
        refused(r, 409, "PF.FUNDING_HEAD_OTHER_PATH")
        assert await incentives_of(stack, second.id) == []
        assert await month_claims(stack, second.id) == []
        # the same person through the same path, for another project: fine
        await apply(stack.http, first.member, funding_head(person="Li Ming 0420"))

    async def test_r_inc_3_one_project_one_person(self, stack: Stack) -> None:
        p, q = await new_partner(stack), await new_partner(stack)
        project = f"Harbour ERP {uuid.uuid4().hex[:6]}"
        first = await apply(stack.http, p.admin, funding_head(project=project))
        r = await stack.http.post(
            "/v1/incentives", json=funding_head(project=project.upper()), headers=q.admin
        )
        assert refused(r, 409, "PF.FUNDING_HEAD_PROJECT_CLAIMED")["details"] == {
            "existing_id": first["id"]
        }
        r = await stack.http.post(
            "/v1/incentives", json=funding_head(project=project), headers=p.admin
        )
        refused(r, 409, "PF.FUNDING_HEAD_PROJECT_CLAIMED")

    async def test_r_inc_3_concurrent_applications_for_one_project_exactly_one_accepted(
        self, stack: Stack
    ) -> None:
        partners = [await new_partner(stack) for _ in range(4)]
        project = f"Contested {uuid.uuid4().hex[:6]}"
        responses = await asyncio.gather(
            *(
                stack.http.post("/v1/incentives", json=funding_head(project=project), headers=h)
                for p in partners
                for h in (p.admin, p.member)
            )
        )
        codes = sorted(r.status_code for r in responses)
        assert codes.count(201) == 1, [r.text for r in responses]
        assert {r.json()["error_code"] for r in responses if r.status_code != 201} == {
            "PF.FUNDING_HEAD_PROJECT_CLAIMED"
        }
        winner = next(r.json() for r in responses if r.status_code == 201)
        # the losers left nothing behind: no process, no month slot
        for p in partners:
            rows = await incentives_of(stack, p.id)
            slots = await month_claims(stack, p.id)
            if p.id == winner["partner_id"]:
                assert [r.id for r in rows] == [winner["id"]] and slots == [winner["id"]]
            else:
                assert rows == [] and slots == []

    async def test_r_inc_3_concurrent_paths_for_one_person_exactly_one_accepted(
        self, stack: Stack
    ) -> None:
        partners = [await new_partner(stack) for _ in range(4)]
        person = f"emp-{uuid.uuid4().hex[:6]}"
        responses = await asyncio.gather(
            *(
                stack.http.post("/v1/incentives", json=funding_head(person=person), headers=p.admin)
                for p in partners
            )
        )
        assert sorted(r.status_code for r in responses) == [201, 409, 409, 409], [
            r.text for r in responses
        ]
        winner = next(r.json() for r in responses if r.status_code == 201)
        losers = [p for p in partners if p.id != winner["partner_id"]]
        for p in losers:
            assert await incentives_of(stack, p.id) == []
            assert await claims_of(stack.sessions, [person_holder(p.id, "x")]) == []


# --- R-INC-4 monthly limit --------------------------------------------------------------------


class TestMonthlyLimit:
    async def test_r_inc_4_at_most_n_applications_a_month(self, stack: Stack) -> None:
        p = await new_partner(stack)
        limit = stack.settings.policy.incentive_apps_per_month
        for _ in range(limit):
            await apply(stack.http, p.admin, funding_head())
        extra = funding_head()
        r = await stack.http.post("/v1/incentives", json=extra, headers=p.admin)
        body = refused(r, 409, "PF.MONTHLY_LIMIT_REACHED")
        assert body["details"]["limit"] == limit
        assert len(await incentives_of(stack, p.id)) == limit
        assert len(await month_claims(stack, p.id)) == limit
        # the refused application left no claim behind: its project and person are free
        other = await new_partner(stack)
        await apply(stack.http, other.admin, extra)

    async def test_r_inc_4_limit_across_a_month_boundary(self, stack: Stack) -> None:
        p = await new_partner(stack)
        clock = [datetime(2031, 1, 31, 23, 59, 59, 999000, tzinfo=UTC)]
        async with api_at(stack, clock, Policy(incentive_apps_per_month=2)) as http:
            for _ in range(2):
                inc = await apply(http, p.admin, funding_head())
                assert inc["applied_month"] == "2031-01"
            r = await http.post("/v1/incentives", json=funding_head(), headers=p.admin)
            assert refused(r, 409, "PF.MONTHLY_LIMIT_REACHED")["details"]["month"] == "2031-01"
            clock[0] = datetime(2031, 2, 1, tzinfo=UTC)
            for _ in range(2):
                inc = await apply(http, p.admin, funding_head())
                assert inc["applied_month"] == "2031-02"
            r = await http.post("/v1/incentives", json=funding_head(), headers=p.admin)
            refused(r, 409, "PF.MONTHLY_LIMIT_REACHED")
        assert len(await month_claims(stack, p.id)) == 4

    async def test_r_inc_4_rejected_applications_still_count(self, stack: Stack) -> None:
        p = await new_partner(stack)
        clock = [datetime(2031, 3, 15, tzinfo=UTC)]
        async with api_at(stack, clock, Policy(incentive_apps_per_month=1)) as http:
            inc = await apply(http, p.admin, funding_head())
            await complete(http, Staff(stack).reviewer, inc["open_task_id"], "reject", comment="no")
            r = await http.post("/v1/incentives", json=funding_head(), headers=p.admin)
            refused(r, 409, "PF.MONTHLY_LIMIT_REACHED")

    async def test_r_inc_4_concurrent_applications_never_exceed_the_limit(
        self, stack: Stack
    ) -> None:
        p = await new_partner(stack)
        clock = [datetime(2031, 4, 10, tzinfo=UTC)]
        async with api_at(stack, clock, Policy(incentive_apps_per_month=3)) as http:
            responses = await asyncio.gather(
                *(
                    http.post("/v1/incentives", json=funding_head(), headers=h)
                    for h in [p.admin, p.member] * 4
                )
            )
        codes = sorted(r.status_code for r in responses)
        assert codes == [201] * 3 + [409] * 5, [r.text for r in responses]
        assert len(await incentives_of(stack, p.id)) == 3
        assert len(await month_claims(stack, p.id)) == 3


class TestRetries:
    async def test_r_x_6_a_retried_application_is_one_application(self, stack: Stack) -> None:
        p = await new_partner(stack)
        body = funding_head()
        headers = {**p.admin, "Idempotency-Key": f"portal-{uuid.uuid4()}"}
        responses = await asyncio.gather(
            *(stack.http.post("/v1/incentives", json=body, headers=headers) for _ in range(4))
        )
        # R-X-6: repeats that arrive while the first is in flight are 409 IN_FLIGHT (by design)
        assert {r.status_code for r in responses} <= {201, 409}, [r.text for r in responses]
        created = [r for r in responses if r.status_code == 201]
        assert created and all(
            r.json()["error_code"] == "PF.IDEMPOTENCY_KEY_IN_FLIGHT"
            for r in responses
            if r.status_code == 409
        )
        first = created[0].json()
        assert all(r.content == created[0].content for r in created)
        again = await apply(stack.http, headers, body)
        assert again == first
        assert [r.id for r in await incentives_of(stack, p.id)] == [first["id"]]
        assert await month_claims(stack, p.id) == [first["id"]]


# --- R-INC-5 review ---------------------------------------------------------------------------


class TestReview:
    async def test_r_inc_5_approve_lower_never_higher(self, stack: Stack) -> None:
        staff = Staff(stack)
        p = await new_partner(stack)
        inc = await apply(stack.http, p.admin, funding_head("20000.00"))
        err = await complete(
            stack.http,
            staff.reviewer,
            inc["open_task_id"],
            "approve",
            expect=422,
            data={"amount": "20000.01"},
        )
        assert err["error_code"] == "PF.AMOUNT_ABOVE_REQUESTED"
        for bad in ({}, {"amount": "0"}, {"amount": "1.001"}, {"amount": 5.5}):
            err = await complete(
                stack.http, staff.reviewer, inc["open_task_id"], "approve", expect=422, data=bad
            )
            assert err["error_code"] == "PF.INVALID_DATA", bad
        assert (await get_inc(stack, p.admin, inc["id"]))["status"] == "in_review"
        assert await actions(stack, p.admin, inc["id"]) == ["submitted"]
        view = await complete(
            stack.http, staff.reviewer, inc["open_task_id"], "approve", data={"amount": "15000.5"}
        )
        assert view["amount_approved"] == "15000.50" and view["decision"]["by"] == "rev-1"
        assert view["status"] == "pending_payment_application"

    async def test_r_inc_5_reject_needs_a_reason(self, stack: Stack) -> None:
        staff = Staff(stack)
        p = await new_partner(stack)
        inc = await apply(stack.http, p.admin, funding_head())
        err = await complete(stack.http, staff.reviewer, inc["open_task_id"], "reject", expect=422)
        assert err["error_code"] == "PF.COMMENT_REQUIRED"
        view = await complete(
            stack.http, staff.reviewer, inc["open_task_id"], "reject", comment="not a real project"
        )
        assert view["status"] == "rejected" and view["decision"]["comment"] == "not a real project"
        notes = await outbox_to(stack, inc["id"], p.sub)
        assert any("not a real project" in n.body for n in notes)
        r = await stack.http.post(f"/v1/incentives/{inc['id']}/payment-request", headers=p.admin)
        refused(r, 409, "PF.PROCESS_CLOSED")

    async def test_r_inc_5_return_then_resubmit_to_the_same_reviewer(self, stack: Stack) -> None:
        staff = Staff(stack)
        p = await new_partner(stack)
        inc = await apply(stack.http, p.admin, funding_head("30000.00"))
        err = await complete(stack.http, staff.reviewer, inc["open_task_id"], "return", expect=422)
        assert err["error_code"] == "PF.COMMENT_REQUIRED"
        view = await complete(
            stack.http, staff.reviewer_2, inc["open_task_id"], "return", comment="split it"
        )
        assert view["status"] == "returned" and view["open_task_id"] is None
        path = f"/v1/incentives/{inc['id']}/resubmit"
        refused(
            await stack.http.post(path, json={"amount": "300000.01"}, headers=p.admin),
            422,
            "PF.INCENTIVE_OVER_CAP",
        )
        other = await new_partner(stack)
        refused(
            await stack.http.post(path, json={"amount": "1.00"}, headers=other.admin),
            403,
            "PF.FORBIDDEN",
        )
        view = await post(stack.http, path, p.member, {"amount": "25000.00", "comment": "done"})
        assert view["status"] == "in_review" and view["amount"] == "25000.00"
        assert view["assignee"] == "rev-2"
        await complete(
            stack.http,
            staff.reviewer,
            view["open_task_id"],
            "approve",
            expect=403,
            data={"amount": "1.00"},
        )
        view = await complete(
            stack.http,
            staff.reviewer_2,
            view["open_task_id"],
            "approve",
            data={"amount": "25000.00"},
        )
        assert view["status"] == "pending_payment_application"
        refused(
            await stack.http.post(path, json={"amount": "1.00"}, headers=p.admin),
            409,
            "PF.WRONG_STATE",
        )
        assert await actions(stack, p.admin, inc["id"]) == [
            "submitted",
            "review_return",
            "resubmitted",
            "review_approve",
        ]

    async def test_r_inc_5_only_incentive_reviewers_review(self, stack: Stack) -> None:
        staff = Staff(stack)
        p = await new_partner(stack)
        inc = await apply(stack.http, p.admin, funding_head())
        for who in (staff.finance, p.admin):
            await complete(
                stack.http,
                who,
                inc["open_task_id"],
                "approve",
                expect=403,
                data={"amount": "1.00"},
            )


# --- R-INC-6 … R-INC-8 payment request, invoice list, invoice check ----------------------------


class TestPaymentAndInvoice:
    async def test_r_inc_6_payment_request_waits_for_business_information_certification(
        self, stack: Stack
    ) -> None:
        staff = Staff(stack)
        p = await new_partner(stack, certified=False)
        inc = await apply(stack.http, p.admin, funding_head())
        path = f"/v1/incentives/{inc['id']}/payment-request"
        # before approval: the wrong state
        refused(await stack.http.post(path, headers=p.admin), 409, "PF.WRONG_STATE")
        await complete(
            stack.http, staff.reviewer, inc["open_task_id"], "approve", data={"amount": "1.00"}
        )
        r = await stack.http.post(path, headers=p.admin)
        body = refused(r, 409, "PF.BUSINESS_INFO_NOT_CERTIFIED")
        assert "business information certification" in body["error_msg"]
        view = await get_inc(stack, p.admin, inc["id"])
        assert view["status"] == "pending_payment_application" and view["invoice_list"] is None
        refused(
            await stack.http.get(f"/v1/incentives/{inc['id']}/invoice-list", headers=p.admin),
            404,
            "PF.INVOICE_LIST_NOT_ISSUED",
        )
        # ops completes the partner's business information certification
        r = await stack.http.put(
            f"/v1/admin/partners/{p.id}",
            json={**p.body, "business_info_certified": True},
            headers=staff.admin,
        )
        assert r.status_code == 200, r.text
        view = await post(stack.http, path, p.admin)
        assert view["status"] == "invoice_list_issued"
        assert view["invoice_list"]["total"] == "1.00"
        refused(await stack.http.post(path, headers=p.admin), 409, "PF.WRONG_STATE")
        assert await actions(stack, p.admin, inc["id"]) == [
            "submitted",
            "review_approve",
            "payment_requested",
            "invoice_list_issued",
        ]

    async def test_r_inc_7_invoice_list_as_json_and_printable_html(self, stack: Stack) -> None:
        p = await new_partner(stack)
        p.body["name"] = "Acme <Cloud> & Co"
        await stack.http.put(f"/v1/admin/partners/{p.id}", json=p.body, headers=Staff(stack).admin)
        inc = await approved(stack, p, amount="12345.67")
        await post(stack.http, f"/v1/incentives/{inc['id']}/payment-request", p.member)
        r = await stack.http.get(f"/v1/incentives/{inc['id']}/invoice-list", headers=p.admin)
        il = r.json()
        assert il["number"] == f"IL-{inc['id']}" and il["partner_name"] == "Acme <Cloud> & Co"
        assert il["total"] == "12345.67" and il["invoice_number"] is None
        assert sum(Decimal(line["amount"]) for line in il["lines"]) == Decimal(il["total"])
        r = await stack.http.get(f"/v1/incentives/{inc['id']}/invoice-list.html", headers=p.admin)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        page = r.text
        assert "12345.67" in page and il["number"] in page
        assert "Acme &lt;Cloud&gt; &amp; Co" in page and "<Cloud>" not in page
        # the invoice number: validated, recorded, printed
        path = f"/v1/incentives/{inc['id']}/invoice"
        for bad in ({"invoice_number": ""}, {"invoice_number": "12 34"}, {}):
            refused(
                await stack.http.post(path, json=bad, headers=p.admin), 422, "PF.VALIDATION_FAILED"
            )
        view = await post(stack.http, path, p.admin, {"invoice_number": "INV-2031-0007"})
        assert view["status"] == "invoice_submitted"
        r = await stack.http.get(f"/v1/incentives/{inc['id']}/invoice-list.html", headers=p.admin)
        assert "INV-2031-0007" in r.text
        refused(
            await stack.http.post(path, json={"invoice_number": "X1"}, headers=p.admin),
            409,
            "PF.WRONG_STATE",
        )

    async def test_r_inc_7_invoice_before_the_list_is_refused(self, stack: Stack) -> None:
        p = await new_partner(stack)
        inc = await approved(stack, p)
        r = await stack.http.post(
            f"/v1/incentives/{inc['id']}/invoice", json={"invoice_number": "1"}, headers=p.admin
        )
        refused(r, 409, "PF.WRONG_STATE")

    async def test_r_inc_8_unqualified_invoice_goes_back_to_the_partner(self, stack: Stack) -> None:
        staff = Staff(stack)
        p = await new_partner(stack)
        inc = await invoiced(stack, p)
        check = await _open_task(stack, staff.finance, inc["id"], "inc.invoice_check")
        await complete(stack.http, p.admin, check["id"], "qualified", expect=403)
        await complete(stack.http, staff.reviewer, check["id"], "qualified", expect=403)
        err = await complete(stack.http, staff.finance, check["id"], "unqualified", expect=422)
        assert err["error_code"] == "PF.COMMENT_REQUIRED"
        view = await complete(
            stack.http, staff.finance, check["id"], "unqualified", comment="wrong tax rate"
        )
        assert view["status"] == "invoice_unqualified"
        assert view["invoice_checks"][0]["reason"] == "wrong tax rate"
        notes = await outbox_to(stack, inc["id"], p.sub)
        assert any("wrong tax rate" in n.body for n in notes)
        # the partner reissues: a new check task
        view = await post(
            stack.http, f"/v1/incentives/{inc['id']}/invoice", p.admin, {"invoice_number": "5555"}
        )
        assert view["status"] == "invoice_submitted" and view["invoice_number"] == "5555"
        second = await _open_task(stack, staff.finance_2, inc["id"], "inc.invoice_check")
        assert second["id"] != check["id"]
        view = await complete(stack.http, staff.finance_2, second["id"], "qualified")
        assert view["status"] == "awaiting_payout" and view["payout_due_at"] is not None
        assert [c["outcome"] for c in view["invoice_checks"]] == ["unqualified", "qualified"]
        assert (await actions(stack, p.admin, inc["id"]))[-3:] == [
            "invoice_unqualified",
            "invoice_reissued",
            "invoice_qualified",
        ]


# --- R-INC-9 / R-INC-10 payout -----------------------------------------------------------------


class TestPayout:
    async def test_r_inc_9_payout_reminder_then_breach_escalates_to_the_finance_lead(
        self, stack: Stack
    ) -> None:
        staff = Staff(stack)
        http = stack.fast_http  # payout_sla PT4S
        p = await new_partner(stack)
        inc = await invoiced(stack, p, http)
        check = await _open_task(stack, staff.finance, inc["id"], "inc.invoice_check")
        view = await complete(http, staff.finance, check["id"], "qualified")
        due = view["payout_due_at"]
        assert datetime.fromisoformat(due) - datetime.fromisoformat(
            view["qualified_at"]
        ) == timedelta(seconds=4)

        async def acted(action: str) -> bool:
            return action in await actions(stack, p.admin, inc["id"])

        await eventually(lambda: acted("task_reminded"), timeout=30, what="the payout reminder")
        reminders = [
            n for n in await outbox_to(stack, inc["id"], "finance") if "reminder" in n.subject
        ]
        assert len(reminders) == 1
        await eventually(lambda: acted("payout_breached"), timeout=30, what="the breach")

        async def breached() -> dict[str, Any] | None:
            v = await get_inc(stack, p.admin, inc["id"])
            return v if v["payout_breached"] else None

        view = await eventually(breached, timeout=30, what="payout_breached in the view")
        assert view["status"] == "awaiting_payout"
        # the finance lead sees the overdue task and moves it to another person
        payout = await _open_task(stack, staff.finance_lead, inc["id"], "inc.payout")
        assert payout["escalated"] is True
        refused(
            await http.post(
                f"/v1/tasks/{payout['id']}/reassign",
                json={"assignee": "fin-2"},
                headers=staff.finance,
            ),
            403,
            "PF.FORBIDDEN",
        )
        view = await post(
            http, f"/v1/tasks/{payout['id']}/reassign", staff.finance_lead, {"assignee": "fin-2"}
        )
        assert view["assignee"] == "fin-2" and view["payout_due_at"] == due  # deadline kept
        await complete(
            http,
            staff.finance,
            payout["id"],
            "paid",
            expect=403,
            data={"method": "bank_transfer", "reference": "R1"},
        )
        view = await complete(
            http,
            staff.finance_2,
            payout["id"],
            "paid",
            data={"method": "cloud_account_credit", "reference": "CREDIT-77"},
        )
        assert view["status"] == "paid" and view["payout_breached"] is True
        assert view["payout"]["on_time"] is False
        acts = await actions(stack, p.admin, inc["id"])
        assert (
            acts.index("invoice_qualified")
            < acts.index("task_reminded")
            < acts.index("payout_breached")
            < acts.index("task_escalated")
            < acts.index("task_reassigned")
            < acts.index("paid")
        )
        escalation = [
            n for n in await outbox_to(stack, inc["id"], "finance_lead") if "overdue" in n.subject
        ]
        assert len(escalation) == 1

    async def test_r_inc_10_paid_needs_method_and_reference(self, stack: Stack) -> None:
        staff = Staff(stack)
        p = await new_partner(stack)
        inc = await invoiced(stack, p)
        check = await _open_task(stack, staff.finance, inc["id"], "inc.invoice_check")
        await complete(stack.http, staff.finance_2, check["id"], "qualified")  # R-X-5
        payout = await _open_task(stack, staff.finance, inc["id"], "inc.payout")
        for bad in (
            {},
            {"method": "cash", "reference": "R"},
            {"method": "bank_transfer"},
            {"method": "bank_transfer", "reference": ""},
        ):
            err = await complete(
                stack.http, staff.finance, payout["id"], "paid", expect=422, data=bad
            )
            assert err["error_code"] == "PF.INVALID_DATA", bad
        view = await complete(
            stack.http,
            staff.finance,
            payout["id"],
            "paid",
            data={"method": "cloud_account_credit", "reference": "CA-0099"},
        )
        assert view["payout"]["method"] == "cloud_account_credit"
        assert view["payout"]["reference"] == "CA-0099" and view["payout"]["on_time"] is True
        history = (
            await stack.http.get(f"/v1/incentives/{inc['id']}/history", headers=p.admin)
        ).json()["items"]
        paid = next(i for i in history if i["action"] == "paid")
        assert paid["actor"] == "fin-1" and paid["details"]["reference"] == "CA-0099"
        notes = await outbox_to(stack, inc["id"], p.sub)
        assert any("CA-0099" in n.body for n in notes)


# --- R-INC-8 / R-INC-9: the 15-day clock; R-X-5: three people on the money ------------------


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value)


class TestInvoiceClock:
    async def test_r_inc_8_invoice_check_reminder_then_escalation_to_the_finance_lead(
        self, stack: Stack
    ) -> None:
        staff = Staff(stack)
        policy = stack.settings.policy.model_copy(update={"invoice_check_sla": "PT4S"})
        async with api_at(stack, [datetime.now(UTC)], policy) as http:
            p = await new_partner(stack)
            view = await invoiced(stack, p, http)
        assert view["status"] == "invoice_submitted"
        submitted = ts(view["invoice_submitted_at"])
        assert ts(view["invoice_check_due_at"]) == submitted + timedelta(seconds=4)
        check = await _open_task(stack, staff.finance, view["id"], "inc.invoice_check")
        assert ts(check["due_at"]) == submitted + timedelta(seconds=4)

        async def acted(action: str) -> bool:
            return action in await actions(stack, p.admin, view["id"])

        await eventually(lambda: acted("task_reminded"), timeout=30, what="the check reminder")
        await eventually(lambda: acted("task_escalated"), timeout=30, what="the escalation")
        escalation = [
            n for n in await outbox_to(stack, view["id"], "finance_lead") if "overdue" in n.subject
        ]
        assert len(escalation) == 1
        check = await _open_task(stack, staff.finance_lead, view["id"], "inc.invoice_check")
        assert check["escalated"] is True
        # the finance lead moves it on; the deadline still counts from the invoice's submission
        moved = await post(
            stack.http,
            f"/v1/tasks/{check['id']}/reassign",
            staff.finance_lead,
            {"assignee": "fin-2"},
        )
        assert ts(moved["invoice_check_due_at"]) == submitted + timedelta(seconds=4)
        view = await complete(stack.http, staff.finance_2, check["id"], "qualified")
        assert view["status"] == "awaiting_payout"

    async def test_r_inc_8_received_at_neither_future_nor_before_the_invoice(
        self, stack: Stack
    ) -> None:
        staff = Staff(stack)
        p = await new_partner(stack)
        view = await invoiced(stack, p)
        submitted = ts(view["invoice_submitted_at"])
        check = await _open_task(stack, staff.finance, view["id"], "inc.invoice_check")
        for bad in (
            datetime.now(UTC) + timedelta(hours=1),
            submitted - timedelta(seconds=1),
        ):
            err = await complete(
                stack.http,
                staff.finance,
                check["id"],
                "qualified",
                expect=422,
                data={"received_at": bad.isoformat()},
            )
            assert err["error_code"] == "PF.RECEIVED_AT_INVALID", err
        err = await complete(
            stack.http,
            staff.finance,
            check["id"],
            "qualified",
            expect=422,
            data={"received_at": "yesterday"},
        )
        assert err["error_code"] == "PF.INVALID_DATA"
        unchanged = await get_inc(stack, p.admin, view["id"])
        assert unchanged["status"] == "invoice_submitted" and unchanged["invoice_checks"] == []

    async def test_r_inc_9_payout_due_counts_from_received_at_not_the_click(
        self, stack: Stack
    ) -> None:
        staff = Staff(stack)
        p = await new_partner(stack)
        view = await invoiced(stack, p)
        submitted = ts(view["invoice_submitted_at"])
        check = await _open_task(stack, staff.finance, view["id"], "inc.invoice_check")
        # received at the moment of submission, sent in Beijing time: stored and shown in UTC
        sent = submitted.astimezone(timezone(timedelta(hours=8))).isoformat()
        view = await complete(
            stack.http, staff.finance, check["id"], "qualified", data={"received_at": sent}
        )
        assert view["received_at"].endswith("Z") and ts(view["received_at"]) == submitted
        assert ts(view["payout_due_at"]) == submitted + timedelta(days=15)
        assert ts(view["payout_due_at"]) < ts(view["qualified_at"]) + timedelta(days=15)
        payout = await _open_task(stack, staff.finance_2, view["id"], "inc.payout")
        assert ts(payout["due_at"]) == submitted + timedelta(days=15)
        # omitted: received now
        p2 = await new_partner(stack)
        view = await invoiced(stack, p2)
        check = await _open_task(stack, staff.finance, view["id"], "inc.invoice_check")
        view = await complete(stack.http, staff.finance, check["id"], "qualified")
        assert view["received_at"] == view["qualified_at"]
        assert ts(view["payout_due_at"]) == ts(view["received_at"]) + timedelta(days=15)


class TestFourEyes:
    async def test_r_x_5_approver_qualifier_and_payer_are_three_people(self, stack: Stack) -> None:
        staff = Staff(stack)
        both = stack.auth("rev-fin-1", ["incentive_reviewer", "finance"])
        p = await new_partner(stack)
        inc = await apply(stack.http, p.admin, funding_head("8000.00"))
        await complete(stack.http, both, inc["open_task_id"], "approve", data={"amount": "8000.00"})
        await post(stack.http, f"/v1/incentives/{inc['id']}/payment-request", p.admin)
        await post(
            stack.http, f"/v1/incentives/{inc['id']}/invoice", p.admin, {"invoice_number": "B7"}
        )
        check = await _open_task(stack, staff.finance, inc["id"], "inc.invoice_check")
        # the approver may not qualify
        err = await complete(stack.http, both, check["id"], "qualified", expect=403)
        assert err["error_code"] == "PF.SEPARATION_OF_DUTIES"
        view = await complete(stack.http, staff.finance, check["id"], "qualified")
        payout_id = view["open_task_id"]
        # neither the qualifier nor the approver may pay
        for who in (staff.finance, both):
            err = await complete(
                stack.http,
                who,
                payout_id,
                "paid",
                expect=403,
                data={"method": "bank_transfer", "reference": "X"},
            )
            assert err["error_code"] == "PF.SEPARATION_OF_DUTIES"
        assert (await get_inc(stack, p.admin, inc["id"]))["status"] == "awaiting_payout"
        view = await complete(
            stack.http,
            staff.finance_2,
            payout_id,
            "paid",
            data={"method": "bank_transfer", "reference": "T-9"},
        )
        assert view["status"] == "paid"
        history = (
            await stack.http.get(f"/v1/incentives/{inc['id']}/history", headers=p.admin)
        ).json()["items"]
        by = {i["action"]: i["actor"] for i in history}
        assert len({by["review_approve"], by["invoice_qualified"], by["paid"]}) == 3

    async def test_r_x_5_reassign_only_to_someone_who_may_act(self, stack: Stack) -> None:
        """There is no staff directory: the process refuses the people it knows are barred (the
        submitter, the partner's users it has heard from, the approver and the qualifier); a
        person without the task's role is refused when they try to complete it."""
        staff = Staff(stack)
        p = await new_partner(stack)
        view = await invoiced(stack, p)
        check = await _open_task(stack, staff.finance, view["id"], "inc.invoice_check")
        url = f"/v1/tasks/{check['id']}/reassign"
        for barred in (p.sub, "rev-1"):  # the submitter; the approver (may not qualify)
            refused(
                await stack.http.post(url, json={"assignee": barred}, headers=staff.finance_lead),
                422,
                "PF.ASSIGNEE_NOT_ELIGIBLE",
            )
        # a PDM may be named (the process cannot know their roles) but may not decide
        await post(stack.http, url, staff.finance_lead, {"assignee": "pdm-li"})
        pdm = stack.auth("pdm-li", ["pdm"])
        err = await complete(stack.http, pdm, check["id"], "qualified", expect=403)
        assert err["error_code"] == "PF.FORBIDDEN"
        await post(stack.http, url, staff.finance_lead, {"assignee": "fin-1"})
        view = await complete(stack.http, staff.finance, check["id"], "qualified")
        url = f"/v1/tasks/{view['open_task_id']}/reassign"
        for barred in ("fin-1", "rev-1", p.sub):  # the qualifier, the approver, the submitter
            refused(
                await stack.http.post(url, json={"assignee": barred}, headers=staff.finance_lead),
                422,
                "PF.ASSIGNEE_NOT_ELIGIBLE",
            )
        view = await post(stack.http, url, staff.finance_lead, {"assignee": "fin-2"})
        assert view["assignee"] == "fin-2"


# --- object-level authorization ----------------------------------------------------------------


class TestAuthorization:
    async def test_r_x_5_another_partner_gets_403_on_every_incentive_route(
        self, stack: Stack
    ) -> None:
        p, other = await new_partner(stack), await new_partner(stack)
        inc = await approved(stack, p)
        base = f"/v1/incentives/{inc['id']}"
        for method, path, body in [
            ("GET", base, None),
            ("GET", f"{base}/history", None),
            ("GET", f"{base}/invoice-list", None),
            ("GET", f"{base}/invoice-list.html", None),
            ("POST", f"{base}/payment-request", None),
            ("POST", f"{base}/invoice", {"invoice_number": "1"}),
            ("POST", f"{base}/resubmit", {"amount": "1.00"}),
        ]:
            r = await stack.http.request(method, path, json=body, headers=other.admin)
            refused(r, 403, "PF.FORBIDDEN")
        # staff read it; they do not act for the partner
        assert (await get_inc(stack, Staff(stack).finance, inc["id"]))["id"] == inc["id"]
        r = await stack.http.post(f"{base}/payment-request", headers=Staff(stack).finance)
        refused(r, 403, "PF.FORBIDDEN")
        refused(
            await stack.http.get("/v1/incentives/inc-nope", headers=p.admin), 404, "PF.NOT_FOUND"
        )
        refused(await stack.http.get(base), 401, "PF.UNAUTHENTICATED")


# --- replay ------------------------------------------------------------------------------------


async def test_r_inc_full_history_replays(stack: Stack) -> None:
    """An application through every step (return, resubmit, approve, payment request, invoice,
    unqualified, reissue, qualified, paid), replayed on the current code."""
    if stack.db != "sqlite":
        pytest.skip("one recording is enough; the workflow code does not depend on the store")
    staff = Staff(stack)
    p = await new_partner(stack)
    inc = await apply(stack.http, p.admin, funding_head("5000.00"))
    await complete(stack.http, staff.reviewer, inc["open_task_id"], "return", comment="why?")
    view = await post(
        stack.http, f"/v1/incentives/{inc['id']}/resubmit", p.admin, {"amount": "4000.00"}
    )
    await complete(
        stack.http, staff.reviewer, view["open_task_id"], "approve", data={"amount": "3500.00"}
    )
    await post(stack.http, f"/v1/incentives/{inc['id']}/payment-request", p.admin)
    view = await post(
        stack.http, f"/v1/incentives/{inc['id']}/invoice", p.admin, {"invoice_number": "A1"}
    )
    await complete(
        stack.http, staff.finance, view["open_task_id"], "unqualified", comment="stamp missing"
    )
    view = await post(
        stack.http, f"/v1/incentives/{inc['id']}/invoice", p.admin, {"invoice_number": "A2"}
    )
    view = await complete(stack.http, staff.finance, view["open_task_id"], "qualified")
    await post(
        stack.http,
        f"/v1/tasks/{view['open_task_id']}/reassign",
        staff.finance_lead,
        {"assignee": "fin-2"},
    )
    await complete(
        stack.http,
        staff.finance_2,
        view["open_task_id"],
        "paid",
        data={"method": "bank_transfer", "reference": "T-1"},
    )
    handle = stack.client.get_workflow_handle(inc["id"])
    assert (await handle.result())["status"] == "paid"
    history = await handle.fetch_history()
    await replayer().replay_workflow(history)
    await replayer().replay_workflow(WorkflowHistory.from_json(inc["id"], history.to_json()))
    if os.environ.get("PARTNERFLOW_RECORD_HISTORIES") == "1":
        HISTORIES.mkdir(exist_ok=True)
        for old in HISTORIES.glob("incentive_application_full__*.json"):
            old.unlink()
        (HISTORIES / f"incentive_application_full__{inc['id']}.json").write_text(history.to_json())


async def test_r_inc_8_r_inc_9_r_x_5_history_replays(stack: Stack) -> None:
    """The invoice clock (R-INC-8: a check task with a deadline; R-INC-9: `received_at`) and
    three people on the money (R-X-5: a refused payer, a refused reassignment), recorded as
    `incentive_invoice_clock_four_eyes` and replayed on the current code."""
    if stack.db != "sqlite":
        pytest.skip("one recording is enough; the workflow code does not depend on the store")
    staff = Staff(stack)
    p = await new_partner(stack)
    view = await invoiced(stack, p)
    check = await _open_task(stack, staff.finance, view["id"], "inc.invoice_check")
    await post(
        stack.http, f"/v1/tasks/{check['id']}/reassign", staff.finance_lead, {"assignee": "fin-1"}
    )
    view = await complete(
        stack.http,
        staff.finance,
        check["id"],
        "qualified",
        data={"received_at": view["invoice_submitted_at"]},
    )
    await complete(
        stack.http,
        staff.finance,
        view["open_task_id"],
        "paid",
        expect=403,
        data={"method": "bank_transfer", "reference": "T-1"},
    )
    await complete(
        stack.http,
        staff.finance_2,
        view["open_task_id"],
        "paid",
        data={"method": "bank_transfer", "reference": "T-1"},
    )
    handle = stack.client.get_workflow_handle(view["id"])
    assert (await handle.result())["status"] == "paid"
    history = await handle.fetch_history()
    await replayer().replay_workflow(history)
    if os.environ.get("PARTNERFLOW_RECORD_HISTORIES") == "1":
        label = "incentive_invoice_clock_four_eyes"
        (HISTORIES / f"{label}__{view['id']}.json").write_text(history.to_json())
