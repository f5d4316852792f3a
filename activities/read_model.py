"""Activities that read and write the store: the read-model projection and PO look-ups.

Built once in `worker.py` with a session factory. Every write is idempotent (see
`store.readmodel.apply_transition`), so Temporal's retries never write twice.
"""

from __future__ import annotations

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity
from temporalio.exceptions import ApplicationError

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
        """Write one transition. A write from a run that does not own the row (another run
        reused the id) fails the activity, non-retryable, PF.READ_MODEL_CONFLICT, and is counted
        (`partnerflow_read_model_conflicts`, also on the worker's SDK metrics endpoint)."""
        try:
            async with transaction(self.sessions) as session:
                await readmodel.apply_transition(session, transition)
        except readmodel.ReadModelConflict as exc:
            activity.metric_meter().create_counter(
                "partnerflow_read_model_conflicts",
                "read-model writes refused: the row belongs to another workflow run",
            ).add(1, {"process": exc.process})
            raise ApplicationError(
                str(exc),
                {"id": exc.process_id, "owner_run": exc.owner, "writer_run": exc.writer},
                type="PF.READ_MODEL_CONFLICT",
                non_retryable=True,
            ) from exc

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
