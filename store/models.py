"""The tables: reference data, the read model, the audit trail, the outbox and request records.

The read model (`processes`, `tasks`) is written only by `store.readmodel.apply_transition`, run
from workflow activities; reference data only by the admin routes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

JSONType = sa.JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(UTC)


def _json(nullable: bool = False) -> Any:
    return Field(default_factory=dict, sa_column=sa.Column(JSONType, nullable=nullable))


def _ts(nullable: bool = False) -> Any:
    column = sa.Column(sa.DateTime(timezone=True), nullable=nullable)
    if nullable:
        return Field(default=None, sa_column=column)
    return Field(default_factory=utcnow, sa_column=column)


# --- reference data -------------------------------------------------------------------------


class Partner(SQLModel, table=True):
    __tablename__ = "partners"

    id: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=200)
    kind: str = Field(max_length=32)
    tier: str | None = Field(default=None, max_length=32)
    region: str | None = Field(default=None, max_length=64)
    business_info_certified: bool = False
    contact_email: str | None = Field(default=None, max_length=254)
    updated_at: datetime = _ts()


class Account(SQLModel, table=True):
    __tablename__ = "accounts"

    id: str = Field(primary_key=True, max_length=64)
    enterprise_verified: bool = False
    real_name_verified: bool = False
    site: str = Field(default="china", max_length=16)
    associated_partner_id: str | None = Field(default=None, max_length=64, index=True)
    email: str | None = Field(default=None, max_length=254)
    updated_at: datetime = _ts()


class RoutingRule(SQLModel, table=True):
    __tablename__ = "routing_rules"

    id: int | None = Field(default=None, primary_key=True)
    partner_id: str | None = Field(default=None, max_length=64)
    region: str | None = Field(default=None, max_length=64)
    industry: str | None = Field(default=None, max_length=64)
    pdm: str = Field(max_length=128)
    psm: str | None = Field(default=None, max_length=128)
    position: int = 0


class Offering(SQLModel, table=True):
    __tablename__ = "offerings"

    code: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=200)


# --- read model -----------------------------------------------------------------------------


class ProcessRow(SQLModel, table=True):
    """One row per process instance (a PO, a certification, ...); `view` is its public shape."""

    __tablename__ = "processes"
    __table_args__ = (
        sa.Index("ix_processes_match", "process", "match_key", "status"),
        sa.Index("ix_processes_partner", "partner_id", "process", "updated_at"),
        # lists (GET /v1/{resource}): newest update first, keyset on (updated_at, id)
        sa.Index("ix_processes_list", "process", "updated_at", "id"),
        sa.Index("ix_processes_list_partner", "process", "partner_id", "updated_at", "id"),
        sa.Index("ix_processes_list_status", "process", "status", "updated_at", "id"),
        sa.Index("ix_processes_list_addressee", "process", "addressee", "updated_at", "id"),
        # a list's `q` (LIKE '%…%'): a trigram index on PostgreSQL (pg_trgm), plain elsewhere
        sa.Index(
            "ix_processes_search",
            "search_text",
            postgresql_using="gin",
            postgresql_ops={"search_text": "gin_trgm_ops"},
        ),
    )

    id: str = Field(primary_key=True, max_length=200)
    process: str = Field(max_length=32)
    partner_id: str | None = Field(default=None, max_length=64)
    status: str = Field(max_length=32)
    submitted_by: str | None = Field(default=None, max_length=128)
    match_key: str | None = Field(default=None, max_length=500)
    version: int
    created_at: datetime = _ts()
    updated_at: datetime = _ts()
    view: dict[str, Any] = _json()
    # one line for lists and the inbox (domain.summaries.process_summary)
    summary: str | None = Field(default=None, max_length=500)
    # whom it is addressed to besides its owner: an account or a distributor (R-X-8)
    addressee: str | None = Field(default=None, max_length=128)
    # lower-cased text a list's `q` matches (domain.summaries.search_text)
    search_text: str | None = Field(default=None, max_length=2000)
    # The workflow's first run id (kept across continue-as-new): a write from another run that
    # reuses the id is refused, never silently dropped (R-X-6, store.readmodel).
    origin_run_id: str | None = Field(default=None, max_length=64)


class TaskRow(SQLModel, table=True):
    """The inbox. Indexes serve its three ways in: by person, by role, by partner."""

    __tablename__ = "tasks"
    __table_args__ = (
        sa.Index("ix_tasks_assignee", "status", "assignee", "due_at", "id"),
        sa.Index("ix_tasks_role", "status", "candidate_role", "due_at", "id"),
        sa.Index("ix_tasks_escalation", "status", "escalate_to_role", "due_at", "id"),
        sa.Index("ix_tasks_partner", "partner_id", "status", "due_at", "id"),
        sa.Index("ix_tasks_due", "status", "due_at", "id"),
        # "mine": assigned to me, claimed by me or offered to my role, as one indexed value
        # (store/inbox.py); parenthesised as SQLAlchemy reflects it from PostgreSQL, so Alembic
        # sees no change
        sa.Index(
            "ix_tasks_holder",
            "status",
            sa.text("coalesce(assignee, claimed_by, ('role:' || candidate_role))"),
            "due_at",
            "id",
        ),
    )

    id: str = Field(primary_key=True, max_length=220)
    kind: str = Field(max_length=32, index=True)
    process: str = Field(max_length=32)
    process_id: str = Field(max_length=200, index=True)
    partner_id: str | None = Field(default=None, max_length=64)
    assignee: str | None = Field(default=None, max_length=128)
    candidate_role: str | None = Field(default=None, max_length=32)
    assignee_partner_id: str | None = Field(default=None, max_length=64, index=True)
    escalate_to_role: str | None = Field(default=None, max_length=32)
    status: str = Field(max_length=16)
    escalated: bool = False
    # who took a task offered to a role (POST /v1/tasks/{id}/claim)
    claimed_by: str | None = Field(default=None, max_length=128)
    outcome: str | None = Field(default=None, max_length=32)
    created_at: datetime = _ts()
    due_at: datetime | None = _ts(nullable=True)
    version: int = 0
    body: dict[str, Any] = _json()


class AuditEvent(SQLModel, table=True):
    """R-X-3: who, when, what, comment. Unique per (process, version, position): written once."""

    __tablename__ = "audit_events"
    __table_args__ = (sa.UniqueConstraint("subject_id", "version", "position"),)

    id: int | None = Field(default=None, primary_key=True)
    subject_id: str = Field(max_length=200, index=True)
    # a process's transition number; for reference data, microseconds since the epoch
    version: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    position: int
    at: datetime = _ts()
    actor: str = Field(max_length=128)
    action: str = Field(max_length=64)
    comment: str | None = None
    task_id: str | None = Field(default=None, max_length=220)
    details: dict[str, Any] = _json()


class OutboxMessage(SQLModel, table=True):
    """R-X-4: one row per notification event (`event_key` unique); the sender delivers each once."""

    __tablename__ = "outbox"
    __table_args__ = (sa.Index("ix_outbox_pending", "status", "next_attempt_at"),)

    id: int | None = Field(default=None, primary_key=True)
    event_key: str = Field(max_length=260, unique=True)
    recipient: str = Field(max_length=254)
    subject: str = Field(max_length=300)
    body: str
    status: str = Field(default="pending", max_length=16)
    attempts: int = 0
    last_error: str | None = None
    created_at: datetime = _ts()
    next_attempt_at: datetime = _ts()
    sent_at: datetime | None = _ts(nullable=True)


# --- request bookkeeping --------------------------------------------------------------------


class IdempotencyRecord(SQLModel, table=True):
    """R-X-6: one Idempotency-Key of one caller on one method and path, and what became of it.

    `scope` = sha256(sub, method, path, key). `state`: `in_flight` (an attempt owns it until
    `locked_until`), `done` (`status_code`, `content_type` and the exact `response` bytes of a
    2xx answer, replayed byte for byte), `pending` (a 5xx answer: the effect may still happen,
    so the key stays bound to `fingerprint` and a retry re-runs the request, reusing
    `effect_id`, the process id allocated by the first attempt). Kept until `expires_at`
    (`idempotency_retention`, 24 h by default); after that the key is free again.
    """

    __tablename__ = "idempotency_records"

    scope: str = Field(primary_key=True, max_length=64)
    fingerprint: str = Field(max_length=64)
    state: str = Field(max_length=16)
    attempt: str = Field(max_length=32)
    effect_id: str | None = Field(default=None, max_length=200)
    status_code: int | None = None
    content_type: str | None = Field(default=None, max_length=200)
    response: bytes | None = Field(default=None, sa_column=sa.Column(sa.LargeBinary))
    created_at: datetime = _ts()
    locked_until: datetime = _ts()
    expires_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), index=True))


class Claim(SQLModel, table=True):
    """A business key held by one process (e.g. one open PO per partner, customer and project)."""

    __tablename__ = "claims"

    scope: str = Field(primary_key=True, max_length=32)
    key: str = Field(primary_key=True, max_length=600)
    owner_id: str = Field(max_length=200)
    created_at: datetime = _ts()


# --- the event feed and webhooks (DESIGN §3 `event`; issue 13) --------------------------------

# SQLite makes an INTEGER PRIMARY KEY the rowid (increasing, assigned under its one writer lock);
# PostgreSQL gets a BIGINT identity.
_EventId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class Event(SQLModel, table=True):
    """One committed state change, written by `apply_transition` in the transition's transaction.

    Feed order is (`txid`, `id`): on PostgreSQL `txid` is the writing transaction's id and the
    feed serves only rows whose transaction is older than every one still running (see
    `store.events`); on SQLite writers are serialised, `txid` is 0 and `id` alone orders.
    Unique per (process_id, version, position): a retried transition writes its events once.
    """

    __tablename__ = "events"
    __table_args__ = (
        sa.UniqueConstraint("process_id", "version", "position", name="uq_events_transition"),
        sa.Index("ix_events_feed", "txid", "id"),
        sa.Index("ix_events_partner", "partner_id", "txid", "id"),
        sa.Index("ix_events_audience_partner", "audience_partner_id", "txid", "id"),
        sa.Index("ix_events_audience_account", "audience_account_id", "txid", "id"),
    )

    id: int | None = Field(default=None, sa_column=sa.Column(_EventId, primary_key=True))
    txid: int = Field(default=0, sa_column=sa.Column(sa.BigInteger, nullable=False))
    type: str = Field(max_length=64)
    process: str = Field(max_length=32)
    process_id: str = Field(max_length=200)
    partner_id: str | None = Field(default=None, max_length=64)
    # who else may see it: the partner it is addressed to (a distributor), the account invited
    audience_partner_id: str | None = Field(default=None, max_length=64)
    audience_account_id: str | None = Field(default=None, max_length=64)
    version: int
    position: int
    occurred_at: datetime = _ts()
    data: dict[str, Any] = _json()


class WebhookSubscription(SQLModel, table=True):
    """A URL subscribed to event types, on behalf of its subscriber: `created_by` with
    `subscriber_roles` and `partner_id` (None: a staff token, ops). It receives exactly the
    events that subscriber's `GET /v1/events` shows (`store.feed_access`).

    `cursor_txid`/`cursor_id` is how far the dispatcher has turned the feed into deliveries.
    """

    __tablename__ = "webhook_subscriptions"

    id: str = Field(primary_key=True, max_length=64)
    partner_id: str | None = Field(default=None, max_length=64, index=True)
    url: str = Field(max_length=2000)
    event_types: list[str] = Field(
        default_factory=list, sa_column=sa.Column(JSONType, nullable=False)
    )
    secret: str = Field(max_length=200)
    previous_secret: str | None = Field(default=None, max_length=200)
    previous_secret_expires_at: datetime | None = _ts(nullable=True)
    status: str = Field(default="active", max_length=16)
    created_by: str = Field(max_length=128)
    # the creating token's roles: the subscription sees what its creator's feed shows (R-X-8);
    # None on rows made before they were kept (read as the role creation required)
    subscriber_roles: list[str] | None = Field(
        default=None, sa_column=sa.Column(JSONType, nullable=True)
    )
    created_at: datetime = _ts()
    updated_at: datetime = _ts()
    cursor_txid: int = Field(default=0, sa_column=sa.Column(sa.BigInteger, nullable=False))
    cursor_id: int = Field(default=0, sa_column=sa.Column(sa.BigInteger, nullable=False))
    failure_streak: int = 0
    failing_since: datetime | None = _ts(nullable=True)
    disabled_at: datetime | None = _ts(nullable=True)
    disabled_reason: str | None = Field(default=None, max_length=500)


class WebhookDelivery(SQLModel, table=True):
    """One event for one subscription: the outbox row the webhook sender delivers, and its log."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        sa.UniqueConstraint("subscription_id", "event_row_id", name="uq_webhook_delivery"),
        sa.Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        sa.Index("ix_webhook_deliveries_log", "subscription_id", "id"),
    )

    id: int | None = Field(default=None, sa_column=sa.Column(_EventId, primary_key=True))
    subscription_id: str = Field(max_length=64)
    event_row_id: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    event_id: str = Field(max_length=64)
    event_type: str = Field(max_length=64)
    status: str = Field(default="pending", max_length=16)
    attempts: int = 0
    last_status_code: int | None = None
    last_error: str | None = Field(default=None, max_length=2000)
    created_at: datetime = _ts()
    last_attempt_at: datetime | None = _ts(nullable=True)
    next_attempt_at: datetime = _ts()
    delivered_at: datetime | None = _ts(nullable=True)
