"""What the API and the worker tell operators about themselves: JSON logs, traces, SDK metrics.

- Logs: one JSON object per line on stderr, with the workflow id, task id and request id when
  the line has them (`configure_logging`).
- Traces: OpenTelemetry through Temporal's `TracingInterceptor` (client and worker) and the
  FastAPI instrumentation, so one trace runs from an HTTP request through the workflow to its
  activities; exported over OTLP/HTTP when `otlp_endpoint` is set, off otherwise.
- Worker metrics: the Temporal SDK's own Prometheus endpoint on `worker_metrics_port`.

Workflow code never imports this module.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from temporalio import activity, workflow
from temporalio.client import Interceptor
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

if TYPE_CHECKING:
    from fastapi import FastAPI

    from config import Settings

# Set by the API's request-id middleware for the duration of one request.
REQUEST_ID: ContextVar[str | None] = ContextVar("partnerflow_request_id", default=None)

# Fields our own log calls pass in `extra=` that belong in the JSON line. None may be the name
# of a LogRecord attribute (`process`, `module`, ...): logging refuses those, and a refused log
# call inside a workflow fails its workflow task.
_EXTRA_FIELDS = (
    "workflow_id",
    "task_id",
    "process_kind",
    "actor",
    "event_key",
    "method",
    "path",
    "status",
    "duration_ms",
)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, and the ids we know."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        # Temporal's workflow and activity loggers put their context in these two dicts.
        in_workflow = getattr(record, "temporal_workflow", None)
        if isinstance(in_workflow, dict):
            entry["workflow_id"] = in_workflow.get("workflow_id")
            entry["workflow_type"] = in_workflow.get("workflow_type")
            entry["run_id"] = in_workflow.get("run_id")
        in_activity = getattr(record, "temporal_activity", None)
        if isinstance(in_activity, dict):
            entry["workflow_id"] = in_activity.get("workflow_id")
            entry["activity_type"] = in_activity.get("activity_type")
            entry["attempt"] = in_activity.get("attempt")
        for name in _EXTRA_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        request_id = getattr(record, "request_id", None) or REQUEST_ID.get()
        if request_id is not None:
            entry["request_id"] = request_id
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            entry["trace_id"] = format(span.trace_id, "032x")
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: int = logging.INFO) -> None:
    """JSON lines on stderr for this process, uvicorn's loggers included."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    # The API's request-id middleware writes the access line, with the ids in it.
    logging.getLogger("uvicorn.access").disabled = True
    # The ids are fields of the JSON line; no need to repeat them inside the message.
    workflow.logger.workflow_info_on_message = False
    activity.logger.activity_info_on_message = False


# --- traces -------------------------------------------------------------------------------------

_PROVIDERS: dict[tuple[str, str], TracerProvider] = {}


def traces_url(endpoint: str) -> str:
    """`http://collector:4318` means its standard traces path; a full URL is taken as given."""
    if urlsplit(endpoint).path in ("", "/"):
        return endpoint.rstrip("/") + "/v1/traces"
    return endpoint


def otlp_tracer_provider(settings: Settings, service: str) -> TracerProvider | None:
    """The process's tracer provider exporting to `settings.otlp_endpoint`; None when unset.

    One per (endpoint, service) and process: spans are batched and flushed at exit.
    """
    if not settings.otlp_endpoint:
        return None
    key = (settings.otlp_endpoint, service)
    if key not in _PROVIDERS:
        # Imported here: the exporter pulls in protobuf and requests, needed only when tracing.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        exporter = OTLPSpanExporter(endpoint=traces_url(settings.otlp_endpoint))
        provider.add_span_processor(BatchSpanProcessor(exporter))
        _PROVIDERS[key] = provider
    return _PROVIDERS[key]


def tracing_interceptors(provider: TracerProvider | None) -> list[Interceptor]:
    """Temporal's interceptor for a client (and so for the workers built on it): it carries the
    caller's trace into workflows, and from them into activities."""
    if provider is None:
        return []
    return [TracingInterceptor(provider.get_tracer("partnerflow"))]


def instrument_api(app: FastAPI, provider: TracerProvider) -> None:
    """A server span per request; health checks and scrapes are left out."""
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=provider,
        excluded_urls="healthz,readyz,metrics",
        exclude_spans=["receive", "send"],
    )


# --- worker metrics -------------------------------------------------------------------------------


def worker_runtime(settings: Settings) -> Runtime | None:
    """A Temporal runtime serving the SDK's metrics (task latencies, slots, polls, activity
    failures) on `worker_metrics_port`; None when the port is 0."""
    if settings.worker_metrics_port == 0:
        return None
    address = f"0.0.0.0:{settings.worker_metrics_port}"
    return Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=address)))
