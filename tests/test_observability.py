"""What operators get from the running service, read the way they read it: Prometheus scrapes
of the API (request and business metrics) and of the worker (the Temporal SDK's metrics),
traces that run from an HTTP request through the workflow to its activities, exported over
OTLP when configured, and JSON logs carrying the workflow, task and request ids.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

from api.main import create_app
from config import Settings
from telemetry import REQUEST_ID, JsonFormatter, otlp_tracer_provider, traces_url, worker_runtime
from tests.conftest import ApiServer, Stack, eventually, free_port
from tests.helpers import Actors, submit
from worker import connect, running_worker

ROOT = Path(__file__).resolve().parent.parent

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_samples(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(http: httpx.AsyncClient) -> Samples:
    r = await http.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return parse_samples(r.text)


# --- a stand-in OTLP/HTTP collector ---------------------------------------------------------------


@dataclass
class Collector:
    """Accepts OTLP/HTTP trace exports on 127.0.0.1 and keeps what it was sent."""

    port: int
    requests: list[ExportTraceServiceRequest] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spans(self) -> list[tuple[str, str]]:
        """(service.name, span name) of every span received."""
        found = []
        for request in list(self.requests):
            for resource_spans in request.resource_spans:
                service = next(
                    (
                        a.value.string_value
                        for a in resource_spans.resource.attributes
                        if a.key == "service.name"
                    ),
                    "",
                )
                for scope_spans in resource_spans.scope_spans:
                    found += [(service, span.name) for span in scope_spans.spans]
        return found


@pytest.fixture
def collector() -> Iterator[Collector]:
    received = Collector(port=0)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            received.paths.append(self.path)
            received.requests.append(request)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    received.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield received
    server.shutdown()
    server.server_close()


# --- API metrics ----------------------------------------------------------------------------------


async def test_api_metrics_count_requests_by_route_and_status(stack: Stack) -> None:
    a = Actors(stack)
    labels = {"method": "POST", "route": "/v1/opportunities", "status": "201"}
    before = value(await scrape(stack.http), "partnerflow_http_requests_total", **labels)
    await submit(stack.http, a.acme)
    after = await scrape(stack.http)
    assert value(after, "partnerflow_http_requests_total", **labels) >= before + 1
    latency = {"method": "POST", "route": "/v1/opportunities"}
    assert value(after, "partnerflow_http_request_seconds_count", **latency) >= 1


async def test_business_gauges_follow_open_overdue_and_breached_tasks(stack: Stack) -> None:
    """Open tasks by kind go up with a submission; with the fast policy (review SLA PT4S) the
    task then goes overdue and escalates, which the overdue gauge and the breach counter show."""
    a = Actors(stack)
    http = stack.fast_http
    before = await scrape(http)
    for kind in ("po.review", "po.dispatch"):  # every known kind is reported, 0 included
        assert ("partnerflow_open_tasks", frozenset({("kind", kind)})) in before
    open_before = value(before, "partnerflow_open_tasks", kind="po.review")
    breaches_before = value(before, "partnerflow_sla_breaches_total", process="opportunity")

    await submit(http, a.acme)

    async def opened() -> Samples | None:
        now = await scrape(http)
        return now if value(now, "partnerflow_open_tasks", kind="po.review") > open_before else None

    await eventually(opened, timeout=30, interval=0.5, what="open po.review tasks to go up")

    async def breached() -> Samples | None:
        now = await scrape(http)
        escalated = value(now, "partnerflow_sla_breaches_total", process="opportunity")
        overdue = value(now, "partnerflow_overdue_tasks", kind="po.review")
        return now if escalated > breaches_before and overdue >= 1 else None

    await eventually(breached, timeout=45, interval=0.5, what="the review to breach its SLA")


# --- request ids and JSON logs --------------------------------------------------------------------


class JsonLines(logging.Handler):
    """Formats records as the served processes do, at the moment they are logged."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def access_log() -> Iterator[JsonLines]:
    handler = JsonLines()
    logger = logging.getLogger("partnerflow.access")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


