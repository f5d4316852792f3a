"""`make bench`: the stack as `make run` starts it, driven over HTTP, against raw Temporal.

Sections: PO starts, decisions (loaded and unloaded), the raw ceiling on the same dev server,
the inbox at 100,000 tasks on SQLite and PostgreSQL, and cost growth with many open reviews.
Writes bench/results/<timestamp>.json, prints a table and rewrites the table in
docs/performance.md. `--smoke` is the tiny run the test suite uses so this cannot rot.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from temporalio.client import Client
from temporalio.service import RPCError

from api.auth import mint_token
from bench.raw_workflow import TrivialWorkflow
from config import Settings
from devstack import (
    LOCALHOST,
    load_demo_data,
    port_accepts_connections,
    temporal_dev_server_command,
)
from domain.summaries import process_summary, search_text
from domain.tasks import HumanTask
from store.db import sync_url
from store.migrate import upgrade
from store.models import ProcessRow, TaskRow

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
PERFORMANCE_DOC = ROOT / "docs" / "performance.md"
TABLE_BEGIN = "<!-- bench:table:begin -->"
TABLE_END = "<!-- bench:table:end -->"
POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
ALL_PASS = {"customer_real": True, "project_real": True, "partner_role": True, "offering": True}
RAW_TASK_QUEUE = "bench-raw"
READY_TIMEOUT = 90.0


# --- measuring ----------------------------------------------------------------------------------


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def summary(latencies: list[float], wall: float | None = None) -> dict[str, float]:
    """Milliseconds; `per_s` only for a loaded run (count over the wall time)."""
    result = {
        "count": float(len(latencies)),
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "mean_ms": (statistics.fmean(latencies) * 1000) if latencies else 0.0,
    }
    if wall is not None:
        result["per_s"] = len(latencies) / wall if wall > 0 else 0.0
        result["wall_s"] = wall
    return result


async def timed_all(
    count: int, concurrency: int, one: Callable[[int], Awaitable[None]]
) -> tuple[list[float], float]:
    """Run `one(i)` for i in range(count), at most `concurrency` at a time; per-call latencies."""
    semaphore = asyncio.Semaphore(concurrency)
    latencies: list[float] = [0.0] * count

    async def run(i: int) -> None:
        async with semaphore:
            began = time.perf_counter()
            await one(i)
            latencies[i] = time.perf_counter() - began

    began = time.perf_counter()
    await asyncio.gather(*(run(i) for i in range(count)))
    return latencies, time.perf_counter() - began


async def timed_sequential(count: int, one: Callable[[int], Awaitable[None]]) -> list[float]:
    latencies = []
    for i in range(count):
        began = time.perf_counter()
        await one(i)
        latencies.append(time.perf_counter() - began)
    return latencies


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and its descendants, from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


# --- the stack ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCALHOST, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class BenchStack:
    """Dev server (SQLite persistence), worker and API as separate processes, as `make run`."""

    data_dir: Path
    workers: int = 1
    worker_settings: dict[str, str] = field(default_factory=dict)
    settings: Settings = field(init=False)
    env: dict[str, str] = field(init=False)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.settings = Settings(
            data_dir=self.data_dir,
            temporal_port=free_port(),
            ui_port=free_port(),
            api_port=free_port(),
            worker_metrics_port=0,
        )
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("PARTNERFLOW_")}
        self.env = {
            **inherited,
            "PARTNERFLOW_DATA_DIR": str(self.data_dir),
            "PARTNERFLOW_TEMPORAL_PORT": str(self.settings.temporal_port),
            "PARTNERFLOW_UI_PORT": str(self.settings.ui_port),
            "PARTNERFLOW_API_PORT": str(self.settings.api_port),
            "PARTNERFLOW_WORKER_METRICS_PORT": "0",
            # The bench is one caller sending as fast as it can: R-X-1 would measure itself.
            "PARTNERFLOW_RATE_LIMIT__REQUESTS_PER_SECOND": "1000000",
            "PARTNERFLOW_RATE_LIMIT__BURST": "1000000",
            "PARTNERFLOW_UPDATE_TIMEOUT_SECONDS": "60",
            "PYTHONUNBUFFERED": "1",
            # --worker-setting NAME=VALUE: PARTNERFLOW_NAME for every process (e.g.
            # worker_max_cached_workflows=5000), so one setting can be measured at a time
            **{f"PARTNERFLOW_{k.upper()}": v for k, v in self.worker_settings.items()},
        }

    @property
    def temporal_address(self) -> str:
        return f"{LOCALHOST}:{self.settings.temporal_port}"

    def url(self, port: int | None = None) -> str:
        return f"http://{LOCALHOST}:{port or self.settings.api_port}"

    def spawn(self, name: str, command: list[str], env: dict[str, str] | None = None) -> None:
        log_file = (self.data_dir / f"{name}.log").open("wb")
        self.processes[name] = subprocess.Popen(
            command, cwd=ROOT, env=env or self.env, stdout=log_file, stderr=subprocess.STDOUT
        )

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                log_tail = (self.data_dir / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{log_tail}")

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "store.migrate"], cwd=ROOT, env=self.env, check=True)
        db = str(self.data_dir / "temporal.db")
        self.spawn("temporal", temporal_dev_server_command(self.settings, db))
        deadline = time.monotonic() + READY_TIMEOUT
        while not port_accepts_connections(LOCALHOST, self.settings.temporal_port):
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError("the Temporal dev server did not start")
            time.sleep(0.2)
        for n in range(self.workers):
            name = "worker" if n == 0 else f"worker{n + 1}"
            self.spawn(name, [sys.executable, str(ROOT / "worker.py")])
        self.start_api("api", self.settings.api_port, self.env)
        tokens = self.auth("ops-bench", ["ops_admin"])
        with httpx.Client(base_url=self.url(), headers=tokens, timeout=30) as client:
            load_demo_data(client)

    def start_api(self, name: str, port: int, env: dict[str, str]) -> None:
        uvicorn = [sys.executable, "-m", "uvicorn", "api.main:app", "--log-level", "warning"]
        self.spawn(name, [*uvicorn, "--host", LOCALHOST, "--port", str(port)], env)
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            self.check_alive()
            try:
                if httpx.get(f"{self.url(port)}/readyz", timeout=3).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} was not ready within {READY_TIMEOUT:.0f} s")
            time.sleep(0.3)

    def stop(self, name: str) -> None:
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def stop_all(self) -> None:
        for name in reversed(list(self.processes)):
            self.stop(name)

    def auth(self, sub: str, roles: list[str], partner_id: str | None = None) -> dict[str, str]:
        token = mint_token(self.settings.jwt_secret, sub=sub, roles=roles, partner_id=partner_id)
        return {"Authorization": f"Bearer {token}"}

    def rss(self, name: str) -> int:
        """Resident bytes of a process tree; "worker" sums every worker process."""
        names = [n for n in self.processes if n == name or (name == "worker" and n[6:].isdigit())]
        return sum(tree_rss_bytes(self.processes[n].pid) for n in names)


# --- the service over HTTP ----------------------------------------------------------------------


def po_body(run_tag: str, i: int) -> dict[str, Any]:
    # Customer names are unique: the API refuses a second open PO for partner+customer+project.
    return {
        "customer_name": f"Bench Customer {run_tag}-{i}",
        "project_name": f"Bench project {run_tag}-{i}",
        "offerings": ["ecs", "rds"],
        "amount": "1250000.00",
        "region": "east-china",
        "industry": "logistics",
        "expected_close_date": "2027-03-31",
    }


class Service:
    """The PO flow over HTTP: p-acme's admin submits, pdm-li (routed by region) decides."""

    def __init__(self, stack: BenchStack, http: httpx.AsyncClient) -> None:
        self.http = http
        self.partner = stack.auth("acme-admin", ["partner_admin"], "p-acme")
        self.pdm = stack.auth("pdm-li", ["pdm"])
        self.run_tag = uuid.uuid4().hex[:8]
        self.submitted = 0
        self.failures: list[str] = []

    async def submit(self) -> str:
        self.submitted += 1
        body = po_body(self.run_tag, self.submitted)
        r = await self.http.post("/v1/opportunities", json=body, headers=self.partner)
        if r.status_code != 201:
            raise RuntimeError(f"submit answered {r.status_code}: {r.text}")
        task_id = r.json()["open_task_id"]
        if not task_id:
            raise RuntimeError(f"submitted PO has no open review task: {r.text}")
        return str(task_id)

    async def decide(self, task_id: str) -> None:
        body = {"outcome": "approve", "data": {"criteria": ALL_PASS}}
        r = await self.http.post(f"/v1/tasks/{task_id}/complete", json=body, headers=self.pdm)
        if r.status_code != 200:
            raise RuntimeError(f"complete {task_id} answered {r.status_code}: {r.text}")

    async def submit_many(
        self, count: int, concurrency: int, tolerate: bool = False
    ) -> tuple[list[str], dict[str, float]]:
        """`tolerate`: a refused submission is counted in `self.failures` and left out, not
        fatal (the long cost-growth fill on a shared machine; the count is reported)."""
        task_ids: list[str] = [""] * count

        async def one(i: int) -> None:
            try:
                task_ids[i] = await self.submit()
            except (RuntimeError, httpx.HTTPError) as exc:
                if not tolerate:
                    raise
                self.failures.append(str(exc)[:300])

        latencies, wall = await timed_all(count, concurrency, one)
        return [t for t in task_ids if t], summary(latencies, wall)


