"""Named dependencies: the settings, a database session, the Temporal client, and the route
frame's two: `Idem` (the request's Idempotency-Key, R-X-6) and `Processes` (the gateway to
process workflows). A POST/PATCH handler in the frame takes `CurrentUser`, its body and
`Processes` (or `Idem` when it needs ids without Temporal)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client

from api.idempotency import IdempotencyGuard
from api.processes import ProcessGateway
from config import Settings


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_temporal(request: Request) -> Client:
    client: Client = request.app.state.temporal
    return client


def get_sessions(request: Request) -> async_sessionmaker[AsyncSession]:
    sessions: async_sessionmaker[AsyncSession] = request.app.state.sessions
    return sessions


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with get_sessions(request)() as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
TemporalDep = Annotated[Client, Depends(get_temporal)]
SessionDep = Annotated[AsyncSession, Depends(get_session)]
SessionsDep = Annotated[async_sessionmaker[AsyncSession], Depends(get_sessions)]


def get_idempotency(request: Request) -> IdempotencyGuard:
    """The request's guard, set by `api.frame.CommandRoute`; keyless outside of one."""
    guard = getattr(request.state, "idempotency", None)
    return guard if isinstance(guard, IdempotencyGuard) else IdempotencyGuard()


Idem = Annotated[IdempotencyGuard, Depends(get_idempotency)]


# --- the route frame (api/frame.py): idempotency and the process gateway ------------------------


def get_processes(
    temporal: TemporalDep,
    settings: SettingsDep,
    sessions: SessionsDep,
    idem: Idem,
) -> ProcessGateway:
    return ProcessGateway(temporal=temporal, settings=settings, sessions=sessions, idem=idem)


Processes = Annotated[ProcessGateway, Depends(get_processes)]
