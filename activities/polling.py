"""What the worker's outbox senders share: backoff, leasing due rows, and the polling loop.

Used by the e-mail outbox (`activities.outbox`) and the webhook sender (`activities.webhooks`).
A "due row" has `id`, `status` and `next_attempt_at`; a sender leases rows by moving their
`next_attempt_at` ahead, so no other sender sees them as due until the lease runs out.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from store.db import transaction

MAX_BACKOFF_EXPONENT = 32  # 2**32 s is past any sane cap; keeps the float arithmetic finite


def exponential_backoff(
    attempts: int,
    *,
    base: float,
    cap: float,
    jitter: float = 0.0,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait after the `attempts`-th failure (1, 2, ...): `base` doubling, capped at
    `cap`, then scaled by a random factor in [1 - jitter, 1] so retries of many rows spread out."""
    exponent = min(max(attempts - 1, 0), MAX_BACKOFF_EXPONENT)
    delay: float = min(cap, base * 2**exponent)
    return delay * (1 - jitter * rand())


async def lease_due(
    sessions: async_sessionmaker[AsyncSession],
    model: Any,
    *,
    now: datetime,
    batch_size: int,
    lease_seconds: float,
    returning: Sequence[Any],
    where: Sequence[Any] = (),
) -> list[Any]:
    """Lease up to `batch_size` pending rows of `model` due at `now`, oldest first; return
    (id, *returning) of each, in id order.

    On PostgreSQL the rows are chosen ``FOR UPDATE SKIP LOCKED``: concurrent senders never lease
    the same row and never wait for each other. SQLite serialises writers and the lease is one
    ``UPDATE ... RETURNING``, so it is atomic there too.
    """
    due = (
        select(model.id)
        .where(model.status == "pending")
        .where(col(model.next_attempt_at) <= now)
        .where(*where)
        .order_by(col(model.id))
        .limit(batch_size)
        .with_for_update(skip_locked=True)  # PostgreSQL; SQLite renders no locking clause
    )
    lease = (
        sa.update(model)
        .where(col(model.id).in_(due))
        .values(next_attempt_at=now + timedelta(seconds=lease_seconds))
        .returning(col(model.id), *returning)
        .execution_options(synchronize_session=False)
    )
    async with transaction(sessions) as session:
        rows = (await session.exec(lease)).all()
    # RETURNING keeps no order; hand them back in the order they were written.
    return sorted((tuple(row) for row in rows), key=lambda r: r[0])


async def poll_until_stopped(
    one_pass: Callable[[], Awaitable[int]],
    stop: asyncio.Event,
    *,
    log: logging.Logger,
    what: str,
    batch_size: int,
    poll_interval: float,
    base_backoff: float,
    max_backoff: float,
) -> None:
    """Run `one_pass` (which returns how many rows it took up) until `stop` is set.

    A full batch goes again at once; otherwise the loop waits `poll_interval`. A failing pass
    (database down, a bug) is logged and retried with backoff; it never ends the loop.
    """
    failures = 0
    while not stop.is_set():
        taken = 0
        try:
            taken = await one_pass()
            failures = 0
        except Exception:
            failures += 1
            log.exception("%s pass failed (%d in a row)", what, failures)
        if taken >= batch_size:
            continue  # a full batch: more are probably due, go again at once
        delay = poll_interval
        if failures:
            delay = exponential_backoff(
                failures, base=max(poll_interval, base_backoff), cap=max_backoff
            )
        try:
            await asyncio.wait_for(stop.wait(), timeout=delay)
        except TimeoutError:
            pass
