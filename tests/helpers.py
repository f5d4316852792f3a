"""Small helpers shared by the end-to-end tests: actors, PO bodies and waits."""

from __future__ import annotations

import uuid
from typing import Any, Protocol

import httpx

from api.auth import mint_token
from config import Settings
from tests.conftest import eventually

ALL_PASS = {"customer_real": True, "project_real": True, "partner_role": True, "offering": True}


def po_body(**overrides: Any) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    body: dict[str, Any] = {
        "customer_name": f"Lakeside Logistics {tag}",
        "project_name": f"Warehouse platform {tag}",
        "offerings": ["ecs", "rds"],
        "amount": "1250000.00",
        "region": "east-china",
        "industry": "logistics",
        "expected_close_date": "2027-03-31",
    }
    body.update(overrides)
    return body


class TokenSource(Protocol):
    def auth(self, sub: str, roles: list[str], partner_id: str | None = None) -> dict[str, str]: ...


class SettingsTokens:
    """Tokens signed with a given deployment's secret (for tests with a stack of their own)."""

    def __init__(self, settings: Settings) -> None:
        self.secret = settings.jwt_secret

    def auth(self, sub: str, roles: list[str], partner_id: str | None = None) -> dict[str, str]:
        token = mint_token(self.secret, sub=sub, roles=roles, partner_id=partner_id)
        return {"Authorization": f"Bearer {token}"}


class Actors:
    """Tokens for the people in the tests."""

    def __init__(self, stack: TokenSource) -> None:
        self.acme = stack.auth("u-acme-1", ["partner_admin"], "p-acme")
        self.acme_member = stack.auth("u-acme-2", ["partner_member"], "p-acme")
        self.bright = stack.auth("u-bright-1", ["partner_admin"], "p-bright")
        self.cobalt = stack.auth("u-cobalt-1", ["partner_admin"], "p-cobalt")
        self.pdm_li = stack.auth("pdm-li", ["pdm"])
        self.pdm_wang = stack.auth("pdm-wang", ["pdm"])
        self.dispatcher = stack.auth("disp-1", ["dispatcher"])
        self.admin = stack.auth("ops-1", ["ops_admin"])


async def submit(
    http: httpx.AsyncClient, headers: dict[str, str], **overrides: Any
) -> dict[str, Any]:
    r = await http.post("/v1/opportunities", json=po_body(**overrides), headers=headers)
    assert r.status_code == 201, r.text
    result: dict[str, Any] = r.json()
    return result


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


async def get_po(http: httpx.AsyncClient, headers: dict[str, str], po_id: str) -> dict[str, Any]:
    r = await http.get(f"/v1/opportunities/{po_id}", headers=headers)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


async def history_actions(
    http: httpx.AsyncClient, headers: dict[str, str], po_id: str
) -> list[str]:
    r = await http.get(f"/v1/opportunities/{po_id}/history", headers=headers)
    assert r.status_code == 200, r.text
    return [item["action"] for item in r.json()["items"]]


async def wait_po(
    http: httpx.AsyncClient,
    headers: dict[str, str],
    po_id: str,
    predicate: Any,
    what: str,
    timeout: float = 20,
) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        view = await get_po(http, headers, po_id)
        return view if predicate(view) else None

    return await eventually(probe, timeout=timeout, what=what)


async def add_pdm(http: httpx.AsyncClient, admin: dict[str, str], pdm: str) -> None:
    """Make `pdm` a PDM the service knows (`store.directory`: the routing table names every PDM
    a review may go to) without changing where any PO routes: a rule for a partner that never
    submits. For tests that give each run a PDM of its own."""
    rules = (await http.get("/v1/admin/routing-rules", headers=admin)).json()
    rules.append({"partner_id": f"p-none-{pdm}", "pdm": pdm})
    r = await http.put("/v1/admin/routing-rules", json=rules, headers=admin)
    assert r.status_code == 200, r.text


def every_update() -> list[tuple[str, str, Any]]:
    """(process, Update name, method) for every Update of every process workflow in the
    registry (`workflows.ALL_WORKFLOWS`): tests that must hold for each Update enumerate this."""
    from temporalio import workflow

    from workflows import ALL_WORKFLOWS
    from workflows.human_task import ProcessWorkflow

    cases = []
    for cls in ALL_WORKFLOWS:
        if not issubclass(cls, ProcessWorkflow):
            continue
        defn = workflow._Definition.must_from_class(cls)
        for name, update in sorted(defn.updates.items()):
            if name is not None:
                cases.append((cls.process, name, getattr(cls, update.fn.__name__)))
    return cases
