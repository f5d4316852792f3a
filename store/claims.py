"""Business keys held by one process at a time, taken atomically (a primary-key insert).

Used where a rule makes submissions exclusive, e.g. one open PO per partner, customer and
project. A stale claim (its process closed, or never started) is taken over.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, update
from sqlmodel.ext.asyncio.session import AsyncSession

from store.db import as_utc
from store.models import Claim, utcnow


async def claim(
    sessions: async_sessionmaker[AsyncSession],
    *,
    scope: str,
    key: str,
    owner_id: str,
    holder_is_live: Callable[[str], Awaitable[bool]],
) -> str | None:
    """Take `key` for `owner_id`. Returns None on success, else the id of the live holder."""
    for _ in range(3):
        try:
            async with sessions() as session, session.begin():
                session.add(Claim(scope=scope, key=key, owner_id=owner_id))
            return None
        except IntegrityError:
            pass
        async with sessions() as session:
            held = await session.get(Claim, (scope, key))
        if held is None:
            continue  # released meanwhile: try again
        if held.owner_id == owner_id or not await holder_is_live(held.owner_id):
            async with sessions() as session, session.begin():
                result = await session.exec(
                    update(Claim)
                    .where(
                        col(Claim.scope) == scope,
                        col(Claim.key) == key,
                        col(Claim.owner_id) == held.owner_id,
                    )
                    .values(owner_id=owner_id, created_at=utcnow())
                )
            if result.rowcount == 1:
                return None
            continue  # somebody else took it over first: look again
        return held.owner_id
    return owner_id  # pragma: no cover - three lost races in a row


async def claimed_within(
    sessions: async_sessionmaker[AsyncSession],
    *,
    scope: str,
    key: str,
    holder: str,
    grace: timedelta,
) -> bool:
    """Whether `holder` took `key` less than `grace` ago. A caller's `holder_is_live` falls back
    on it when the holder's process cannot be seen yet: between a claim and the start of its
    workflow, the holder is live, not stale."""
    async with sessions() as session:
        row = await session.get(Claim, (scope, key))
    if row is None or row.owner_id != holder:
        return False
    taken = as_utc(row.created_at)
    return taken is not None and datetime.now(UTC) - taken < grace
