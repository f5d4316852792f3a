"""Activities that read and write the store: the read-model projection and PO look-ups.

Built once in `worker.py` with a session factory. Every write is idempotent (see
`store.readmodel.apply_transition`), so Temporal's retries never write twice.
"""

from __future__ import annotations

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity

from domain.opportunity import DuplicateQuery, RouteRequest
from domain.projection import Transition
from store import readmodel
from store.db import transaction


class Assessment(BaseModel):
    """What the PO review needs from the store at submission: route and flags (R-PO-2/3/4/8)."""

    pdm: str | None
    psm: str | None
    offering_unmatched: bool
    duplicate_of: str | None


class AssessRequest(BaseModel):
    route: RouteRequest
    duplicates: DuplicateQuery


class ReadModelActivities:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    @activity.defn
    async def apply_transition(self, transition: Transition) -> None:
        async with transaction(self.sessions) as session:
            await readmodel.apply_transition(session, transition)

    @activity.defn
    async def assess_opportunity(self, req: AssessRequest) -> Assessment:
        async with self.sessions() as session:
            route = await readmodel.route(session, req.route)
            duplicate = await readmodel.find_duplicate(session, req.duplicates)
        return Assessment(
            pdm=route.pdm,
            psm=route.psm,
            offering_unmatched=route.offering_unmatched,
            duplicate_of=duplicate,
        )

    @activity.defn
    async def find_approved_duplicate(self, query: DuplicateQuery) -> str | None:
        async with self.sessions() as session:
            return await readmodel.find_duplicate(
                session, query.model_copy(update={"approved_only": True})
            )
