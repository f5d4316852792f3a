"""The read model's writer and claims, on SQLite and PostgreSQL: idempotent, never backwards,
exactly one claim holder under concurrency (R-X-3, R-X-4, R-X-6)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from domain.projection import AuditEntry, Notification, ProcessRecord, Transition
from domain.tasks import HumanTask
from store.claims import claim
from store.db import transaction
from store.models import AuditEvent, OutboxMessage, ProcessRow, TaskRow
from store.readmodel import READ_MODEL_CONFLICTS, ReadModelConflict, apply_transition

NOW = datetime(2027, 1, 1, tzinfo=UTC)


def transition(version: int, status: str) -> Transition:
    return Transition(
        record=ProcessRecord(
            id="po-1",
            process="opportunity",
            partner_id="p-1",
            status=status,
            version=version,
            created_at=NOW,
            updated_at=NOW,
            view={"status": status},
        ),
        tasks=[
            HumanTask(
                id="po-1.1",
                kind="po.review",
                process="opportunity",
                process_id="po-1",
                assignee="pdm-1",
                created_at=NOW,
                status="open" if status == "in_review" else "completed",
            )
        ],
        audit=[AuditEntry(actor="u-1", action=f"to_{status}")],
        notifications=[Notification(recipient="pdm-1", subject="s", body="b")],
    )


async def count(sessions: async_sessionmaker[AsyncSession], model: type) -> int:
    async with sessions() as session:
        return int((await session.exec(select(func.count()).select_from(model))).one())


async def test_r_x_3_a_retried_transition_writes_nothing_twice(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    for _ in range(3):
        async with transaction(sessions) as session:
            await apply_transition(session, transition(1, "in_review"))
    assert await count(sessions, AuditEvent) == 1
    assert await count(sessions, OutboxMessage) == 1
    assert await count(sessions, TaskRow) == 1


async def test_r_x_3_the_read_model_never_moves_backwards(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with transaction(sessions) as session:
        await apply_transition(session, transition(2, "approved"))
    async with transaction(sessions) as session:  # a late retry of an older transition
        await apply_transition(session, transition(1, "in_review"))
    async with sessions() as session:
        row = await session.get(ProcessRow, "po-1")
        task = await session.get(TaskRow, "po-1.1")
    assert row is not None and row.status == "approved" and row.version == 2
    assert task is not None and task.status == "completed"
    assert await count(sessions, AuditEvent) == 2  # each version's entry, once


async def test_r_po_4_concurrent_claims_have_exactly_one_winner(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async def live(_: str) -> bool:
        return True

    results = await asyncio.gather(
        *(
            claim(
                sessions,
                scope="po-open",
                key="p-1|acme|lake",
                owner_id=f"po-{i}",
                holder_is_live=live,
            )
            for i in range(10)
        )
    )
    winners = [r for r in results if r is None]
    assert len(winners) == 1
    holder = {r for r in results if r is not None}
    assert len(holder) == 1


# a scope store.claims.CLAIM_SCOPES describes (claim() refuses any other)
PO_OPEN = "po-open"


async def test_r_po_4_a_stale_claim_is_taken_over(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async def live(_: str) -> bool:
        return False

    assert (
        await claim(sessions, scope=PO_OPEN, key="k", owner_id="old", holder_is_live=live) is None
    )
    assert (
        await claim(sessions, scope=PO_OPEN, key="k", owner_id="new", holder_is_live=live) is None
    )

    async def alive(_: str) -> bool:
        return True

    assert (
        await claim(sessions, scope=PO_OPEN, key="k", owner_id="third", holder_is_live=alive)
        == "new"
    )


async def test_r_po_4_a_fresh_claim_counts_as_live_until_its_grace_runs_out(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """Between a claim and its workflow's start the holder is invisible; `claimed_within` keeps
    it from being taken over as stale. A takeover starts a grace of its own."""
    from datetime import timedelta

    from sqlmodel import update

    from store.claims import claimed_within
    from store.models import Claim

    async def unknown(_: str) -> bool:
        return False

    assert (
        await claim(sessions, scope=PO_OPEN, key="k", owner_id="a", holder_is_live=unknown) is None
    )
    assert await claimed_within(
        sessions, scope=PO_OPEN, key="k", holder="a", grace=timedelta(seconds=60)
    )
    assert not await claimed_within(
        sessions, scope=PO_OPEN, key="k", holder="b", grace=timedelta(seconds=60)
    )
    async with sessions() as session, session.begin():  # the claim is now an hour old
        await session.exec(update(Claim).values(created_at=datetime.now(UTC) - timedelta(hours=1)))
    assert not await claimed_within(
        sessions, scope=PO_OPEN, key="k", holder="a", grace=timedelta(seconds=60)
    )
    assert (
        await claim(sessions, scope=PO_OPEN, key="k", owner_id="b", holder_is_live=unknown) is None
    )
    assert await claimed_within(
        sessions, scope=PO_OPEN, key="k", holder="b", grace=timedelta(seconds=60)
    )


async def test_r_x_6_a_write_from_another_run_is_refused_and_counted(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """R-X-6: a second run under a used id (the expired-invitation case) used to write version 1
    again and be dropped without a word; now it raises and is counted, and writes nothing."""

    def counted() -> float:
        return float(READ_MODEL_CONFLICTS.labels(process="opportunity")._value.get())

    first = transition(1, "in_review").model_copy(update={"origin_run_id": "run-a"})
    async with transaction(sessions) as session:
        await apply_transition(session, first)
    # the same run goes on, also after continue-as-new (same first run id, higher version)
    later = transition(2, "approved").model_copy(update={"origin_run_id": "run-a"})
    async with transaction(sessions) as session:
        await apply_transition(session, later)
    before = counted()
    other = transition(1, "in_review").model_copy(update={"origin_run_id": "run-b"})
    with pytest.raises(ReadModelConflict) as refused:
        async with transaction(sessions) as session:
            await apply_transition(session, other)
    assert refused.value.owner == "run-a" and refused.value.writer == "run-b"
    assert counted() == before + 1
    async with sessions() as session:
        row = await session.get(ProcessRow, "po-1")
    assert row is not None and row.version == 2 and row.origin_run_id == "run-a"
    assert await count(sessions, AuditEvent) == 2  # nothing of run-b's transition was written
    assert await count(sessions, OutboxMessage) == 2


async def test_r_x_6_rows_from_before_run_ids_are_adopted_not_refused(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """A transition recorded before `origin_run_id` existed (None) is not checked; the next
    transition that names its run adopts the row."""
    async with transaction(sessions) as session:
        await apply_transition(session, transition(1, "in_review"))
    named = transition(2, "approved").model_copy(update={"origin_run_id": "run-a"})
    async with transaction(sessions) as session:
        await apply_transition(session, named)
    async with sessions() as session:
        row = await session.get(ProcessRow, "po-1")
    assert row is not None and row.version == 2 and row.origin_run_id == "run-a"