async def test_request_id_is_taken_or_made_and_logged_with_the_task(
    stack: Stack, access_log: JsonLines
) -> None:
    a = Actors(stack)
    r = await stack.http.get("/v1/tasks", headers={**a.pdm_li, "X-Request-ID": "portal-42.a"})
    assert r.headers["X-Request-ID"] == "portal-42.a"
    made = (await stack.http.get("/v1/tasks", headers=a.pdm_li)).headers["X-Request-ID"]
    assert len(made) == 32 and int(made, 16) >= 0
    garbled = await stack.http.get("/v1/tasks", headers={**a.pdm_li, "X-Request-ID": "x y" * 60})
    assert garbled.headers["X-Request-ID"] != "x y" * 60
    refused = await stack.http.get("/v1/tasks", headers={"X-Request-ID": "no-token-1"})
    assert refused.status_code == 401 and refused.headers["X-Request-ID"] == "no-token-1"

    po = await submit(stack.http, a.acme)
    task_id = po["open_task_id"]
    r = await stack.http.post(
        f"/v1/tasks/{task_id}/reassign",
        json={"assignee": "pdm-wang"},
        headers={**a.admin, "X-Request-ID": "ops-reassign-7"},
    )
    assert r.status_code == 200, r.text
    (line,) = [entry for entry in access_log.lines if entry.get("request_id") == "ops-reassign-7"]
    assert line["task_id"] == task_id and line["workflow_id"] == po["id"]
    assert line["status"] == 200 and line["method"] == "POST"
    assert line["logger"] == "partnerflow.access" and line["level"] == "INFO"


def test_json_formatter_carries_the_ids_it_knows() -> None:
    formatter = JsonFormatter()
    record = logging.LogRecord("partnerflow.x", logging.INFO, __file__, 1, "hi %s", ("ops",), None)
    record.temporal_workflow = {"workflow_id": "po-1", "workflow_type": "OpportunityReview"}
    record.task_id = "po-1.1"
    token = REQUEST_ID.set("req-9")
    try:
        entry = json.loads(formatter.format(record))
    finally:
        REQUEST_ID.reset(token)
    assert entry["message"] == "hi ops"
    assert entry["workflow_id"] == "po-1" and entry["workflow_type"] == "OpportunityReview"
    assert entry["task_id"] == "po-1.1" and entry["request_id"] == "req-9"
    assert entry["level"] == "INFO" and entry["ts"].endswith("+00:00")


# --- tracing --------------------------------------------------------------------------------------


async def test_one_trace_runs_from_the_http_request_through_the_workflow_to_its_activities(
    stack: Stack,
) -> None:
    if stack.db != "sqlite":
        pytest.skip("tracing does not touch the store: one database is enough")
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    settings = stack.settings.model_copy(update={"task_queue": f"pf-trace-{uuid.uuid4().hex[:8]}"})
    client = await connect(settings, tracer_provider=provider)
    api = ApiServer(settings, app=create_app(settings, tracer_provider=provider))
    async with running_worker(settings, client, send_notifications=False):
        await api.start()
        try:
            async with httpx.AsyncClient(base_url=api.url, timeout=30) as http:
                po = await submit(http, Actors(stack).acme)
        finally:
            await api.stop()

    def named(name: str) -> list[ReadableSpan]:
        return [s for s in spans.get_finished_spans() if s.name == name]

    async def activity_spans() -> list[ReadableSpan]:
        return [
            s
            for s in named("RunActivity:apply_transition")
            if s.attributes and s.attributes.get("temporalWorkflowID") == po["id"]
        ]

    (request,) = [
        s
        for s in named("POST /v1/opportunities")
        if s.kind is SpanKind.SERVER and s.attributes and s.attributes.get("http.route")
    ]
    (start,) = named("StartUpdateWithStartWorkflow:OpportunityReview")
    (run,) = named("RunWorkflow:OpportunityReview")
    (record, *_) = await eventually(activity_spans, what="the activity's span")
    (assess,) = named("RunActivity:assess_opportunity")
    trace_id = request.context.trace_id
    for span in (start, run, record, assess):
        assert span.context.trace_id == trace_id, span.name
    assert start.parent is not None and start.parent.trace_id == trace_id
    assert start.attributes and start.attributes["temporalWorkflowID"] == po["id"]


