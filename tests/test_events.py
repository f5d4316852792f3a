"""The event feed (DESIGN §3 `event`, issue 13): written with each transition, exactly once,
read in commit order from any cursor without skipping or repeating — on SQLite and PostgreSQL,
with concurrent writers on PostgreSQL — and seen per R-X-8."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from domain.events import PROCESS_STATUSES, all_event_types, matches, unknown_patterns
from domain.projection import ProcessRecord, Transition
from domain.tasks import HumanTask, TaskStatus
from store.db import transaction
from store.events import EventScope, decode_event_id, public_event, read_feed
from store.models import Event
from store.readmodel import apply_transition
from tests.conftest import Stack, eventually
from tests.helpers import ALL_PASS, Actors, complete, submit

T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


def transition(
    process_id: str,
    version: int,
    status: str,
    *,
    partner_id: str = "p-acme",
    tasks: list[HumanTask] | None = None,
    amount: str = "100.00",
) -> Transition:
    at = T0 + timedelta(seconds=version)
    return Transition(
        record=ProcessRecord(
            id=process_id,
            process="opportunity",
            partner_id=partner_id,
            status=status,
            version=version,
            created_at=T0,
            updated_at=at,
            view={"id": process_id, "status": status, "amount": amount, "updated_at": str(at)},
        ),
        tasks=tasks or [],
    )


def review_task(process_id: str, status: TaskStatus = TaskStatus.open) -> HumanTask:
    return HumanTask(
        id=f"{process_id}.1",
        kind="po.review",
        process="opportunity",
        process_id=process_id,
        partner_id="p-acme",
        assignee="pdm-li",
        status=status,
        created_at=T0,
    )


async def apply(sessions: async_sessionmaker[AsyncSession], t: Transition) -> None:
    async with transaction(sessions) as session:
        await apply_transition(session, t)


async def whole_feed(
    sessions: async_sessionmaker[AsyncSession], scope: EventScope | None = None
) -> list[dict[str, Any]]:
    async with sessions() as session:
        rows = await read_feed(
            session, scope or EventScope(everything=True), after=None, limit=10_000
        )
    return [public_event(r) for r in rows]


async def settled_feed(
    sessions: async_sessionmaker[AsyncSession], count: int
) -> list[dict[str, Any]]:
    """The whole feed once it holds `count` events. On PostgreSQL an event is served once every
    older transaction on the server has finished (store.events), and this server is shared."""

    async def probe() -> list[dict[str, Any]] | None:
        feed = await whole_feed(sessions)
        return feed if len(feed) >= count else None

    return await eventually(probe, timeout=60, what=f"{count} events in the feed")


async def paged_feed(
    sessions: async_sessionmaker[AsyncSession], after: str | None, limit: int
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        async with sessions() as session:
            rows = await read_feed(
                session,
                EventScope(everything=True),
                after=decode_event_id(after) if after else None,
                limit=limit,
            )
        if not rows:
            return out
        page = [public_event(r) for r in rows]
        out += page
        after = page[-1]["id"]


# --- writing: one event per change, once -------------------------------------------------------


async def test_events_follow_status_and_task_changes(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """`<process>.<status>` on a status change, `.updated` on a view change without one,
    `task.opened` / `.escalated` / `.reassigned` / `.completed` as tasks move; nothing for a
    transition that changes nothing visible; `occurred_at` in UTC with Z; `data` the view after
    the change."""
    await apply(sessions, transition("po-a", 1, "submitted"))
    await apply(sessions, transition("po-a", 2, "in_review", tasks=[review_task("po-a")]))
    await apply(sessions, transition("po-a", 3, "in_review", tasks=[review_task("po-a")]))
    await apply(
        sessions, transition("po-a", 4, "in_review", tasks=[review_task("po-a")], amount="90.00")
    )
    moved = review_task("po-a").model_copy(update={"assignee": "pdm-wang", "escalated": True})
    await apply(sessions, transition("po-a", 5, "in_review", tasks=[moved], amount="90.00"))
    done = moved.model_copy(update={"status": TaskStatus.completed})
    await apply(sessions, transition("po-a", 6, "approved", tasks=[done], amount="90.00"))
    feed = await settled_feed(sessions, 8)
    assert [e["type"] for e in feed] == [
        "opportunity.submitted",
        "opportunity.in_review",
        "task.opened",
        "opportunity.updated",
        "task.escalated",
        "task.reassigned",
        "opportunity.approved",
        "task.completed",
    ]
    assert feed[0]["occurred_at"] == "2026-11-30T08:00:01Z"
    assert feed[5]["data"]["assignee"] == "pdm-wang"
    assert feed[6]["data"]["status"] == "approved"
    assert feed[7]["data"]["status"] == "completed"
    assert {e["partner_id"] for e in feed} == {"p-acme"}
    assert [e["id"] for e in feed] == sorted(e["id"] for e in feed)


async def test_events_exist_once_however_often_a_transition_is_applied(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """A retried activity (the same transition again, even two attempts at once) and a stale
    one arriving after a later transition write no event twice and none out of place."""
    first = transition("po-b", 1, "submitted")
    second = transition("po-b", 2, "in_review", tasks=[review_task("po-b")])
    await apply(sessions, first)
    await apply(sessions, first)
    await asyncio.gather(apply(sessions, second), apply(sessions, second))
    await apply(sessions, first)  # stale: the store is past it
    await apply(sessions, second)
    feed = await settled_feed(sessions, 3)
    assert [(e["type"], e["process_id"]) for e in feed] == [
        ("opportunity.submitted", "po-b"),
        ("opportunity.in_review", "po-b"),
        ("task.opened", "po-b"),
    ]


async def test_an_event_is_written_with_its_change_or_not_at_all(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """No event without its change: a transition whose transaction rolls back leaves none."""

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with transaction(sessions) as session:
            await apply_transition(session, transition("po-c", 1, "submitted"))
            raise Boom
    assert await whole_feed(sessions) == []
    await apply(sessions, transition("po-c", 1, "submitted"))
    assert [e["type"] for e in await settled_feed(sessions, 1)] == ["opportunity.submitted"]


async def test_r_x_8_events_addressed_to_an_account_or_a_distributor_reach_them_only(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """An invitation's events reach the invited account; a reseller's application (and its
    review task) the distributor it is addressed to; nobody else outside staff."""
    invitation = transition("inv-1", 1, "pending", partner_id="p-acme")
    invitation.record.process = "invitation"
    invitation.record.view["account_id"] = "acct-9"
    application = transition("res-1", 1, "submitted", partner_id="p-relay")
    application.record.process = "reseller_application"
    application.record.view["distributor_id"] = "p-bright"
    review = review_task("res-1").model_copy(
        update={"assignee": None, "partner_id": "p-relay", "assignee_partner_id": "p-bright"}
    )
    application.tasks = [review]
    await apply(sessions, invitation)
    await apply(sessions, application)
    await settled_feed(sessions, 3)

    async def seen(scope: EventScope) -> set[tuple[str, str]]:
        return {(e["process_id"], e["type"]) for e in await whole_feed(sessions, scope)}

    assert await seen(EventScope(account_id="acct-9")) == {("inv-1", "invitation.pending")}
    assert await seen(EventScope(account_id="acct-other")) == set()
    assert await seen(EventScope(addressed_partner_id="p-bright")) == {
        ("res-1", "reseller_application.submitted"),
        ("res-1", "task.opened"),
    }
    assert await seen(EventScope(partner_id="p-relay")) == await seen(
        EventScope(addressed_partner_id="p-bright")
    )
    assert await seen(EventScope(partner_id="p-bright")) == set()
    assert await seen(EventScope(kinds=frozenset({"invitation"}))) == {
        ("inv-1", "invitation.pending")
    }
    assert len(await seen(EventScope(everything=True))) == 3


# --- reading: from any cursor, the same feed ---------------------------------------------------


async def test_feed_resumed_from_any_cursor_equals_the_feed_read_in_one_go(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    for n in range(12):
        pid = f"po-r{n}"
        await apply(sessions, transition(pid, 1, "submitted", partner_id=f"p-{n % 3}"))
        if n % 2:
            await apply(sessions, transition(pid, 2, "in_review", tasks=[review_task(pid)]))
    feed = await settled_feed(sessions, 12 + 6 * 2)
    assert len(feed) == 12 + 6 * 2
    ids = [e["id"] for e in feed]
    assert len(set(ids)) == len(ids)
    for limit in (1, 2, 5):
        assert await paged_feed(sessions, None, limit) == feed
    for position, event in enumerate(feed):
        assert await paged_feed(sessions, event["id"], 3) == feed[position + 1 :]
    # a partner's scope is the same feed, filtered
    scoped = await whole_feed(sessions, EventScope(partner_id="p-1"))
    assert scoped == [e for e in feed if e["partner_id"] == "p-1"]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_an_event_committing_after_a_newer_id_is_not_skipped(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """PostgreSQL: transaction A writes its events first and commits last; B's events, with
    newer ids, commit in between. A reader paging meanwhile must not pass A's events by."""
    async with sessions() as a:
        await a.begin()
        await apply_transition(a, transition("po-late", 1, "submitted"))
        await apply(sessions, transition("po-early", 1, "submitted"))
        seen = await paged_feed(sessions, None, 1)
        assert seen == []  # B is committed, but A (older) is still open: nothing served yet
        await a.commit()
    feed = await settled_feed(sessions, 2)
    rest = await paged_feed(sessions, seen[-1]["id"] if seen else None, 1)
    assert seen + rest == feed
    assert [e["process_id"] for e in feed] == ["po-late", "po-early"]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_feed_read_while_concurrent_writers_commit_skips_and_repeats_nothing(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """Four writers commit 25 transitions each while a reader pages through the feed with a
    small page; what the reader collected is exactly the feed read in one go afterwards."""
    writers, per_writer = 4, 25
    expected = writers * per_writer * 2  # each: a status event and a task event
    rng = random.Random(13)

    async def writer(w: int) -> None:
        for n in range(per_writer):
            pid = f"po-w{w}-{n}"
            async with sessions() as session:
                await session.begin()
                await apply_transition(
                    session, transition(pid, 1, "in_review", tasks=[review_task(pid)])
                )
                for _ in range(rng.randint(0, 3)):  # interleave commits differently
                    await asyncio.sleep(0)
                await session.commit()

    collected: list[dict[str, Any]] = []

    async def reader() -> None:
        cursor: str | None = None

        async def caught_up() -> bool:
            nonlocal cursor
            async with sessions() as session:
                rows = await read_feed(
                    session,
                    EventScope(everything=True),
                    after=decode_event_id(cursor) if cursor else None,
                    limit=3,
                )
            page = [public_event(r) for r in rows]
            collected.extend(page)
            if page:
                cursor = page[-1]["id"]
            return len(collected) >= expected

        await eventually(caught_up, timeout=60, interval=0.001, what="the reader to catch up")

    await asyncio.gather(reader(), *(writer(w) for w in range(writers)))
    feed = await settled_feed(sessions, expected)
    assert len(feed) == expected
    assert collected == feed


# --- event types -------------------------------------------------------------------------------


def test_every_process_in_the_workflow_registry_has_its_event_types() -> None:
    from workflows import ALL_WORKFLOWS
    from workflows.human_task import ProcessWorkflow

    processes = {w.process for w in ALL_WORKFLOWS if issubclass(w, ProcessWorkflow)}
    assert len(processes) == len(ALL_WORKFLOWS)
    assert processes == set(PROCESS_STATUSES)
    types = all_event_types()
    assert {"opportunity.approved", "incentive.paid", "task.opened", "task.completed"} <= types


def test_subscription_patterns_exact_and_wildcards() -> None:
    assert unknown_patterns(["*", "task.*", "opportunity.approved", "incentive.*"]) == []
    assert unknown_patterns(["opportunity.aproved", "nothing.*", "task", "*.approved"]) == [
        "opportunity.aproved",
        "nothing.*",
        "task",
        "*.approved",
    ]
    assert matches(["task.*"], "task.opened")
    assert matches(["*"], "certification.expired")
    assert matches(["opportunity.approved"], "opportunity.approved")
    assert not matches(["opportunity.approved"], "opportunity.rejected")
    assert not matches(["opportunity.*"], "task.opened")


# --- the API ----------------------------------------------------------------------------------


async def feed_of(
    http: httpx.AsyncClient, headers: dict[str, str], after: str | None = None, limit: int = 500
) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    while True:
        params: dict[str, Any] = {"limit": limit}
        if after:
            params["after"] = after
        r = await http.get("/v1/events", params=params, headers=headers)
        assert r.status_code == 200, r.text
        page = r.json()
        items += page["items"]
        if not page["items"]:
            return items
        after = page["next_cursor"]


async def test_r_x_8_feed_shows_a_po_review_to_its_partner_and_staff_only(stack: Stack) -> None:
    """GET /v1/events: the PO's submission, review task and approval, in order, for its partner
    and staff; another partner sees none of it. Resuming from any cursor gives the same feed."""
    actors = Actors(stack)
    po = await submit(stack.http, actors.acme)

    async def review_task_id() -> str | None:
        events = [e for e in await feed_of(stack.http, actors.acme) if e["process_id"] == po["id"]]
        opened = [e for e in events if e["type"] == "task.opened"]
        return str(opened[0]["data"]["id"]) if opened else None

    task_id = await eventually(review_task_id, what="task.opened in the feed")
    await complete(stack.http, actors.pdm_li, task_id, "approve", data={"criteria": ALL_PASS})

    async def approved() -> list[dict[str, Any]] | None:
        events = [e for e in await feed_of(stack.http, actors.acme) if e["process_id"] == po["id"]]
        return events if any(e["type"] == "opportunity.approved" for e in events) else None

    mine = await eventually(approved, what="opportunity.approved in the feed")
    types = [e["type"] for e in mine]
    assert types[0] == "opportunity.submitted" or types[0] == "opportunity.in_review"
    assert types.index("task.opened") < types.index("task.completed")
    assert types.index("task.opened") < types.index("opportunity.approved")
    assert mine[-1]["data"]["status"] in ("approved",) or "opportunity.approved" in types
    approved_event = next(e for e in mine if e["type"] == "opportunity.approved")
    assert approved_event["data"]["id"] == po["id"]
    assert approved_event["occurred_at"].endswith("Z")

    staff_feed = await feed_of(stack.http, actors.pdm_li)
    assert [e for e in staff_feed if e["process_id"] == po["id"]] == mine
    assert all(e["partner_id"] != "p-acme" for e in await feed_of(stack.http, actors.bright))
    # staff roles see the kinds they read (finance: incentives, not POs); staff roles on a
    # partner's token count for nothing
    finance = stack.auth("fin-1", ["finance"])
    assert all(e["process"] == "incentive" for e in await feed_of(stack.http, finance))
    posing = stack.auth("ops-x", ["ops_admin"], "p-bright")
    assert all(e["partner_id"] != "p-acme" for e in await feed_of(stack.http, posing))

    whole = await feed_of(stack.http, actors.admin)
    for cut in range(0, len(whole), max(1, len(whole) // 7)):
        assert (
            await feed_of(stack.http, actors.admin, after=whole[cut]["id"], limit=2)
            == (whole[cut + 1 :])
        )


async def test_feed_refuses_a_bad_cursor_and_an_anonymous_caller(stack: Stack) -> None:
    actors = Actors(stack)
    r = await stack.http.get("/v1/events", params={"after": "42"}, headers=actors.acme)
    assert r.status_code == 400 and r.json()["error_code"] == "PF.BAD_REQUEST"
    r = await stack.http.get("/v1/events", params={"limit": 0}, headers=actors.acme)
    assert r.status_code == 422
    r = await stack.http.get("/v1/events")
    assert r.status_code == 401 and r.json()["error_code"] == "PF.UNAUTHENTICATED"
    r = await stack.http.get("/v1/events", headers=stack.auth("nobody", []))
    assert r.status_code == 403 and r.json()["error_code"] == "PF.FORBIDDEN"
    # an empty page hands the cursor back, so a poller keeps its place
    feed = await feed_of(stack.http, actors.admin)
    if feed:
        r = await stack.http.get(
            "/v1/events", params={"after": feed[-1]["id"]}, headers=actors.acme
        )
        assert r.json()["next_cursor"] == feed[-1]["id"]


async def test_events_are_stored_once_per_transition_in_the_running_service(stack: Stack) -> None:
    """Against the real worker: (process_id, version, position) never repeats."""
    actors = Actors(stack)
    po = await submit(stack.http, actors.acme)
    await eventually(lambda: _events_of(stack.sessions, po["id"]), what="the PO's events")
    rows = await _events_of(stack.sessions, po["id"])
    keys = [(r.version, r.position) for r in rows]
    assert len(keys) == len(set(keys))


async def _events_of(sessions: async_sessionmaker[AsyncSession], process_id: str) -> list[Event]:
    async with sessions() as session:
        rows = await session.exec(
            select(Event).where(Event.process_id == process_id).order_by(col(Event.id))
        )
        return list(rows.all())
