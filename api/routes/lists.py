"""Lists of every process resource: GET /v1/{resource} (DESIGN §3), one route per resource, all
made by `list_route` from the table `RESOURCES`.

Rows are the process's public view plus `summary`; newest update first, keyset-paginated
(`{"items": [...], "next_cursor": ...}`); visibility as the single reads (R-X-8, in
`store.lists.processes_visible_to`).
"""

# No `from __future__ import annotations` here: the routes' parameter types are built at run time
# (each resource's status enum, its row model) and FastAPI must see them as objects.

import binascii
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from fastapi import Query
from pydantic import BaseModel, create_model

from api.auth import CurrentUser
from api.deps import SessionDep
from api.errors import ApiError
from api.frame import command_router
from domain.certification import CertificationView
from domain.incentives import IncentiveView
from domain.invitations import CustomerInvitationPublic, DissociationView, InvitationView
from domain.opportunity import OpportunityView
from domain.principal import Principal
from domain.resellers import ResellerApplicationView
from domain.summaries import RESOURCE_OF_PROCESS, process_summary
from store.lists import BadCursor, ListFilters, is_staff_caller, list_processes
from store.models import ProcessRow

router = command_router(prefix="", tags=[])


@dataclass(frozen=True)
class Resource:
    """A process as the API names it: `/v1/<path>`, the read model's `process`, its public view."""

    process: str
    view: type[BaseModel]
    tag: str  # the OpenAPI tag of the resource's other routes

    @property
    def path(self) -> str:
        return RESOURCE_OF_PROCESS[self.process]

    @property
    def status_enum(self) -> type[StrEnum]:
        annotation = self.view.model_fields["status"].annotation
        assert isinstance(annotation, type) and issubclass(annotation, StrEnum)
        return annotation


RESOURCES: tuple[Resource, ...] = (
    Resource("opportunity", OpportunityView, "opportunities"),
    Resource("certification", CertificationView, "certifications"),
    Resource("incentive", IncentiveView, "incentives"),
    Resource("invitation", InvitationView, "invitations"),
    Resource("customer_invitation", CustomerInvitationPublic, "customers"),
    Resource("dissociation", DissociationView, "customers"),
    Resource("reseller_application", ResellerApplicationView, "resellers"),
)
RESOURCE_BY_PATH = {r.path: r for r in RESOURCES}


def list_row(row: ProcessRow) -> dict[str, Any]:
    """A list item: the process's public view plus `summary` (one line: who, what, how much)."""
    return {**row.view, "summary": row.summary or process_summary(row.process, row.view)}


def check_partner_filter(principal: Principal, partner_id: str | None) -> None:
    """R-X-8: only staff name any partner; a partner's user may name its own partner only."""
    if partner_id is None or is_staff_caller(principal) or partner_id == principal.partner_id:
        return
    raise ApiError(
        "PF.FORBIDDEN",
        "partner_id filters are for staff; a partner's users see their own partner's items only",
        {"partner_id": partner_id},
    )


def utc(moment: datetime | None) -> datetime | None:
    """R-X-7: a time sent with an offset is converted to UTC; one without is taken as UTC."""
    if moment is None:
        return None
    try:
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except OverflowError as exc:
        raise ApiError(
            "PF.VALIDATION_FAILED",
            "the time is out of range once converted to UTC",
            {"value": moment.isoformat()},
        ) from exc


def list_route(resource: Resource) -> None:
    """Register GET /v1/<resource.path> on `router`."""
    noun = resource.path.replace("-", " ")
    row_model = create_model(
        f"{resource.view.__name__.removesuffix('View')}ListItem",
        __base__=resource.view,
        summary=(str, ...),
    )
    page_model = create_model(
        f"{resource.view.__name__.removesuffix('View')}Page",
        items=(list[row_model], ...),
        next_cursor=(str | None, None),
    )
    status_type = resource.status_enum

    async def list_items(
        principal: CurrentUser,
        session: SessionDep,
        status: Annotated[status_type | None, Query()] = None,  # type: ignore[valid-type]
        updated_after: Annotated[
            datetime | None,
            Query(description="ISO 8601; rows updated strictly after it (converted to UTC)"),
        ] = None,
        partner_id: Annotated[
            str | None,
            Query(min_length=1, max_length=64, description="staff: one partner's items"),
        ] = None,
        q: Annotated[
            str | None,
            Query(min_length=1, max_length=200, description="text in the summary, names, ids"),
        ] = None,
        cursor: Annotated[str | None, Query(max_length=1000)] = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
    ) -> Any:
        check_partner_filter(principal, partner_id)
        try:
            rows, next_cursor = await list_processes(
                session,
                principal,
                process=resource.process,
                filters=ListFilters(
                    status=str(status) if status is not None else None,
                    updated_after=utc(updated_after),
                    partner_id=partner_id,
                    q=q,
                ),
                cursor=cursor,
                limit=limit,
            )
        except (BadCursor, binascii.Error, json.JSONDecodeError) as exc:
            raise ApiError("PF.BAD_REQUEST", "the cursor is not valid") from exc
        return {"items": [list_row(r) for r in rows], "next_cursor": next_cursor}

    list_items.__doc__ = (
        f"The {noun} the caller may see (R-X-8), newest update first; filters `status`, "
        "`updated_after`, `partner_id` (staff), `q`; keyset-paginated with `cursor`. A filter "
        'sent empty (`?q=`) is 422, never "no filter": omit it instead.'
    )
    router.add_api_route(
        f"/v1/{resource.path}",
        list_items,
        methods=["GET"],
        name=f"list_{resource.path.replace('-', '_')}",
        tags=[resource.tag],
        response_model=page_model,
    )


for _resource in RESOURCES:
    list_route(_resource)