async def bench_service(
    stack: BenchStack, http: httpx.AsyncClient, n: int, concurrency: int, unloaded: int
) -> dict[str, Any]:
    service = Service(stack, http)
    await service.submit()  # warm-up: first requests pay imports and connection set-up
    task_ids, starts = await service.submit_many(n, concurrency)

    async def decide(i: int) -> None:
        await service.decide(task_ids[i])

    latencies, wall = await timed_all(n, concurrency, decide)
    decisions = summary(latencies, wall)
    fresh, _ = await service.submit_many(unloaded, concurrency)

    async def decide_fresh(i: int) -> None:
        await service.decide(fresh[i])

    unloaded_latency = summary(await timed_sequential(unloaded, decide_fresh))
    return {"starts": starts, "decisions": decisions, "unloaded_decision": unloaded_latency}


# --- the raw ceiling ----------------------------------------------------------------------------


async def bench_raw(stack: BenchStack, n: int, concurrency: int, unloaded: int) -> dict[str, Any]:
    """The same counts of a workflow that only waits for one Update, through the SDK directly."""
    stack.spawn(
        "raw_worker",
        [
            sys.executable,
            "-m",
            "bench.raw_workflow",
            stack.temporal_address,
            stack.settings.temporal_namespace,
            RAW_TASK_QUEUE,
        ],
    )
    try:
        client = await Client.connect(
            stack.temporal_address, namespace=stack.settings.temporal_namespace
        )
        tag = uuid.uuid4().hex[:8]

        async def start(i: int) -> None:
            await client.start_workflow(
                TrivialWorkflow.run, id=f"raw-{tag}-{i}", task_queue=RAW_TASK_QUEUE
            )

        async def decide(i: int) -> None:
            handle = client.get_workflow_handle(f"raw-{tag}-{i}")
            await handle.execute_update(TrivialWorkflow.decide, "approve")

        await start(-1)
        await decide(-1)  # warm-up, as for the service
        latencies, wall = await timed_all(n, concurrency, start)
        starts = summary(latencies, wall)
        latencies, wall = await timed_all(n, concurrency, decide)
        decisions = summary(latencies, wall)
        for i in range(n, n + unloaded):
            await start(i)
        unloaded_latency = summary(await timed_sequential(unloaded, lambda i: decide(n + i)))
        return {"starts": starts, "decisions": decisions, "unloaded_decision": unloaded_latency}
    finally:
        stack.stop("raw_worker")


