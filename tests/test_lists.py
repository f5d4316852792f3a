"""GET /v1/{resource}: every list route, enumerated from the app's route table, over the real
served API and database: keyset pagination over ties, each filter, and visibility (R-X-8).

Rows are written through the read model's one writer (`apply_transition`) with views of each
process's public shape, so every resource gets the same ties and owners without driving seven
kinds of workflow to the same moment; one PO goes end to end through the real workflow.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from api import access
from api.main import create_app
from api.routes.lists import RESOURCE_BY_PATH, RESOURCES, Resource
from config import Settings
from domain.principal import Role
from domain.projection import ProcessRecord, Transition
from store.db import transaction
from store.readmodel import apply_transition
from tests.conftest import Stack, eventually
from tests.helpers import Actors, submit
from workflows.registry import ALL_WORKFLOWS

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def list_paths_in_route_table() -> set[str]:
    """Collections the app serves a paginated GET on (`{"items", "next_cursor"}`), bar the
    inbox, the event feed and webhook subscriptions."""
    paths = create_app(Settings()).openapi()["paths"]
    return {
        path.removeprefix("/v1/")
        for path, operations in paths.items()
        if "get" in operations
        and path.startswith("/v1/")
        and path.count("/") == 2
        and path not in ("/v1/tasks", "/v1/events", "/v1/webhook-subscriptions")
        and path.removeprefix("/v1/") != "admin"
    }


def test_every_process_has_exactly_one_list_route() -> None:
    processes = {w.process for w in ALL_WORKFLOWS}  # type: ignore[attr-defined]
    assert {r.process for r in RESOURCES} == processes
    assert list_paths_in_route_table() == set(RESOURCE_BY_PATH)


# --- seeding --------------------------------------------------------------------------------


def sample_view(
    process: str, item_id: str, partner_id: str, status: str, at: datetime, *, to: str, tag: str
) -> dict[str, Any]:
    """A valid public view of `process` (its View model's shape); `to` is whom it is addressed
    to (account or distributor), `tag` a word the `q` filter can find."""
    common = {"id": item_id, "partner_id": partner_id, "status": status}
    times = {"created_at": at.isoformat(), "updated_at": at.isoformat()}
    views: dict[str, dict[str, Any]] = {
        "opportunity": {
            "customer_name": f"Customer {tag}",
            "project_name": "Data Lake",
            "offerings": ["ecs"],
            "amount": "1200.00",
            "region": None,
            "industry": None,
            "expected_close_date": "2027-01-31",
            "submitted_by": "u-1",
        },
        "certification": {
            "kind": "cloud_software",
            "subject": f"Subject {tag}",
            "level": None,
            "attempt": {
                "number": 1,
                "kind": "certification",
                "submitted_by": "u-1",
                "submitted_at": at.isoformat(),
                "evidence": [{"title": "doc"}],
            },
            "submitted_by": "u-1",
        },
        "incentive": {
            "source": "funding_head",
            "opportunity_id": None,
            "certification_id": None,
            "person": "Li Lei",
            "project": f"Project {tag}",
            "source_details": {},
            "amount": "5000.00",
            "cap": "300000.00",
            "program": "funding_head",
            "applied_month": "2026-03",
            "submitted_by": "u-1",
        },
        "invitation": {
            "account_id": to,
            "message": f"Join {tag}",
            "expires_at": (at + timedelta(days=7)).isoformat(),
            "invited_by": "u-1",
        },
        "customer_invitation": {
            "email": f"{tag}@example.com",
            "customer_name": f"Customer {tag}",
            "message": None,
            "expires_at": (at + timedelta(days=30)).isoformat(),
            "registration_path": f"/v1/customer-invitations/{item_id}/register",
            "token": "t",
            "invited_by": "u-1",
        },
        "dissociation": {
            "account_id": to,
            "reason": f"Reason {tag}",
            "requested_by": "u-1",
        },
        "reseller_application": {
            "distributor_id": to,
            "message": f"Hello {tag}",
            "submitted_by": "u-1",
        },
    }
    return {**common, **views[process], **times}


async def seed(
    stack: Stack,
    resource: Resource,
    *,
    partner_id: str,
    n: int,
    at: datetime,
    status: str | None = None,
    to: str = "acc-nobody",
    tag: str = "plain",
    step: timedelta = timedelta(0),
) -> list[str]:
    """`n` rows of `resource` for `partner_id`, updated at `at + i * step` (ties when step=0)."""
    status = status or next(iter(resource.status_enum)).value
    ids = []
    async with transaction(stack.sessions) as session:
        for i in range(n):
            item_id = f"{resource.process[:3]}-{uuid.uuid4().hex[:16]}"
            moment = at + i * step
            record = ProcessRecord(
                id=item_id,
                process=resource.process,
                partner_id=partner_id,
                status=status,
                submitted_by="u-1",
                version=1,
                created_at=moment,
                updated_at=moment,
                view=sample_view(
                    resource.process, item_id, partner_id, status, moment, to=to, tag=tag
                ),
            )
            await apply_transition(session, Transition(record=record))
            ids.append(item_id)
    return ids


async def read_all(
    http: httpx.AsyncClient, path: str, headers: dict[str, str], **params: Any
) -> list[dict[str, Any]]:
    """Every page of a list, following `next_cursor`."""
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(100):
        query = {**params, **({"cursor": cursor} if cursor else {})}
        r = await http.get(f"/v1/{path}", params=query, headers=headers)
        assert r.status_code == 200, r.text
        page = r.json()
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("the list never ended")


def fresh_partner() -> str:
    return f"lp-{uuid.uuid4().hex[:10]}"


RESOURCE_PARAMS = [pytest.param(r, id=r.path) for r in RESOURCES]


# --- pagination -----------------------------------------------------------------------------


@pytest.mark.parametrize("resource", RESOURCE_PARAMS)
async def test_r_x_8_pages_over_ties_never_skip_or_repeat(stack: Stack, resource: Resource) -> None:
    partner = fresh_partner()
    tied = await seed(stack, resource, partner_id=partner, n=7, at=T0)
    spread = await seed(
        stack, resource, partner_id=partner, n=4, at=T0 - timedelta(hours=1), step=timedelta(1)
    )
    owner = stack.auth("u-owner", ["partner_admin"], partner)
    items = await read_all(stack.http, resource.path, owner, limit=3)
    ids = [i["id"] for i in items]
    assert len(ids) == len(set(ids)) == 11
    assert set(ids) == set(tied) | set(spread)
    # newest update first, ties by id descending
    keys = [(datetime.fromisoformat(i["updated_at"]), i["id"]) for i in items]
    assert keys == sorted(keys, reverse=True)
    assert all(i["summary"] for i in items)
    # one page of everything equals the pages read one by one
    r = await stack.http.get(f"/v1/{resource.path}", params={"limit": 100}, headers=owner)
    assert [i["id"] for i in r.json()["items"]] == ids
    assert r.json()["next_cursor"] is None


# --- filters --------------------------------------------------------------------------------


@pytest.mark.parametrize("resource", RESOURCE_PARAMS)
async def test_list_filters_status_updated_after_q_partner(
    stack: Stack, resource: Resource
) -> None:
    partner, other = fresh_partner(), fresh_partner()
    statuses = [s.value for s in resource.status_enum]
    first, second = statuses[0], statuses[-1]
    old = await seed(stack, resource, partner_id=partner, n=2, at=T0, status=first)
    new = await seed(
        stack, resource, partner_id=partner, n=2, at=T0 + timedelta(days=1), status=second
    )
    word = f"Zq{uuid.uuid4().hex[:6]}"
    found = await seed(stack, resource, partner_id=partner, n=1, at=T0, status=first, tag=word)
    theirs = await seed(stack, resource, partner_id=other, n=1, at=T0, status=first)
    owner = stack.auth("u-owner", ["partner_admin"], partner)
    path = resource.path

    def ids(items: list[dict[str, Any]]) -> set[str]:
        return {i["id"] for i in items}

    assert ids(await read_all(stack.http, path, owner)) == {*old, *new, *found}
    assert ids(await read_all(stack.http, path, owner, status=second)) == set(new)
    # updated_after: strictly after, an offset converted to UTC (T0 is 16:00 in UTC+08:00)
    assert ids(
        await read_all(stack.http, path, owner, updated_after="2026-03-01T15:00:00+08:00")
    ) == {*old, *new, *found}
    assert ids(
        await read_all(stack.http, path, owner, updated_after="2026-03-01T16:00:00+08:00")
    ) == set(new)
    # q: case-insensitive text over the summary and the view's names
    assert ids(await read_all(stack.http, path, owner, q=word.upper())) == set(found)
    assert ids(await read_all(stack.http, path, owner, q="%")) == set()
    # partner_id: staff narrow to one partner
    staff = stack.auth("ops-1", ["ops_admin"])
    assert ids(await read_all(stack.http, path, staff, partner_id=other)) == set(theirs)
    assert ids(await read_all(stack.http, path, staff, partner_id=partner, status=first)) == {
        *old,
        *found,
    }
    # bad input: clear 4xx in the envelope
    for params, code in (
        ({"limit": 0}, 422),
        ({"limit": 101}, 422),
        ({"status": "no-such-status"}, 422),
        ({"updated_after": "yesterday"}, 422),
        ({"cursor": "not-a-cursor"}, 400),
    ):
        r = await stack.http.get(f"/v1/{path}", params=params, headers=owner)
        assert r.status_code == code, (params, r.text)
        assert r.json()["error_code"].startswith("PF.")


# --- visibility -----------------------------------------------------------------------------


@pytest.mark.parametrize("resource", RESOURCE_PARAMS)
async def test_r_x_8_lists_show_what_single_reads_show(stack: Stack, resource: Resource) -> None:
    partner, other, distributor = fresh_partner(), fresh_partner(), fresh_partner()
    account = f"acc-{uuid.uuid4().hex[:8]}"
    to = distributor if resource.process == "reseller_application" else account
    mine = set(await seed(stack, resource, partner_id=partner, n=2, at=T0, to=to))
    theirs = set(await seed(stack, resource, partner_id=other, n=2, at=T0))
    path = resource.path

    async def visible(headers: dict[str, str], **params: Any) -> set[str]:
        return {i["id"] for i in await read_all(stack.http, path, headers, **params)} & (
            mine | theirs
        )

    owner = stack.auth("u-owner", ["partner_member"], partner)
    stranger = stack.auth("u-other", ["partner_admin"], other)
    assert await visible(owner) == mine
    assert await visible(stranger) == theirs
    # a partner's token sees its own partner's items whatever its roles (R-X-8)
    assert await visible(stack.auth("u-d", ["distributor", "pdm"], other)) == theirs
    # staff see the kinds their roles read (ops_admin all), as their single read
    assert await visible(stack.auth("ops-1", ["ops_admin"])) == mine | theirs
    pdm_reads = Role.pdm in access.PROCESS_READERS[resource.process]
    assert await visible(stack.auth("pdm-li", ["pdm"])) == (mine | theirs if pdm_reads else set())
    # addressees: the invited account, the customer, the distributor's users
    addressee = {
        "invitation": stack.auth(account, ["account"]),
        "dissociation": stack.auth(account, ["account"]),
        "reseller_application": stack.auth("u-dist", ["distributor"], distributor),
    }.get(resource.process)
    if addressee is not None:
        assert await visible(addressee) == mine
    assert await visible(stack.auth(account, ["account"])) == (
        mine if resource.process in ("invitation", "dissociation") else set()
    )
    # each listed row is readable singly by the same caller, and each hidden one is not
    for item_id in mine:
        assert (await stack.http.get(f"/v1/{path}/{item_id}", headers=owner)).status_code == 200
        r = await stack.http.get(f"/v1/{path}/{item_id}", headers=stranger)
        assert r.status_code == 403, r.text
    # a partner's user may not name another partner; no token at all is 401
    r = await stack.http.get(f"/v1/{path}", params={"partner_id": other}, headers=owner)
    assert r.status_code == 403 and r.json()["error_code"] == "PF.FORBIDDEN"
    r = await stack.http.get(f"/v1/{path}", params={"partner_id": partner}, headers=owner)
    assert r.status_code == 200
    r = await stack.http.get(f"/v1/{path}")
    assert r.status_code == 401 and r.json()["error_code"] == "PF.UNAUTHENTICATED"


# --- one real process end to end -------------------------------------------------------------


async def test_a_submitted_po_is_listed_with_its_summary(stack: Stack) -> None:
    actors = Actors(stack)
    tag = uuid.uuid4().hex[:8]
    po = await submit(stack.http, actors.acme, customer_name=f"Foo {tag} Ltd", amount="1200.00")

    async def listed() -> dict[str, Any] | None:
        items = await read_all(stack.http, "opportunities", actors.acme, q=f"foo {tag}")
        return items[0] if items else None

    row = await eventually(listed, what="the PO in the list")
    assert row["id"] == po["id"]
    assert row["status"] == po["status"]
    assert row["summary"].startswith(f"Acme Cloud: PO Foo {tag} Ltd / ")
    assert row["summary"].endswith("1200.00 CNY")
    assert await read_all(stack.http, "opportunities", actors.bright, q=f"foo {tag}") == []
