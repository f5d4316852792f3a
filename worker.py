"""The worker: every workflow and activity of partnerflow on one task queue.

Run `python worker.py`. SIGTERM or SIGINT drains: no new tasks are polled, running activities
get `graceful_shutdown_timeout` to finish, then the process exits.
"""

from __future__ import annotations

import asyncio
import compileall
import logging
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import Runtime
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

import workflows
from activities.accounts import AccountActivities
from activities.incentives import IncentiveActivities
from activities.opportunity_claims import OpportunityClaimActivities
from activities.outbox import OutboxSender
from activities.read_model import ReadModelActivities
from activities.webhooks import WebhookSender
from config import Settings, get_settings
from store.db import create_engine, session_factory
from telemetry import configure_logging, otlp_tracer_provider, tracing_interceptors, worker_runtime
from workflows import ALL_WORKFLOWS

log = logging.getLogger("partnerflow.worker")

# Our pure domain modules and the libraries they use are loaded once, outside the sandbox:
# re-importing pydantic models per workflow run costs time and memory for nothing.
PASSTHROUGH_MODULES = (
    "domain",
    "activities",
    "pydantic",
    "pydantic_core",
    "isodate",
    "sqlalchemy",
    "sqlmodel",
)


def all_activities(sessions: async_sessionmaker[AsyncSession]) -> list[Callable[..., Any]]:
    """Every activity, bound to its dependencies. A process that adds activities lists them here."""
    store = ReadModelActivities(sessions)
    accounts = AccountActivities(sessions)
    incentives = IncentiveActivities(sessions)
    po_claims = OpportunityClaimActivities(sessions)
    return [
        store.apply_transition,
        store.assess_opportunity,
        store.find_approved_duplicate,
        accounts.associate_account,
        accounts.dissociate_account,
        incentives.payment_eligibility,
        po_claims.claim_approval,
        po_claims.move_open_claim,
        po_claims.release_approval,
    ]


def compile_workflow_modules() -> bool:
    """Write the bytecode (`__pycache__/*.pyc`) of the `workflows` package where it is missing or
    older than its source; True when every module has current bytecode afterwards.

    The sandbox re-imports a workflow's module for every new run and for every replay of an
    evicted one; without bytecode each import compiles the source again, about half of creating
    a workflow instance (docs/performance.md, issue 11). Python writes no bytecode itself here
    (`PYTHONDONTWRITEBYTECODE=1` in this environment and in the image), but still reads it. A
    read-only tree (the image, compiled at build) is left as it is: nothing is raised.
    """
    return bool(compileall.compile_dir(Path(workflows.__path__[0]), quiet=2))


def workflow_runner() -> SandboxedWorkflowRunner:
    """The sandbox every worker and replayer uses, so a replay runs what production runs.

    Its workflow modules get their bytecode first (`compile_workflow_modules`)."""
    if not compile_workflow_modules():
        log.warning("workflow modules have no current bytecode: each workflow run compiles them")
    return SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules(*PASSTHROUGH_MODULES)
    )


async def connect(
    settings: Settings,
    *,
    tracer_provider: TracerProvider | None = None,
    runtime: Runtime | None = None,
) -> Client:
    """A client; with a tracer provider, its calls and the workers built on it are traced."""
    return await Client.connect(
        settings.resolved_temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=pydantic_data_converter,
        interceptors=tracing_interceptors(tracer_provider),
        runtime=runtime,
    )


@asynccontextmanager
async def running_worker(
    settings: Settings,
    client: Client,
    *,
    task_queue: str | None = None,
    send_notifications: bool = True,
    send_webhooks: bool = True,
) -> AsyncIterator[Worker]:
    """A started worker with its activities and (optionally) the outbox and webhook senders."""
    engine = create_engine(settings.resolved_database_url, pool_size=settings.database_pool_size)
    sessions = session_factory(engine)
    worker = Worker(
        client,
        task_queue=task_queue or settings.task_queue,
        workflows=ALL_WORKFLOWS,
        activities=all_activities(sessions),
        workflow_runner=workflow_runner(),
        graceful_shutdown_timeout=timedelta(seconds=10),
        max_cached_workflows=settings.worker_max_cached_workflows,
        max_concurrent_workflow_tasks=settings.worker_max_concurrent_workflow_tasks,
        max_concurrent_activities=settings.worker_max_concurrent_activities,
        max_concurrent_local_activities=settings.worker_max_concurrent_local_activities,
    )
    stop_sender = asyncio.Event()
    sender = OutboxSender.from_settings(sessions, settings)
    sender_task = asyncio.create_task(sender.run(stop_sender)) if send_notifications else None
    webhooks = WebhookSender.from_settings(sessions, settings)
    webhook_task = asyncio.create_task(webhooks.run(stop_sender)) if send_webhooks else None
    run_task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        stop_sender.set()
        await worker.shutdown()
        await asyncio.gather(run_task, return_exceptions=True)
        if sender_task is not None:
            await sender_task
        if webhook_task is not None:
            await webhook_task
        await engine.dispose()


async def serve(settings: Settings) -> None:
    client = await connect(
        settings,
        tracer_provider=otlp_tracer_provider(settings, "partnerflow-worker"),
        runtime=worker_runtime(settings),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with running_worker(settings, client):
        log.info("worker polling %s on %s", settings.task_queue, settings.resolved_temporal_address)
        await stop.wait()
        log.info("shutting down: draining running activities")


def main() -> None:
    configure_logging()
    asyncio.run(serve(get_settings()))


if __name__ == "__main__":
    main()
