"""R-X-8 tenant isolation (OWASP API1/API5), generated from the app's own route table.

Every route of the OpenAPI that names an item in its path, every list route, and the bulk task
route is tried by every kind of caller: a user of the owning partner, a user of another partner,
a partner-scoped distributor of another partner (the named example: `roles: ["distributor"]` with
a partner_id reads another partner's PO and its history), a partner-scoped token naming every
staff role, staff with the role the route needs, staff without it, and no token.

- the one who may: never 401, 403 or 404;
- everyone else: 403 or 404, never 2xx, and never the item's data; without a token: 401;
- lists (GET without a path parameter): never another partner's items.

A route this file cannot classify fails the test: a new route must be added to `ACTIONS`
(what its last path segment does) or `PREFIX_KIND` (which process its prefix names).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from api.main import create_app
from tests.conftest import Stack
from tests.helpers import po_body

Headers = dict[str, str]

# --- the classification tables --------------------------------------------------------------

# Which process (or family) a path prefix names. "task" and "admin" are not processes.
PREFIX_KIND: dict[str, str] = {
    "/v1/opportunities": "opportunity",
    "/v1/certifications": "certification",
    "/v1/incentives": "incentive",
    "/v1/invitations": "invitation",
    "/v1/customer-invitations": "customer_invitation",
    "/v1/dissociations": "dissociation",
    "/v1/reseller-applications": "reseller_application",
    "/v1/tasks": "task",
    "/v1/admin": "admin",
}

# Who may do what a route does, by (method, what follows the item's path parameter). "" is the
# item itself. READ: the owner's users and the staff who read that process; OWNER: the owner's
# users; ACCOUNT: the personal account the item is addressed to; ASSIGNEE: whoever the task is
# assigned or offered to; REASSIGN: staff with the task kind's reassign role; ADMIN: ops_admin.
READ, OWNER, ACCOUNT, ASSIGNEE, REASSIGN, ADMIN = (
    "read",
    "owner",
    "account",
    "assignee",
    "reassign",
    "admin",
)
ACTIONS: dict[tuple[str, str], str] = {
    ("GET", ""): READ,
    ("GET", "history"): READ,
    ("GET", "comments"): READ,
    ("POST", "comments"): READ,
    ("GET", "invoice-list"): READ,
    ("GET", "invoice-list.html"): READ,
    ("PATCH", ""): OWNER,
    ("POST", "cancel"): OWNER,
    ("POST", "resubmit"): OWNER,
    ("POST", "defense"): OWNER,
    ("POST", "recertify"): OWNER,
    ("POST", "clarification"): OWNER,
    ("POST", "payment-request"): OWNER,
    ("POST", "invoice"): OWNER,
    ("POST", "revoke"): OWNER,
    ("POST", "accept"): ACCOUNT,
    ("POST", "decline"): ACCOUNT,
    ("POST", "register"): ACCOUNT,
    ("POST", "complete"): ASSIGNEE,
    ("POST", "claim"): ASSIGNEE,
    ("POST", "unclaim"): ASSIGNEE,
    ("POST", "reassign"): REASSIGN,
}
# Allowed callers act after every refusal has been tried, in this order: reads, then actions
# that leave the item in place, then those that end it.
ORDER = {READ: 0, OWNER: 1, ACCOUNT: 2, ASSIGNEE: 3, REASSIGN: 4, ADMIN: 5}

# Staff roles that read each process, and one that does not (what "staff without" holds).
STAFF_READER = {
    "opportunity": ("pdm", "cert_reviewer"),
    "certification": ("cert_reviewer", "finance"),
    "incentive": ("incentive_reviewer", "pdm"),
    "invitation": ("ops_admin", "pdm"),
    "customer_invitation": ("ops_admin", "pdm"),
    "dissociation": ("ops_admin", "pdm"),
    "reseller_application": ("ops_admin", "pdm"),
}
STAFF_ROLES = [
    "pdm",
    "dispatcher",
    "cert_reviewer",
    "cert_ops",
    "incentive_reviewer",
    "finance",
    "finance_lead",
    "ops_admin",
]

# Bodies for routes whose schema has no example and requires fields.
BODIES: dict[tuple[str, str], Any] = {
    ("POST", "cancel"): {"reason": "no longer needed"},
    ("POST", "resubmit:opportunity"): po_body(),
    ("POST", "resubmit:incentive"): {"amount": "100.00"},
    ("POST", "invoice"): {"invoice_number": "44031234"},
    ("POST", "register"): {"token": "not-the-token"},
    ("POST", "complete"): {"outcome": "reject", "comment": "tenant isolation probe"},
    ("POST", "reassign"): {"assignee": "ops-probe"},
    ("PATCH", ""): {"stage": "won"},
    ("POST", "comments"): {"body": "tenant isolation probe"},
    ("POST", "clarification"): {"answer": "tenant isolation probe"},
}


# Error codes that mean "not yours" or "no such item": the one who may never gets them.
NOT_YOURS = {"PF.UNAUTHENTICATED", "PF.FORBIDDEN", "PF.NOT_FOUND", "PF.TASK_NOT_FOUND"}


@dataclass
class Route:
    method: str
    template: str
    kind: str  # PREFIX_KIND value, or "list"/"bulk"
    action: str
    schema: dict[str, Any] | None


def classify(spec: dict[str, Any]) -> list[Route]:
    """Every route of the spec that isolation concerns; fails loudly on one it cannot place."""
    routes: list[Route] = []
    unknown: list[str] = []
    for template, operations in spec["paths"].items():
        if not template.startswith("/v1/"):
            continue  # /healthz, /readyz, /metrics: public by design
        if template.startswith("/v1/webhook-subscriptions"):
            # enumerated on their own, with a subscription as the item:
            # tests/test_webhooks.py::test_r_x_8_every_subscription_route_is_its_partners_only
            continue
        prefix = next(
            (p for p in PREFIX_KIND if template.startswith(p + "/") or template == p), None
        )
        for method, op in operations.items():
            method = method.upper()
            body = (op.get("requestBody") or {}).get("content", {}).get("application/json", {})
            schema = _resolve(spec, body.get("schema")) if body else None
            if prefix is None:
                if method == "GET" and "{" not in template:
                    routes.append(Route(method, template, "list", READ, schema))
                else:
                    unknown.append(f"{method} {template}")
                continue
            kind = PREFIX_KIND[prefix]
            if kind == "admin":
                routes.append(Route(method, template, "admin", ADMIN, schema))
                continue
            if "{" not in template:
                if method == "GET":
                    routes.append(Route(method, template, "list", READ, schema))
                elif template == prefix and method == "POST":
                    continue  # creation: the caller's own new item, not another's
                elif template == "/v1/tasks/bulk-complete":
                    routes.append(Route(method, template, "bulk", ASSIGNEE, schema))
                else:
                    unknown.append(f"{method} {template}")
                continue
            tail = template.split("}", 1)[1].strip("/")
            action = ACTIONS.get((method, tail))
            if action is None:
                unknown.append(f"{method} {template}")
                continue
            routes.append(Route(method, template, kind, action, schema))
    assert not unknown, (
        f"routes R-X-8 cannot classify; add them to ACTIONS / PREFIX_KIND in {__file__}: {unknown}"
    )
    return routes


def _resolve(spec: dict[str, Any], schema: dict[str, Any] | None) -> dict[str, Any] | None:
    if schema is None:
        return None
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        resolved: dict[str, Any] = spec["components"]["schemas"][name]
        return resolved
    if "anyOf" in schema:
        for option in schema["anyOf"]:
            if option.get("type") != "null":
                return _resolve(spec, option)
    return schema


def body_for(route: Route, item_kind: str, tail: str) -> Any:
    for key in ((route.method, f"{tail}:{item_kind}"), (route.method, tail)):
        if key in BODIES:
            return BODIES[key]
    schema = route.schema
    if schema is None:
        return None
    if schema.get("examples"):
        return schema["examples"][0]
    if schema.get("type") == "array":
        return []
    if not schema.get("required"):
        return {}
    pytest.fail(f"no body for {route.method} {route.template}: add one to BODIES")


# --- the world: one item of each process, owned by a fresh partner --------------------------


@dataclass
class Item:
    kind: str
    id: str
    owner: Headers
    marker: str  # a string only this item's answers contain
    account: Headers | None = None  # the account it is addressed to (invitations, dissociations)
    addressed: Headers | None = None  # the distributor's reviewer (reseller applications)
    task_id: str | None = None
    assignee: Headers | None = None  # who the task is assigned or offered to
    body: dict[str, Any] = field(default_factory=dict)  # per-item bodies (a link's token)


@dataclass
class World:
    items: list[Item]
    other: Headers
    distributor_of_other: Headers
    scoped_staff: Headers
    admin: Headers
    stack: Stack

    def staff(self, role: str) -> Headers:
        return self.stack.auth(f"staff-{role}", [role])


async def put_partner(stack: Stack, pid: str, **body: Any) -> None:
    r = await stack.http.put(
        f"/v1/admin/partners/{pid}",
        json={"name": f"Partner {pid}", **body},
        headers=stack.auth("ops-1", ["ops_admin"]),
    )
    assert r.status_code == 200, r.text


async def created(stack: Stack, path: str, headers: Headers, body: dict[str, Any]) -> Any:
    r = await stack.http.post(path, json=body, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()


async def build_world(stack: Stack, tag: str | None = None) -> World:
    """One item of every process, owned by fresh partners named after `tag` (`p-own-<tag>`,
    `p-oth-<tag>`, the reseller `p-res-<tag>`, the distributors `p-dist-<tag>` and
    `p-dist2-<tag>`)."""
    tag = tag or uuid.uuid4().hex[:8]
    owner_id, other_id = f"p-own-{tag}", f"p-oth-{tag}"
    reseller_id, dist_id, dist_other_id = f"p-res-{tag}", f"p-dist-{tag}", f"p-dist2-{tag}"
    for pid, kind in ((owner_id, "solution_provider"), (other_id, "solution_provider")):
        await put_partner(
            stack,
            pid,
            kind=kind,
            tier="core",
            region="north-china",
            business_info_certified=True,
        )
    await put_partner(stack, reseller_id, kind="reseller")
    for pid in (dist_id, dist_other_id):
        await put_partner(stack, pid, kind="distributor", contact_email=f"ops@{pid}.example")
    admin = stack.auth("ops-1", ["ops_admin"])
    owner = stack.auth(f"u-{owner_id}", ["partner_admin"], owner_id)
    items: list[Item] = []

    marker = f"Isolated {tag}"
    po = await created(
        stack,
        "/v1/opportunities",
        owner,
        po_body(customer_name=f"{marker} customer", region="north-china", industry="logistics"),
    )
    items.append(
        Item(
            "opportunity",
            po["id"],
            owner,
            marker,
            task_id=po["open_task_id"],
            assignee=stack.auth(po["assignee"], ["pdm"]),
        )
    )
    cert = await created(
        stack,
        "/v1/certifications",
        owner,
        {
            "kind": "cloud_software",
            "subject": f"isolated-{tag}",
            "evidence": [{"title": f"{marker} evidence", "url": "https://files.example/x.pdf"}],
        },
    )
    items.append(
        Item(
            "certification",
            cert["id"],
            owner,
            marker,
            task_id=cert["open_task_id"],
            assignee=stack.auth(f"cr-{tag}", ["cert_reviewer"]),
        )
    )
    inc = await created(
        stack,
        "/v1/incentives",
        owner,
        {"source": "funding_head", "person": f"emp-{tag}", "project": marker, "amount": "100.00"},
    )
    items.append(
        Item(
            "incentive",
            inc["id"],
            owner,
            marker,
            task_id=inc["open_task_id"],
            assignee=stack.auth(f"rev-{tag}", ["incentive_reviewer"]),
        )
    )
    for suffix, associated in (("inv", None), ("dis", owner_id), ("cust", None)):
        r = await stack.http.put(
            f"/v1/admin/accounts/acct-{suffix}-{tag}",
            json={
                "enterprise_verified": False,
                "real_name_verified": True,
                "site": "china",
                "associated_partner_id": associated,
                "email": f"{suffix}-{tag}@customer.example",
            },
            headers=admin,
        )
        assert r.status_code == 200, r.text
    inv = await created(
        stack, "/v1/invitations", owner, {"account_id": f"acct-inv-{tag}", "message": marker}
    )
    items.append(
        Item(
            "invitation",
            inv["id"],
            owner,
            marker,
            account=stack.auth(f"acct-inv-{tag}", ["account"]),
        )
    )
    cinv = await created(
        stack,
        "/v1/customer-invitations",
        owner,
        {"email": f"c-{tag}@lakeside.example", "customer_name": marker},
    )
    items.append(
        Item(
            "customer_invitation",
            cinv["id"],
            owner,
            marker,
            account=stack.auth(f"acct-cust-{tag}", ["account"]),
            body={"register": {"token": cinv["token"]}},
        )
    )
    dis = await created(
        stack, "/v1/dissociations", owner, {"account_id": f"acct-dis-{tag}", "reason": marker}
    )
    items.append(
        Item(
            "dissociation",
            dis["id"],
            owner,
            marker,
            account=stack.auth(f"acct-dis-{tag}", ["account"]),
        )
    )
    reseller = stack.auth(f"u-{reseller_id}", ["partner_admin"], reseller_id)
    reviewer = stack.auth(f"d-{tag}", ["distributor"], dist_id)
    res = await created(
        stack,
        "/v1/reseller-applications",
        reseller,
        {"distributor_id": dist_id, "message": marker},
    )
    items.append(
        Item(
            "reseller_application",
            res["id"],
            reseller,
            marker,
            addressed=reviewer,
            task_id=res["open_task_id"],
            assignee=reviewer,
        )
    )
    return World(
        items=items,
        other=stack.auth(f"u-{other_id}", ["partner_admin"], other_id),
        distributor_of_other=stack.auth(f"d2-{tag}", ["distributor"], dist_other_id),
        scoped_staff=stack.auth(f"scoped-{tag}", STAFF_ROLES, other_id),
        admin=admin,
        stack=stack,
    )


# --- the cases ------------------------------------------------------------------------------


@dataclass
class Case:
    route: Route
    item: Item | None
    who: str
    headers: Headers | None
    allowed: bool
    path: str
    body: Any


def cases_for(route: Route, world: World) -> list[Case]:
    out: list[Case] = []

    def add(item: Item | None, path: str, body: Any, callers: dict[str, tuple[Any, bool]]) -> None:
        for who, (headers, allowed) in callers.items():
            out.append(Case(route, item, who, headers, allowed, path, body))

    common = {
        "other partner": (world.other, False),
        "distributor of another partner": (world.distributor_of_other, False),
        "partner-scoped staff roles": (world.scoped_staff, False),
        "no token": (None, False),
    }
    if route.kind == "admin":
        param_value = f"p-throwaway-{uuid.uuid4().hex[:6]}"
        path = (
            route.template.split("{")[0] + param_value if "{" in route.template else route.template
        )
        body = body_for(route, "admin", "")
        owner = world.items[0].owner
        callers = {
            **common,
            "partner user": (owner, False),
            "staff without ops_admin": (world.staff("pdm"), False),
        }
        # Collection-wide writes would replace the shared stack's reference data: refusals only.
        if route.method == "GET" or "{" in route.template:
            callers["ops_admin"] = (world.admin, True)
        add(None, path, body, callers)
        return out
    if route.kind in ("list", "bulk"):
        return [
            Case(route, None, who, headers, allowed, route.template, None)
            for who, (headers, allowed) in {
                **common,
                "owner": (world.items[0].owner, True),
            }.items()
        ]
    tail = route.template.split("}", 1)[1].strip("/")
    if route.kind == "task":
        for item in world.items:
            if item.task_id is None:
                continue
            assert item.assignee is not None
            path = route.template.split("{")[0] + item.task_id + (f"/{tail}" if tail else "")
            body = body_for(route, "task", tail)
            non_reader = STAFF_READER[item.kind][1]
            if route.action == READ:
                callers = {
                    "owner": (item.owner, True),
                    "assignee": (item.assignee, True),
                    "staff without the task's role": (world.staff(non_reader), False),
                }
            elif route.action == ASSIGNEE:
                callers = {
                    "owner": (item.owner, False),
                    "assignee": (item.assignee, True),
                    "staff without the task's role": (world.staff(non_reader), False),
                }
            else:  # REASSIGN
                callers = {
                    "owner": (item.owner, False),
                    "assignee": (item.assignee, False),
                    "ops_admin": (world.admin, True),
                }
            add(item, path, body, {**common, **callers})
        return out
    for item in world.items:
        if item.kind != route.kind:
            continue
        path = route.template.split("{")[0] + item.id + (f"/{tail}" if tail else "")
        body = item.body.get(tail) or body_for(route, item.kind, tail)
        reader_role, non_reader = STAFF_READER[item.kind]
        callers = {
            "owner": (item.owner, route.action in (READ, OWNER)),
            f"staff {reader_role}": (world.staff(reader_role), route.action == READ),
            f"staff {non_reader} (not a reader)": (world.staff(non_reader), False),
        }
        if item.account is not None:
            reads = route.action == READ and item.kind in ("invitation", "dissociation")
            callers["addressed account"] = (item.account, route.action == ACCOUNT or reads)
        if item.addressed is not None:
            callers["addressed distributor"] = (item.addressed, route.action == READ)
        add(item, path, body, {**common, **callers})
    return out


async def call(http: httpx.AsyncClient, case: Case) -> httpx.Response:
    kwargs: dict[str, Any] = {"headers": case.headers or {}}
    if case.body is not None:
        kwargs["json"] = case.body
    return await http.request(case.route.method, case.path, **kwargs)


def item_ids(world: World) -> set[str]:
    ids = {i.id for i in world.items} | {i.task_id for i in world.items if i.task_id}
    return ids


async def list_all(http: httpx.AsyncClient, path: str, headers: Headers | None) -> tuple[int, str]:
    """Every page of a list (following `next_cursor`), as one text to search."""
    texts: list[str] = []
    cursor: str | None = None
    for _ in range(200):
        params = {"limit": "100", "status": "open"} if path == "/v1/tasks" else {"limit": "100"}
        if cursor:
            params["cursor"] = cursor
        r = await http.get(path, params=params, headers=headers or {})
        if r.status_code != 200:
            return r.status_code, r.text
        texts.append(r.text)
        cursor = r.json().get("next_cursor")
        if not cursor:
            break
    return 200, "\n".join(texts)


async def bulk_case(world: World, path: str, failures: list[str]) -> None:
    """Bulk completion: one 200 answer with a result per task. Every caller's result for a task
    not assigned or offered to it is 403/404; the assignee's for its own task never is."""
    tasks = [i for i in world.items if i.task_id]
    callers: list[tuple[str, Headers | None, Item | None]] = [
        ("other partner", world.other, None),
        ("distributor of another partner", world.distributor_of_other, None),
        ("partner-scoped staff roles", world.scoped_staff, None),
        ("owner", world.items[0].owner, None),
        ("no token", None, None),
    ] + [(f"assignee of {i.kind}", i.assignee, i) for i in tasks]
    for who, headers, own in callers:
        r = await world.stack.http.post(
            path,
            json={
                "task_ids": [i.task_id for i in tasks],
                "outcome": "reject",
                "comment": "tenant isolation probe",
            },
            headers=headers or {},
        )
        if headers is None:
            if r.status_code != 401:
                failures.append(f"POST {path} without a token → {r.status_code}")
            continue
        if r.status_code != 200:
            failures.append(f"POST {path} as {who} → {r.status_code} {r.text[:200]}")
            continue
        for result in r.json()["results"]:
            if own is not None and result["task_id"] == own.task_id:
                wrong = result["status_code"] in (401, 403, 404)
            else:  # the owner sees its tasks (so may learn one is closed, 409), never decides
                wrong = result["ok"] or result.get("process") is not None
                wrong |= who != "owner" and result["status_code"] not in (403, 404)
            if wrong:
                failures.append(f"POST {path} as {who}: {result}")


