"""The one settings object: environment variables prefixed PARTNERFLOW_, nested with __.

Read once per process (`get_settings()`); the API copies `policy` into each workflow's input so a
running workflow keeps the policy it started with. Workflow code never imports this module.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Self

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from domain.policy import IsoDuration, Policy, add_duration

DEVELOPMENT_JWT_SECRET = "partnerflow-development-secret-change-me!"


class Environment(StrEnum):
    development = "development"
    production = "production"


class RateLimit(BaseModel):
    """R-X-1: per caller (the token's `sub` when it verifies, else the client address), at most
    `burst` requests in any `burst / requests_per_second` seconds; over it the API answers 429
    with Retry-After. Counted through the `limits` library in `storage_url`: `memory://` (this
    process, the default) or `redis://host:6379/N`, shared by every API replica."""

    requests_per_second: float = Field(default=50.0, gt=0)
    burst: int = Field(default=100, ge=1)
    storage_url: str = Field(
        default="memory://",
        description="where the limiter counts: memory:// (per process) or redis://host:port/db",
    )
    key_prefix: str = Field(
        default="partnerflow-rl", description="prefix of the limiter's keys in a shared store"
    )


class Webhooks(BaseModel):
    """Webhook delivery (issue 13): the worker's sender loop, retries and when to give up.

    Times are seconds. A delivery is retried with exponential backoff (doubling from
    `base_backoff_seconds`, capped at `max_backoff_seconds`, each wait scaled by a random factor
    in [1 - jitter, 1]); a subscription is disabled, and its owner e-mailed, after
    `disable_after_failures` failed attempts in a row or when it has failed for
    `disable_after_seconds` without one success. After a secret rotation, deliveries carry
    signatures by both secrets for `rotation_grace_seconds`.
    """

    poll_interval_seconds: float = Field(default=1.0, gt=0)
    batch_size: int = Field(default=50, ge=1, le=1000)
    timeout_seconds: float = Field(default=10.0, gt=0)
    base_backoff_seconds: float = Field(default=5.0, gt=0)
    max_backoff_seconds: float = Field(default=3600.0, gt=0)
    jitter: float = Field(default=0.5, ge=0, le=1)
    disable_after_failures: int = Field(default=100, ge=1)
    disable_after_seconds: float = Field(default=3 * 86400.0, gt=0)
    rotation_grace_seconds: float = Field(default=86400.0, ge=0)
    claim_lease_seconds: float = Field(default=300.0, gt=0)
    concurrency: int = Field(default=10, ge=1, le=100)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PARTNERFLOW_", env_nested_delimiter="__", extra="ignore"
    )

    env: Environment = Environment.development
    data_dir: Path = Path(".data")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default SQLite under the data dir"
    )
    database_pool_size: int = Field(
        default=20,
        ge=1,
        description=(
            "PostgreSQL connections each process keeps pooled (as many again may open under a "
            "burst): every API replica and worker holds up to twice this of max_connections"
        ),
    )
    temporal_address: str | None = Field(
        default=None,
        description="host:port of the Temporal frontend; default 127.0.0.1:TEMPORAL_PORT",
    )
    temporal_namespace: str = "default"
    task_queue: str = "partnerflow"
    jwt_secret: str = DEVELOPMENT_JWT_SECRET
    jwt_leeway: IsoDuration = Field(
        default="PT30S",
        description="clock leeway for a token's iat, nbf and exp (ISO 8601 duration)",
    )
    api_port: int = 8000
    temporal_port: int = 7233
    ui_port: int = 8233
    smtp_url: str | None = Field(
        default=None, description="smtp://user:pass@host:port; unset: notifications are logged"
    )
    mail_from: str = "partnerflow@partners.example"
    mail_domain: str = Field(
        default="partners.example", description="domain for staff ids that are not addresses"
    )
    update_timeout_seconds: float = Field(
        default=15.0, description="how long the API waits for a worker to answer a decision"
    )
    max_body_bytes: int = 256 * 1024
    idempotency_retention: timedelta = Field(
        default=timedelta(hours=24),
        description="R-X-6: how long an Idempotency-Key's first answer is kept (ISO 8601, PT24H)",
    )
    worker_metrics_port: int = Field(
        default=9464,
        ge=0,
        le=65535,
        description="the worker's Prometheus endpoint (Temporal SDK metrics); 0 turns it off",
    )
    # Worker tuning (issue 11, measured one at a time in docs/performance.md); None: SDK default.
    worker_max_cached_workflows: int = Field(
        default=1000, ge=0, description="workflow runs kept in the worker's cache (SDK default)"
    )
    worker_max_concurrent_workflow_tasks: int | None = Field(default=None, ge=1)
    worker_max_concurrent_activities: int | None = Field(default=None, ge=1)
    worker_max_concurrent_local_activities: int | None = Field(default=None, ge=1)
    otlp_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP collector for traces, e.g. http://collector:4318; unset: no tracing",
    )
    rate_limit: RateLimit = RateLimit()
    policy: Policy = Policy()
    webhooks: Webhooks = Webhooks()

    @model_validator(mode="after")
    def _refuse_development_secret_in_production(self) -> Self:
        if self.env is Environment.production and self.jwt_secret == DEVELOPMENT_JWT_SECRET:
            raise ValueError(
                "PARTNERFLOW_JWT_SECRET still holds the development value; set a real secret"
            )
        if len(self.jwt_secret) < 32:
            raise ValueError("PARTNERFLOW_JWT_SECRET must be at least 32 characters for HS256")
        return self

    @property
    def jwt_leeway_seconds(self) -> float:
        """`jwt_leeway` in seconds (a calendar-free duration: PT30S, PT1M)."""
        epoch = datetime(2000, 1, 1, tzinfo=UTC)
        return (add_duration(epoch, self.jwt_leeway) - epoch).total_seconds()

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'partnerflow.db').resolve()}"

    @property
    def resolved_temporal_address(self) -> str:
        return self.temporal_address or f"127.0.0.1:{self.temporal_port}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
