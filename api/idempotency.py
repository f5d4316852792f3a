"""R-X-6: a POST repeated with the same Idempotency-Key gets the first answer.

The key is scoped to the caller, method and path. The first successful answer is stored with
a hash of the request body; a repeat with the same body replays it, a repeat with another body
is refused (422, PF.IDEMPOTENCY_KEY_REUSED). Actions behind it are idempotent themselves
(workflow ids and update ids derive from the key), so two concurrent first attempts converge.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Header, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from api.errors import ApiError
from domain.principal import Principal
from store.models import IdempotencyRecord

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        description=(
            "Repeat a POST with the same key to get the first answer, never a second effect."
        ),
    ),
]


def _scope(principal: Principal, request: Request, key: str) -> str:
    raw = f"{principal.sub}\0{request.method}\0{request.url.path}\0{key}"
    return hashlib.sha256(raw.encode()).hexdigest()


def body_hash(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


async def idempotent(
    *,
    sessions: async_sessionmaker[AsyncSession],
    request: Request,
    principal: Principal,
    key: str | None,
    body: Any,
    status_code: int,
    action: Callable[[], Awaitable[dict[str, Any]]],
) -> JSONResponse:
    if key is None:
        return JSONResponse(status_code=status_code, content=await action())
    scope = _scope(principal, request, key)
    digest = body_hash(body)
    async with sessions() as session:
        stored = await session.get(IdempotencyRecord, scope)
    if stored is not None:
        return _replay(stored, digest)
    content = await action()
    try:
        async with sessions() as session, session.begin():
            session.add(
                IdempotencyRecord(
                    scope=scope, request_hash=digest, status_code=status_code, response=content
                )
            )
    except IntegrityError:
        # a concurrent twin stored its answer first: that one is the first answer
        async with sessions() as session:
            stored = await session.get(IdempotencyRecord, scope)
        if stored is not None:
            return _replay(stored, digest)
    return JSONResponse(status_code=status_code, content=content)


def _replay(stored: IdempotencyRecord, digest: str) -> JSONResponse:
    if stored.request_hash != digest:
        raise ApiError(
            "PF.IDEMPOTENCY_KEY_REUSED",
            "this Idempotency-Key was used with a different request body",
        )
    return JSONResponse(
        status_code=stored.status_code,
        content=stored.response,
        headers={"Idempotent-Replayed": "true"},
    )
