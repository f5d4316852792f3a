"""Comment threads on every process: POST/GET /v1/{resource}/{id}/comments (R-X-3, R-X-8).

Who sees a process (`api.access.may_see_process`, as its single read) reads and writes its
comments. A comment on a running process is an `add_comment` Update: the workflow commits it as
a `commented` audit entry, in order with everything else it records. On a process whose workflow
has closed, the comment is written straight to the audit trail after the process's last entry
(`store.comments.add_comment_to_closed_process`): a thread stays open after the decision, and
the closed process's state is untouched. Either way the comment shows in GET …/history.
"""

# No `from __future__ import annotations`: the routes are built per resource at import time.

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field

from api import access
from api.auth import CurrentUser
from api.deps import Processes, SessionsDep
from api.errors import ApiError
from api.frame import command_router
from api.processes import load_process
from api.routes.lists import RESOURCES, Resource
from domain.principal import Principal
from domain.tasks import AddComment
from domain.values import UtcDateTime
from store.comments import add_comment_to_closed_process, list_comments
from store.db import as_utc
from store.lists import BadCursor
from store.models import ProcessRow
from workflows.human_task import ProcessWorkflow

router = command_router(prefix="", tags=[])


class CommentCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"body": "The customer confirmed the tender date."}]},
    )
    body: str = Field(min_length=1, max_length=4000)


class CommentPublic(BaseModel):
    at: UtcDateTime
    actor: str
    body: str


class CommentPage(BaseModel):
    items: list[CommentPublic]
    next_cursor: str | None = None


async def visible_process(
    sessions: Any, resource: Resource, item_id: str, principal: Principal
) -> ProcessRow:
    """The process row (404 if none of that resource), 403 unless the caller may see it."""
    noun = resource.process.replace("_", " ")
    row = await load_process(sessions, process=resource.process, item_id=item_id, noun=noun)
    return access.check_may_see(principal, row, noun)


def comment_routes(resource: Resource) -> None:
    """Register POST and GET /v1/<resource.path>/{id}/comments on `router`."""
    path = f"/v1/{resource.path}/{{item_id}}/comments"
    name = resource.process

    async def add_comment(
        item_id: str, body: CommentCreate, principal: CurrentUser, processes: Processes
    ) -> Any:
        if not body.body.strip():
            raise ApiError("PF.VALIDATION_FAILED", "a comment needs some text")
        await visible_process(processes.sessions, resource, item_id, principal)
        try:
            entry = await processes.update_json(
                item_id,
                ProcessWorkflow.add_comment,
                AddComment(actor=principal, body=body.body),
                target=item_id,
                what=f"commenting on {item_id}",
            )
            return CommentPublic(at=entry["at"], actor=principal.sub, body=body.body)
        except ApiError as exc:
            # closed, or closed and already removed by the namespace's retention
            if exc.code not in ("PF.PROCESS_CLOSED", "PF.NOT_FOUND"):
                raise
        row = await add_comment_to_closed_process(
            processes.sessions,
            process_id=item_id,
            actor=principal.sub,
            body=body.body,
            at=datetime.now(UTC),
        )
        at = as_utc(row.at)
        assert at is not None
        return CommentPublic(at=at, actor=row.actor, body=body.body)

    async def get_comments(
        item_id: str,
        principal: CurrentUser,
        sessions: SessionsDep,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 50,
    ) -> Any:
        await visible_process(sessions, resource, item_id, principal)
        async with sessions() as session:
            try:
                rows, next_cursor = await list_comments(
                    session, item_id, cursor=cursor, limit=limit
                )
            except BadCursor as exc:
                raise ApiError("PF.BAD_REQUEST", str(exc)) from exc
        return CommentPage(
            items=[
                CommentPublic(at=as_utc(r.at) or r.at, actor=r.actor, body=r.comment or "")
                for r in rows
            ],
            next_cursor=next_cursor,
        )

    add_comment.__doc__ = (
        f"R-X-3: comment on a {name.replace('_', ' ')}; it shows in its history. Who may read "
        "it (R-X-8) may comment. 1..4000 characters. Idempotency-Key honoured (R-X-6)."
    )
    get_comments.__doc__ = f"The comments on a {name.replace('_', ' ')}, oldest first."
    router.add_api_route(
        path,
        add_comment,
        methods=["POST"],
        name=f"comment_on_{name}",
        status_code=201,
        tags=[resource.tag],
        response_model=CommentPublic,
    )
    router.add_api_route(
        path,
        get_comments,
        methods=["GET"],
        name=f"list_{name}_comments",
        tags=[resource.tag],
        response_model=CommentPage,
    )


for _resource in RESOURCES:
    comment_routes(_resource)