async def test_spans_go_to_the_otlp_endpoint_when_one_is_set(
    stack: Stack, collector: Collector
) -> None:
    if stack.db != "sqlite":
        pytest.skip("tracing does not touch the store: one database is enough")
    assert otlp_tracer_provider(Settings(), "partnerflow-api") is None
    assert traces_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert traces_url("http://collector:4318/custom") == "http://collector:4318/custom"

    settings = stack.settings.model_copy(update={"otlp_endpoint": collector.url})
    api = ApiServer(settings)  # create_app picks the provider from the settings
    await api.start()
    try:
        async with httpx.AsyncClient(base_url=api.url, timeout=30) as http:
            r = await http.get("/v1/tasks", headers=Actors(stack).pdm_li)
            assert r.status_code == 200, r.text
    finally:
        await api.stop()
    provider = otlp_tracer_provider(settings, "partnerflow-api")
    assert provider is not None
    assert provider.force_flush(10_000)
    assert ("partnerflow-api", "GET /v1/tasks") in collector.spans()
    assert set(collector.paths) == {"/v1/traces"}


# --- the worker process: SDK metrics, JSON logs, traces -------------------------------------------


def test_worker_metrics_port_zero_turns_the_endpoint_off() -> None:
    assert worker_runtime(Settings(worker_metrics_port=0)) is None
    assert Settings().worker_metrics_port == 9464


def start_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """`python worker.py` as the image runs it, its output (stdout and stderr) in `log_path`."""
    with open(log_path, "wb") as log_file:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "worker.py")],
            cwd=ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )


async def test_worker_process_serves_sdk_metrics_logs_json_and_exports_spans(
    stack: Stack, collector: Collector, tmp_path: Path
) -> None:
    """`python worker.py` as deployed: its Prometheus endpoint shows activities it ran, every
    line it logs is JSON, the line for a reassignment names the workflow and the task, and its
    spans reach the OTLP collector when it stops."""
    if stack.db != "sqlite":
        pytest.skip("the worker's telemetry does not depend on the store: one database is enough")
    metrics_port = free_port()
    settings = stack.settings.model_copy(update={"task_queue": f"pf-wm-{uuid.uuid4().hex[:8]}"})
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PARTNERFLOW_")},
        "PARTNERFLOW_DATABASE_URL": settings.resolved_database_url,
        "PARTNERFLOW_TEMPORAL_ADDRESS": settings.resolved_temporal_address,
        "PARTNERFLOW_TASK_QUEUE": settings.task_queue,
        "PARTNERFLOW_WORKER_METRICS_PORT": str(metrics_port),
        "PARTNERFLOW_OTLP_ENDPOINT": collector.url,
    }
    log_path = tmp_path / "worker.log"
    worker = start_worker(env, log_path)
    api = ApiServer(settings)
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{metrics_port}", timeout=5
        ) as metrics:

            async def sdk_metrics() -> Samples | None:
                assert worker.poll() is None, log_path.read_text()
                try:
                    return parse_samples((await metrics.get("/metrics")).text)
                except httpx.HTTPError:
                    return None

            await eventually(sdk_metrics, timeout=60, interval=0.2, what="the worker's /metrics")
            await api.start()
            a = Actors(stack)
            async with httpx.AsyncClient(base_url=api.url, timeout=30) as http:
                po = await submit(http, a.acme)
                task_id = po["open_task_id"]
                r = await http.post(
                    f"/v1/tasks/{task_id}/reassign", json={"assignee": "pdm-wang"}, headers=a.admin
                )
                assert r.status_code == 200, r.text

            async def ran_activities() -> Samples | None:
                samples = await sdk_metrics()
                if samples is None:
                    return None
                ran = sum(
                    v
                    for (name, labels), v in samples.items()
                    # store work runs as local activities in runs with that patch (issue 11)
                    if name
                    in (
                        "temporal_activity_execution_latency_count",
                        "temporal_local_activity_execution_latency_count",
                    )
                    and ("activity_type", "apply_transition") in labels
                    and ("task_queue", settings.task_queue) in labels
                )
                return samples if ran >= 2 else None

            await eventually(ran_activities, timeout=30, interval=0.2, what="activity metrics")
    finally:
        await api.stop()
        worker.send_signal(signal.SIGTERM)
        try:
            assert worker.wait(60) == 0, log_path.read_text()
        finally:
            if worker.poll() is None:
                worker.kill()

    lines = [json.loads(line) for line in io.StringIO(log_path.read_text()) if line.strip()]
    assert any(line["message"].startswith("worker polling") for line in lines), lines
    reassigned = [
        line
        for line in lines
        if line.get("task_id") == task_id and "task_reassigned" in line["message"]
    ]
    assert reassigned, lines
    assert reassigned[0]["workflow_id"] == po["id"] and reassigned[0]["actor"] == "ops-1"
    assert ("partnerflow-worker", "RunActivity:apply_transition") in collector.spans()
