"""Business gauges on `/metrics`: open tasks and overdue tasks by kind, SLA breaches by process.

Read from the read model when scraped, at most once per `ttl` seconds per API process, so any
number of scrapers costs a couple of small queries. Every task kind and process the worker
knows is reported, with 0 when it has nothing, so an alert can tell "none" from "no data".
Each API replica reports the same numbers: aggregate them with `max`, not `sum`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from store.ops import TaskCounts, sla_breaches_by_process, task_counts_by_kind
from workflows import ALL_WORKFLOWS

log = logging.getLogger("partnerflow.api.metrics")

DEFAULT_TTL_SECONDS = 5.0


def known_task_kinds() -> set[str]:
    return {kind for wf in ALL_WORKFLOWS for kind in getattr(wf, "task_kinds", {})}


def known_processes() -> set[str]:
    return {process for wf in ALL_WORKFLOWS if (process := getattr(wf, "process", None))}


@dataclass
class Snapshot:
    tasks: dict[str, TaskCounts] = field(default_factory=dict)
    breaches: dict[str, int] = field(default_factory=dict)


class BusinessMetrics:
    """A Prometheus collector over the read model, with its own registry."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], *, ttl: float = DEFAULT_TTL_SECONDS
    ) -> None:
        self.sessions = sessions
        self.ttl = ttl
        self.snapshot = Snapshot()
        self.taken_at = float("-inf")
        self.lock = asyncio.Lock()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    async def refresh(self) -> None:
        """Re-read the numbers if the last reading is older than `ttl`; on a database error keep
        the last ones (the request metrics must still be served)."""
        if time.monotonic() - self.taken_at < self.ttl:
            return
        async with self.lock:
            if time.monotonic() - self.taken_at < self.ttl:
                return  # another scrape refreshed while this one waited
            try:
                async with self.sessions() as session:
                    tasks = await task_counts_by_kind(session, datetime.now(UTC))
                    breaches = await sla_breaches_by_process(session)
                self.snapshot = Snapshot(tasks=tasks, breaches=breaches)
            except Exception:
                log.warning("business metrics: reading the read model failed", exc_info=True)
            self.taken_at = time.monotonic()

    def collect(self) -> Iterator[Metric]:
        snapshot = self.snapshot
        open_tasks = GaugeMetricFamily(
            "partnerflow_open_tasks", "Open human tasks, by kind", labels=["kind"]
        )
        overdue = GaugeMetricFamily(
            "partnerflow_overdue_tasks", "Open tasks past their due time, by kind", labels=["kind"]
        )
        for kind in sorted(known_task_kinds() | set(snapshot.tasks)):
            counts = snapshot.tasks.get(kind, TaskCounts(open=0, overdue=0))
            open_tasks.add_metric([kind], counts.open)
            overdue.add_metric([kind], counts.overdue)
        breaches = CounterMetricFamily(
            "partnerflow_sla_breaches",
            "Tasks escalated on an SLA breach since the start, by process",
            labels=["process"],
        )
        for process in sorted(known_processes() | set(snapshot.breaches)):
            breaches.add_metric([process], snapshot.breaches.get(process, 0))
        yield open_tasks
        yield overdue
        yield breaches
