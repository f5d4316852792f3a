"""The FastAPI application: one Temporal client and one engine per process, made in `lifespan`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from opentelemetry.sdk.trace import TracerProvider

from api.business_metrics import BusinessMetrics
from api.errors import envelope, install_error_handlers
from api.middleware import BodyTooLarge, GuardMiddleware, RequestIdMiddleware
from api.openapi import install_openapi, operation_id
from api.routes import (
    admin,
    certifications,
    comments,
    customers,
    events,
    health,
    incentives,
    invitations,
    lists,
    opportunities,
    resellers,
    tasks,
    webhooks,
)
from config import Settings, get_settings
from store.db import create_engine, session_factory
from telemetry import configure_logging, instrument_api, otlp_tracer_provider
from worker import connect

DESCRIPTION = """
partnerflow starts and drives the partner program's long-running processes (Temporal workflows).

* Auth: `Authorization: Bearer <JWT>` (HS256). Claims: `sub`, `roles`, `partner_id`.
* Errors: `{"error_code": "PF.xxxx", "error_msg": "...", "details": ...}`.
* POST and PATCH accept `Idempotency-Key` (per caller, method and path; kept 24 h): the same
  request again returns the first answer byte for byte; another request under the key is 422;
  a repeat while the first is in flight is 409.
"""


def create_app(
    settings: Settings | None = None, *, tracer_provider: TracerProvider | None = None
) -> FastAPI:
    settings = settings or get_settings()
    # Tracing: the given provider (tests), else OTLP when PARTNERFLOW_OTLP_ENDPOINT is set.
    tracing = tracer_provider or otlp_tracer_provider(settings, "partnerflow-api")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(
            settings.resolved_database_url, pool_size=settings.database_pool_size
        )
        app.state.settings = settings
        app.state.engine = engine
        app.state.sessions = session_factory(engine)
        app.state.temporal = await connect(settings, tracer_provider=tracing)
        app.state.business_metrics = BusinessMetrics(app.state.sessions)
        try:
            yield
        finally:
            await engine.dispose()

    app = FastAPI(
        title="partnerflow",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
        # `/v1/opportunities/` is no route: a 404 in the envelope, not an empty 307 to follow
        redirect_slashes=False,
    )
    install_error_handlers(app)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(_: Request, __: BodyTooLarge) -> JSONResponse:
        return envelope(
            "PF.PAYLOAD_TOO_LARGE", f"the body is larger than {settings.max_body_bytes} bytes"
        )

    app.add_middleware(
        GuardMiddleware,
        max_body_bytes=settings.max_body_bytes,
        rate_limit=settings.rate_limit,
        jwt_secret=settings.jwt_secret,
        jwt_leeway_seconds=settings.jwt_leeway_seconds,
    )
    app.add_middleware(RequestIdMiddleware)  # outermost: refusals carry a request id too
    if tracing is not None:
        instrument_api(app, tracing)
    for module in (
        health,
        admin,
        opportunities,
        certifications,
        tasks,
        invitations,
        customers,
        resellers,
        incentives,
        lists,
        comments,
        events,
        webhooks,
    ):
        app.include_router(module.router)
    install_openapi(app)
    return app


def __getattr__(name: str) -> FastAPI:
    # `uvicorn api.main:app` builds the app on first access, so importing this module (tests,
    # tools) reads no settings.
    if name == "app":
        configure_logging()  # the served process logs JSON; tests that call create_app do not
        return create_app()
    raise AttributeError(name)