async def test_r_x_8_every_route_isolates_tenants(stack: Stack) -> None:
    world = await build_world(stack)
    routes = classify(create_app(stack.settings).openapi())
    templates = {r.template for r in routes}
    assert "/v1/opportunities/{po_id}/history" in templates and "/v1/tasks" in templates
    cases = [c for r in routes for c in cases_for(r, world)]
    denied = [c for c in cases if not c.allowed]
    allowed = sorted((c for c in cases if c.allowed), key=lambda c: ORDER[c.route.action])
    markers = {i.marker for i in world.items}
    failures: list[str] = []
    secret_ids = item_ids(world)
    for case in denied + allowed:
        label = f"{case.route.method} {case.route.template} as {case.who} ({case.path})"
        if case.route.kind == "bulk":
            if case.who == "owner":  # one run covers every caller
                await bulk_case(world, case.path, failures)
            continue
        if case.route.kind == "list":
            status, text = await list_all(stack.http, case.path, case.headers)
            if case.headers is None:
                if status != 401:
                    failures.append(f"{label}: {status}, want 401")
            elif case.allowed:
                if status in (401, 403, 404):
                    failures.append(f"{label}: {status}")
            elif status == 200 and (
                any(m in text for m in markers) or any(i in text for i in secret_ids)
            ):
                failures.append(f"{label}: lists another partner's items")
            continue
        r = await call(stack.http, case)
        if case.headers is None:
            if r.status_code != 401:
                failures.append(f"{label}: {r.status_code}, want 401")
            continue
        if case.allowed:
            # a 404 that is about the item's state (an invoice list not issued yet) is allowed
            code = r.json().get("error_code") if r.status_code >= 400 else None
            if r.status_code in (401, 403) or code in NOT_YOURS:
                failures.append(f"{label}: {r.status_code} {r.text[:200]}")
            continue
        if r.status_code not in (403, 404):
            failures.append(f"{label}: {r.status_code}, want 403/404: {r.text[:200]}")
        elif case.item is not None and case.item.marker in r.text:
            failures.append(f"{label}: the refusal carries the item's data: {r.text[:200]}")
        else:
            body = r.json()
            if set(body) != {"error_code", "error_msg", "details"}:
                failures.append(f"{label}: not the error envelope: {json.dumps(body)[:200]}")
    assert not failures, "\n".join(failures)


async def test_r_x_8_distributor_of_another_partner_reads_no_po(stack: Stack) -> None:
    """The example found: `roles: ["distributor"]` with partner D reads another partner's PO and
    its history → 200. Now 403 for both."""
    owner = stack.auth("u-acme-1", ["partner_admin"], "p-acme")
    po = await created(stack, "/v1/opportunities", owner, po_body())
    distributor = stack.auth("d-x", ["distributor"], "p-bright")
    for path in (f"/v1/opportunities/{po['id']}", f"/v1/opportunities/{po['id']}/history"):
        r = await stack.http.get(path, headers=distributor)
        assert r.status_code == 403, r.text
        assert r.json()["error_code"] == "PF.FORBIDDEN"
        assert (await stack.http.get(path, headers=owner)).status_code == 200


def test_r_x_8_an_unclassified_route_fails_loudly() -> None:
    spec: dict[str, Any] = {"paths": {"/v1/opportunities/{po_id}/frobnicate": {"post": {}}}}
    with pytest.raises(AssertionError, match="cannot classify"):
        classify(spec)
