"""Business keys held by one process at a time, taken atomically (a primary-key insert).

Used where a rule makes submissions exclusive, e.g. one open PO per partner, customer and
project. A stale claim (its process closed, or never started) is taken over.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, update
from sqlmodel.ext.asyncio.session import AsyncSession

from store.models import Claim


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
                    .values(owner_id=owner_id)
                )
            if result.rowcount == 1:
                return None
            continue  # somebody else took it over first: look again
        return held.owner_id
    return owner_id  # pragma: no cover - three lost races in a row