def ratios(service: dict[str, Any], raw: dict[str, Any]) -> dict[str, float]:
    """Throughput: service/raw (target ≥ 0.8). Latency: service/raw (target ≤ 1.5)."""

    def ratio(a: float, b: float) -> float:
        return a / b if b else 0.0

    return {
        "starts_per_s": ratio(service["starts"]["per_s"], raw["starts"]["per_s"]),
        "decisions_per_s": ratio(service["decisions"]["per_s"], raw["decisions"]["per_s"]),
        "unloaded_decision_p50": ratio(
            service["unloaded_decision"]["p50_ms"], raw["unloaded_decision"]["p50_ms"]
        ),
    }


# --- cost growth ---------------------------------------------------------------------------------


async def bench_cost_growth(
    stack: BenchStack,
    http: httpx.AsyncClient,
    open_workflows: int,
    concurrency: int,
    probes: int,
    checkpoint: int = 0,
) -> dict[str, Any]:
    """Decision latency and memory with `baseline` open reviews, then with `open_workflows`."""
    service = Service(stack, http)
    baseline = min(100, max(open_workflows // 2, probes))
    opened, _ = await service.submit_many(baseline + probes, concurrency)

    async def probe(ids: list[str]) -> dict[str, float]:
        async def one(i: int) -> None:
            await service.decide(ids[i])

        return summary(await timed_sequential(len(ids), one))

    at_baseline: dict[str, Any] = {
        "open": baseline,
        "worker_rss_mb": stack.rss("worker") / 2**20,
        "temporal_rss_mb": stack.rss("temporal") / 2**20,
        # the oldest reviews, the ones least likely to be in the worker's cache
        "decision": await probe(opened[:probes]),
    }
    print(f"bench: cost growth baseline {json.dumps(at_baseline)}", flush=True)
    opened = opened[probes:]
    checkpoints: list[dict[str, Any]] = []
    target = open_workflows + probes
    began = time.perf_counter()
    while len(opened) < target:
        # Filled in steps, each reported as it is reached (a long run cut short still says how
        # far it got): RSS and a few sequential decisions on the oldest open reviews.
        step = min(checkpoint or target, target - len(opened))
        more, step_starts = await service.submit_many(step, concurrency, tolerate=True)
        opened += more
        if checkpoint and len(opened) < target:
            k = min(5, probes)
            point = {
                "open": len(opened) - k,
                "elapsed_s": time.perf_counter() - began,
                "fill_per_s": step_starts["per_s"],
                "worker_rss_mb": stack.rss("worker") / 2**20,
                "temporal_rss_mb": stack.rss("temporal") / 2**20,
                "decision": await probe(opened[:k]),
                "failed_starts": len(service.failures),
            }
            opened = opened[k:]
            checkpoints.append(point)
            print(f"bench: cost growth checkpoint {json.dumps(point)}", flush=True)
    grow = {"count": float(len(opened)), "wall_s": time.perf_counter() - began}
    grow["per_s"] = grow["count"] / grow["wall_s"] if grow["wall_s"] else 0.0
    at_size: dict[str, Any] = {
        "open": len(opened) - probes,
        "worker_rss_mb": stack.rss("worker") / 2**20,
        "temporal_rss_mb": stack.rss("temporal") / 2**20,
        "decision": await probe(opened[:probes]),
        "fill_starts": grow,
        "failed_starts": len(service.failures),
        "failures": service.failures[:5],
        "checkpoints": checkpoints,
    }
    p50_ratio = at_size["decision"]["p50_ms"] / max(at_baseline["decision"]["p50_ms"], 1e-9)
    return {"baseline": at_baseline, "at_size": at_size, "decision_p50_ratio": p50_ratio}


# --- the inbox ---------------------------------------------------------------------------------

INBOX_PDMS = 200
INBOX_PDM = "pdm-007"
INBOX_DISPATCHER = "dispatcher-bench"


def inbox_rows(count: int) -> Iterator[dict[str, Any]]:
    """A read model after a while: most tasks done, one in ten offered to the dispatchers."""
    rng = random.Random(7)
    now = datetime.now(UTC)
    for i in range(count):
        offered = i % 10 == 0
        row: dict[str, Any] = {
            "id": f"po-bench-{i:07d}.1",
            "kind": "po.review",
            "process": "opportunity",
            "process_id": f"po-bench-{i:07d}",
            "partner_id": f"p-{i % 500:03d}",
            "assignee": None if offered else f"pdm-{i % INBOX_PDMS:03d}",
            "candidate_role": "dispatcher" if offered else "pdm",
            "assignee_partner_id": None,
            "escalate_to_role": "dispatcher",
            "status": "open" if rng.random() < 0.2 else "completed",
            "escalated": False,
            "outcome": None,
            "created_at": now - timedelta(days=rng.uniform(0, 365)),
            "due_at": now + timedelta(days=rng.uniform(-30, 30)),
            "version": 1,
        }
        # The inbox answers from the row's columns and its body (the task as the workflow wrote it).
        task = HumanTask.model_validate(
            {k: v for k, v in row.items() if k not in ("version", "status")}
            | {"status": row["status"], "sla": "P5D"}
        )
        yield row | {"body": task.model_dump(mode="json")}


def fill_inbox(database_url: str, count: int) -> float:
    began = time.perf_counter()
    engine = sa.create_engine(sync_url(database_url))
    try:
        rows = inbox_rows(count)
        with engine.begin() as conn:
            while batch := [row for _, row in zip(range(5000), rows, strict=False)]:
                conn.execute(sa.insert(TaskRow.__table__), batch)  # type: ignore[attr-defined]
            if engine.dialect.name == "postgresql":
                conn.execute(sa.text("ANALYZE tasks"))
            else:
                conn.execute(sa.text("ANALYZE"))
    finally:
        engine.dispose()
    return time.perf_counter() - began


def _pg_conninfo(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextmanager
def throwaway_postgres() -> Iterator[str]:
    name = f"pf_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_pg_conninfo(POSTGRES_ADMIN_URL), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(_pg_conninfo(POSTGRES_ADMIN_URL), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def bench_inbox_on(
    stack: BenchStack, name: str, database_url: str, tasks: int, queries: int
) -> dict[str, Any]:
    """An API of its own on a read model of `tasks` rows; GETs one at a time (unloaded)."""
    upgrade(database_url)
    fill_s = fill_inbox(database_url, tasks)
    port = free_port()
    env = {**stack.env, "PARTNERFLOW_DATABASE_URL": database_url}
    api = f"inbox_api_{name}"
    stack.start_api(api, port, env)
    try:
        result: dict[str, Any] = {"tasks": tasks, "fill_s": fill_s}
        views = {
            "pdm_assignee_me": (stack.auth(INBOX_PDM, ["pdm"]), {"assignee": "me"}),
            "dispatcher_inbox": (stack.auth(INBOX_DISPATCHER, ["dispatcher"]), {}),
            "dispatcher_assignee_me": (
                stack.auth(INBOX_DISPATCHER, ["dispatcher"]),
                {"assignee": "me"},
            ),
        }
        async with httpx.AsyncClient(base_url=stack.url(port), timeout=30) as http:
            for view, (headers, params) in views.items():
                r = await http.get("/v1/tasks", params=params, headers=headers)
                r.raise_for_status()
                items = len(r.json()["items"])

                async def get(
                    _: int, headers: dict[str, str] = headers, params: Any = params
                ) -> None:
                    response = await http.get("/v1/tasks", params=params, headers=headers)
                    response.raise_for_status()

                result[view] = {**summary(await timed_sequential(queries, get)), "items": items}
        return result
    finally:
        stack.stop(api)


async def bench_inbox(
    stack: BenchStack, tasks: int, queries: int, postgres: bool, sqlite: bool = True
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    if sqlite:
        sqlite_url = f"sqlite:///{stack.data_dir / 'inbox-bench.db'}"
        result["sqlite"] = await bench_inbox_on(stack, "sqlite", sqlite_url, tasks, queries)
    if postgres:
        with throwaway_postgres() as url:
            result["postgresql"] = await bench_inbox_on(stack, "postgresql", url, tasks, queries)
    return result


# --- lists (GET /v1/{resource}) ------------------------------------------------------------------

LIST_PARTNERS = 500
LIST_PARTNER = "p-007"
LIST_STATUSES = ("in_review", "approved", "rejected", "won", "delivered", "cancelled")


def list_rows(count: int) -> Iterator[dict[str, Any]]:
    """`count` POs of 500 partners, updated over a year; one in four shares its updated_at with
    another (ties for the keyset)."""
    rng = random.Random(11)
    now = datetime.now(UTC).replace(microsecond=0)
    for i in range(count):
        pid, partner = f"po-list-{i:07d}", f"p-{i % LIST_PARTNERS:03d}"
        updated = now - timedelta(seconds=rng.randrange(365 * 86400) if i % 4 else i // 4)
        status = LIST_STATUSES[rng.randrange(len(LIST_STATUSES))]
        view = {
            "id": pid, "partner_id": partner, "status": status,
            "customer_name": f"Customer {i}", "project_name": f"Project {i % 997}",
            "offerings": ["ecs"], "amount": "1200.00", "region": None, "industry": None,
            "expected_close_date": "2027-03-31", "submitted_by": "u-bench",
            "created_at": updated.isoformat(), "updated_at": updated.isoformat(),
        }  # fmt: skip
        summary = process_summary("opportunity", view, f"Partner {partner}")
        yield {
            "id": pid, "process": "opportunity", "partner_id": partner, "status": status,
            "submitted_by": "u-bench", "match_key": None, "version": 1,
            "created_at": updated, "updated_at": updated, "view": view, "summary": summary,
            "addressee": None, "search_text": search_text("opportunity", view, summary),
        }  # fmt: skip


def fill_lists(database_url: str, count: int) -> float:
    began = time.perf_counter()
    engine = sa.create_engine(sync_url(database_url))
    try:
        rows = list_rows(count)
        with engine.begin() as conn:
            while batch := [row for _, row in zip(range(5000), rows, strict=False)]:
                conn.execute(sa.insert(ProcessRow.__table__), batch)  # type: ignore[attr-defined]
            conn.execute(
                sa.text("ANALYZE processes" if "postgresql" in database_url else "ANALYZE")
            )
    finally:
        engine.dispose()
    return time.perf_counter() - began


async def bench_lists_on(
    stack: BenchStack, name: str, database_url: str, processes: int, queries: int
) -> dict[str, Any]:
    """An API of its own on a read model of `processes` POs; list pages one at a time."""
    upgrade(database_url)
    fill_s = fill_lists(database_url, processes)
    port = free_port()
    api = f"lists_api_{name}"
    stack.start_api(api, port, {**stack.env, "PARTNERFLOW_DATABASE_URL": database_url})
    try:
        result: dict[str, Any] = {"processes": processes, "fill_s": fill_s}
        partner = stack.auth("u-bench", ["partner_admin"], LIST_PARTNER)
        staff = stack.auth("ops-bench", ["ops_admin"])
        async with httpx.AsyncClient(base_url=stack.url(port), timeout=30) as http:
            first = await http.get("/v1/opportunities", params={"limit": 20}, headers=partner)
            first.raise_for_status()
            later = first.json()["next_cursor"] or ""
            views = {
                "partner_first_page": (partner, {}),
                "partner_next_page": (partner, {"cursor": later} if later else {}),
                "staff_first_page": (staff, {}),
                "staff_status": (staff, {"status": "approved"}),
                "staff_partner": (staff, {"partner_id": LIST_PARTNER, "status": "won"}),
                "staff_updated_after": (
                    staff,
                    {"updated_after": (datetime.now(UTC) - timedelta(days=30)).isoformat()},
                ),
                "partner_q": (partner, {"q": "project 12"}),
            }
            for view, (headers, params) in views.items():
                query = {"limit": 20, **params}
                r = await http.get("/v1/opportunities", params=query, headers=headers)
                r.raise_for_status()
                items = len(r.json()["items"])

                async def get(
                    _: int, headers: dict[str, str] = headers, query: Any = query
                ) -> None:
                    response = await http.get("/v1/opportunities", params=query, headers=headers)
                    response.raise_for_status()

                result[view] = {**summary(await timed_sequential(queries, get)), "items": items}
        return result
    finally:
        stack.stop(api)


async def bench_lists(
    stack: BenchStack, processes: int, queries: int, postgres: bool
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    sqlite_url = f"sqlite:///{stack.data_dir / 'lists-bench.db'}"
    result["sqlite"] = await bench_lists_on(stack, "sqlite", sqlite_url, processes, queries)
    if postgres:
        with throwaway_postgres() as url:
            result["postgresql"] = await bench_lists_on(
                stack, "postgresql", url, processes, queries
            )
    return result


# --- report ------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gb = 0.0
    try:
        first = Path("/proc/meminfo").read_text().splitlines()[0]
        memory_gb = int(first.split()[1]) / 2**20
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(memory_gb, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def table(result: dict[str, Any]) -> str:
    """Markdown: what the issue targets against what this run measured."""
    args = result["args"]
    rows = [
        "| measure | service | raw Temporal | service/raw | target |",
        "| --- | --- | --- | --- | --- |",
    ]

    def ms(section: dict[str, Any]) -> str:
        return f"p50 {section['p50_ms']:.1f} ms, p99 {section['p99_ms']:.1f} ms"

    service, raw, ratio = result.get("service"), result.get("raw"), result.get("ratios")
    if service:
        n, c = args["n"], args["concurrency"]
        for key, label in (("starts", "PO starts"), ("decisions", "decisions")):
            s = service[key]
            r = raw[key] if raw else None
            rate_ratio = f"{ratio[f'{key}_per_s']:.2f}" if ratio else "—"
            raw_text = f"{r['per_s']:.1f}/s; {ms(r)}" if r else "—"
            rows.append(
                f"| {label} (n={n}, c={c}) | {s['per_s']:.1f}/s; {ms(s)} | {raw_text} "
                f"| {rate_ratio} | ≥ 0.80 |"
            )
        s = service["unloaded_decision"]
        r = raw["unloaded_decision"] if raw else None
        rows.append(
            f"| unloaded decision (sequential) | {ms(s)} | {ms(r) if r else '—'} "
            f"| {ratio['unloaded_decision_p50'] if ratio else 0:.2f} (p50) | ≤ 1.5 |"
        )
    for backend, section in (result.get("inbox") or {}).items():
        for view in ("pdm_assignee_me", "dispatcher_inbox", "dispatcher_assignee_me"):
            target = "p99 ≤ 20 ms" if backend == "postgresql" else "—"
            rows.append(
                f"| inbox {backend}, {section['tasks']:,} tasks, {view} "
                f"| {ms(section[view])} | | | {target} |"
            )
    for backend, section in (result.get("lists") or {}).items():
        for view in [k for k, v in section.items() if isinstance(v, dict)]:
            target = "p99 ≤ 20 ms" if backend == "postgresql" else "—"
            rows.append(
                f"| list {backend}, {section['processes']:,} processes, {view} "
                f"| {ms(section[view])} | | | {target} |"
            )
    cost = result.get("cost_growth")
    if cost:
        base, size = cost["baseline"], cost["at_size"]
        rows.append(
            f"| worker RSS at {base['open']:,} / {size['open']:,} open reviews "
            f"| {base['worker_rss_mb']:.0f} MB / {size['worker_rss_mb']:.0f} MB | | | ≤ 1024 MB |"
        )
        rows.append(
            f"| Temporal server RSS at {base['open']:,} / {size['open']:,} "
            f"| {base['temporal_rss_mb']:.0f} MB / {size['temporal_rss_mb']:.0f} MB | | | — |"
        )
        rows.append(
            f"| decision at {base['open']:,} / {size['open']:,} open "
            f"| {ms(base['decision'])} / {ms(size['decision'])} | | "
            f"{cost['decision_p50_ratio']:.2f} (p50) | ≤ 2 |"
        )
    m = result["machine"]
    rows.append("")
    rows.append(
        f"Measured {result['started_at']} on {m['cpus']} CPUs ({m['cpu_model']}), "
        f"{m['memory_gb']} GB, Python {m['python']}; `{result['command']}`."
    )
    return "\n".join(rows)


def ratio_lines(result: dict[str, Any]) -> list[str]:
    """The figures the issue targets, one a line, printed last so a terminal shows them.

    Each line: `ratio <name>: <value> (target <bound>)`; only the sections that ran."""
    lines: list[str] = []
    ratio = result.get("ratios")
    if ratio:
        lines += [
            f"ratio PO starts / raw starts: {ratio['starts_per_s']:.2f} (target >= 0.80)",
            f"ratio decisions / raw decisions: {ratio['decisions_per_s']:.2f} (target >= 0.80)",
            "ratio unloaded decision p50 / raw update p50: "
            f"{ratio['unloaded_decision_p50']:.2f} (target <= 1.50)",
        ]
    for backend, section in (result.get("inbox") or {}).items():
        view = section["pdm_assignee_me"]
        target = " (target <= 20 ms)" if backend == "postgresql" else ""
        lines.append(
            f"PDM inbox p99 ({backend}, {section['tasks']:,} tasks): "
            f"{view['p99_ms']:.1f} ms, p50 {view['p50_ms']:.1f} ms{target}"
        )
    cost = result.get("cost_growth")
    if cost:
        base, size = cost["baseline"], cost["at_size"]
        lines.append(
            f"worker RSS at {size['open']:,} open reviews: {size['worker_rss_mb']:.0f} MB "
            "(target <= 1024 MB)"
        )
        lines.append(
            f"ratio decision p50 at {size['open']:,} / at {base['open']:,} open: "
            f"{cost['decision_p50_ratio']:.2f} (target <= 2.00)"
        )
    return lines


def update_doc(text: str) -> None:
    if not PERFORMANCE_DOC.exists():
        return
    doc = PERFORMANCE_DOC.read_text()
    if TABLE_BEGIN not in doc or TABLE_END not in doc:
        return
    head, rest = doc.split(TABLE_BEGIN, 1)
    _, tail = rest.split(TABLE_END, 1)
    PERFORMANCE_DOC.write_text(f"{head}{TABLE_BEGIN}\n{text}\n{TABLE_END}{tail}")


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    p.add_argument("--n", type=int, default=200, help="PO submissions and decisions (200)")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight (16)")
    p.add_argument("--unloaded", type=int, default=20, help="sequential decisions timed (20)")
    p.add_argument("--inbox-tasks", type=int, default=100_000, help="read-model rows (100000)")
    p.add_argument("--inbox-queries", type=int, default=200, help="GETs per view (200)")
    p.add_argument(
        "--open-workflows", type=int, default=2000, help="open reviews for cost growth (2000)"
    )
    p.add_argument(
        "--cost-checkpoint",
        type=int,
        default=0,
        help="while filling, report RSS and 5 decisions every this many starts (0: never)",
    )
    p.add_argument("--workers", type=int, default=1, help="worker processes (1)")
    p.add_argument(
        "--worker-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a config.Settings field for the stack, e.g. worker_max_cached_workflows=5000",
    )
    p.add_argument("--skip-service", action="store_true")
    p.add_argument("--skip-raw", action="store_true")
    p.add_argument("--skip-inbox", action="store_true")
    p.add_argument("--list-processes", type=int, default=100_000, help="list rows (100000)")
    p.add_argument("--list-queries", type=int, default=200, help="GETs per list view (200)")
    p.add_argument("--skip-lists", action="store_true")
    p.add_argument("--skip-postgres", action="store_true")
    p.add_argument("--skip-cost", action="store_true")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--no-doc", action="store_true", help="leave docs/performance.md alone")
    p.add_argument("--keep-data", action="store_true", help="keep the temp dir (logs, databases)")
    p.add_argument("--smoke", action="store_true", help="tiny counts, no doc update (the test)")
    p.add_argument(
        "--quick",
        action="store_true",
        help=(
            "repeated measurement, under 3 minutes on 2 cores: n=80, 12 sequential decisions, "
            "the inbox on PostgreSQL only (100 GETs per view), no lists or cost section, "
            "no doc update"
        ),
    )
    p.add_argument("--skip-sqlite", action="store_true", help="inbox on PostgreSQL only")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.unloaded, args.inbox_queries = 80, 12, 100
        args.skip_cost = args.skip_sqlite = args.skip_lists = args.no_doc = True
    if args.smoke:
        args.n, args.concurrency, args.unloaded = 5, 2, 3
        args.inbox_tasks, args.inbox_queries, args.open_workflows = 500, 5, 20
        args.no_doc = True
        args.list_processes, args.list_queries = 500, 5
    return args


async def bench(args: argparse.Namespace, stack: BenchStack) -> dict[str, Any]:
    result: dict[str, Any] = {
        "started_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python -m bench.run", *sys.argv[1:]]),
        "machine": machine(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    step = time.perf_counter()

    def done(what: str) -> None:
        nonlocal step
        print(f"bench: {what} done in {time.perf_counter() - step:.1f} s", flush=True)
        step = time.perf_counter()

    limits = httpx.Limits(max_connections=args.concurrency + 4)
    async with httpx.AsyncClient(base_url=stack.url(), timeout=90, limits=limits) as http:
        if not args.skip_service:
            result["service"] = await bench_service(
                stack, http, args.n, args.concurrency, args.unloaded
            )
            done("service")
        if not args.skip_raw:
            result["raw"] = await bench_raw(stack, args.n, args.concurrency, args.unloaded)
            done("raw ceiling")
        if "service" in result and "raw" in result:
            result["ratios"] = ratios(result["service"], result["raw"])
        if not args.skip_cost:
            result["cost_growth"] = await bench_cost_growth(
                stack,
                http,
                args.open_workflows,
                args.concurrency,
                args.unloaded,
                args.cost_checkpoint,
            )
            done("cost growth")
    if not args.skip_inbox:
        result["inbox"] = await bench_inbox(
            stack,
            args.inbox_tasks,
            args.inbox_queries,
            not args.skip_postgres,
            sqlite=not args.skip_sqlite or args.skip_postgres,
        )
        done("inbox")
    if not args.skip_lists:
        result["lists"] = await bench_lists(
            stack, args.list_processes, args.list_queries, not args.skip_postgres
        )
        done("lists")
    return result


async def wait_for_temporal(stack: BenchStack) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        try:
            client = await Client.connect(
                stack.temporal_address, namespace=stack.settings.temporal_namespace
            )
            await client.count_workflows()
            return
        except (RPCError, RuntimeError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data_dir = Path(tempfile.mkdtemp(prefix="partnerflow-bench-"))
    settings = dict(item.split("=", 1) for item in args.worker_setting)
    stack = BenchStack(data_dir, workers=args.workers, worker_settings=settings)
    try:
        print(f"bench: starting the stack in {data_dir}", flush=True)
        stack.start()
        asyncio.run(wait_for_temporal(stack))
        result = asyncio.run(bench(args, stack))
    finally:
        stack.stop_all()
        if not args.keep_data:
            shutil.rmtree(data_dir, ignore_errors=True)
    text = table(result)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = args.results_dir / f"{stamp}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(text)
    print(f"bench: results in {path}")
    if not args.no_doc:
        update_doc(text)
    for line in ratio_lines(result):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
