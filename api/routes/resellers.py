"""Reseller cooperation applications (R-RES-1): apply, read, history.

The distributor's review is a `res.review` task: its users find it in `GET /v1/tasks` and decide
with `POST /v1/tasks/{id}/complete` or, many at once, `POST /v1/tasks/bulk-complete`.
"""

from __future__ import annotations

from typing import Any

from api import access
from api.auth import CurrentUser, require_partner_admin
from api.claims import claim_or_refuse
from api.deps import Processes, SessionsDep
from api.errors import ApiError
from api.frame import command_router
from api.routes.invitations import Sessions, process_row, registered_partner
from api.routes.opportunities import History, read_history
from domain.principal import Principal
from domain.resellers import (
    DISTRIBUTOR_KIND,
    RESELLER_KIND,
    ResellerApplicationCreate,
    ResellerApplicationInput,
    ResellerApplicationView,
    claim_key,
)
from store.accounts import partner_contact
from store.models import Partner, ProcessRow
from workflows.reseller import ResellerApplication

router = command_router(prefix="/v1/reseller-applications", tags=["resellers"])


async def load_application(sessions: Sessions, app_id: str, principal: Principal) -> ProcessRow:
    row = await process_row(sessions, "reseller_application", app_id, "reseller application")
    return access.check_may_see(principal, row, "reseller application")


@router.post("", status_code=201, response_model=ResellerApplicationView)
async def apply_to_distributor(
    body: ResellerApplicationCreate, principal: CurrentUser, processes: Processes
) -> ResellerApplicationView:
    """R-RES-1: a reseller's admin applies to cooperate with a distributor. One live application
    per reseller and distributor (409 PF.APPLICATION_EXISTS)."""
    reseller_id = require_partner_admin(principal)
    sessions = processes.sessions
    reseller = await registered_partner(sessions, reseller_id)
    if reseller.kind != RESELLER_KIND:
        raise ApiError(
            "PF.NOT_A_RESELLER",
            f"partner {reseller_id} is a {reseller.kind}; only resellers apply to distributors",
        )
    async with sessions() as session:
        distributor = await session.get(Partner, body.distributor_id)
        contact = await partner_contact(session, body.distributor_id)
    if distributor is None or distributor.kind != DISTRIBUTOR_KIND:
        raise ApiError(
            "PF.DISTRIBUTOR_NOT_FOUND",
            f"there is no distributor {body.distributor_id}",
            {"distributor_id": body.distributor_id},
        )
    app_id = await processes.new_id("res")
    await claim_or_refuse(
        processes,
        scope="res-coop",
        key=claim_key(reseller_id, body.distributor_id),
        owner_id=app_id,
        error_code="PF.APPLICATION_EXISTS",
        message=f"{reseller_id} already has an application to {body.distributor_id} in review "
        "or approved",
    )
    return await processes.start(
        ResellerApplication.run,
        ResellerApplicationInput(
            application_id=app_id,
            reseller_id=reseller_id,
            reseller_name=reseller.name,
            submitted_by=principal.sub,
            distributor_id=body.distributor_id,
            distributor_contact=contact,
            application=body,
        ),
        workflow_id=app_id,
        process="reseller_application",
        partner_id=reseller_id,
        summary=f"cooperation application of reseller {reseller_id} to {body.distributor_id}",
        view=ResellerApplicationView,
    )


@router.get("/{app_id}", response_model=ResellerApplicationView)
async def get_application(app_id: str, principal: CurrentUser, sessions: SessionsDep) -> Any:
    row = await load_application(sessions, app_id, principal)
    return row.view


@router.get("/{app_id}/history", response_model=History)
async def application_history(app_id: str, principal: CurrentUser, sessions: SessionsDep) -> Any:
    await load_application(sessions, app_id, principal)
    async with sessions() as session:
        return await read_history(session, app_id)
