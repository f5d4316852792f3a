"""Liveness, readiness (Temporal and the database reachable) and Prometheus metrics."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from api.errors import envelope

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "a dependency is unreachable"}})
async def readyz(request: Request) -> Any:
    problems: dict[str, str] = {}
    try:
        async with asyncio.timeout(3):
            async with request.app.state.sessions() as session:
                await session.exec(text("SELECT 1"))
    except Exception as exc:
        problems["database"] = type(exc).__name__
    try:
        async with asyncio.timeout(3):
            await request.app.state.temporal.service_client.check_health()
    except Exception as exc:
        problems["temporal"] = type(exc).__name__
    if problems:
        return envelope("PF.UNAVAILABLE", "not ready", problems)
    return {"status": "ready"}


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Request metrics of this process, then the business gauges read from the read model."""
    business = request.app.state.business_metrics
    await business.refresh()
    body = generate_latest() + generate_latest(business.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
