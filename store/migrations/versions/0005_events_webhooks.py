"""events (the feed), webhook_subscriptions and webhook_deliveries (issue 13)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 04:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _str(length: int | None = None) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", _ID, nullable=False),
        sa.Column("txid", sa.BigInteger(), nullable=False),
        sa.Column("type", _str(64), nullable=False),
        sa.Column("process", _str(32), nullable=False),
        sa.Column("process_id", _str(200), nullable=False),
        sa.Column("partner_id", _str(64), nullable=True),
        sa.Column("audience_partner_id", _str(64), nullable=True),
        sa.Column("audience_account_id", _str(64), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("data", _JSON, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("process_id", "version", "position", name="uq_events_transition"),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index("ix_events_feed", ["txid", "id"], unique=False)
        batch_op.create_index("ix_events_partner", ["partner_id", "txid", "id"], unique=False)
        batch_op.create_index(
            "ix_events_audience_partner", ["audience_partner_id", "txid", "id"], unique=False
        )
        batch_op.create_index(
            "ix_events_audience_account", ["audience_account_id", "txid", "id"], unique=False
        )

    op.create_table(
        "webhook_subscriptions",
        sa.Column("id", _str(64), nullable=False),
        sa.Column("partner_id", _str(64), nullable=True),
        sa.Column("url", _str(2000), nullable=False),
        sa.Column("event_types", _JSON, nullable=False),
        sa.Column("secret", _str(200), nullable=False),
        sa.Column("previous_secret", _str(200), nullable=True),
        sa.Column("previous_secret_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", _str(16), nullable=False),
        sa.Column("created_by", _str(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cursor_txid", sa.BigInteger(), nullable=False),
        sa.Column("cursor_id", sa.BigInteger(), nullable=False),
        sa.Column("failure_streak", sa.Integer(), nullable=False),
        sa.Column("failing_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("disabled_reason", _str(500), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("webhook_subscriptions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_webhook_subscriptions_partner_id"), ["partner_id"], unique=False
        )

    op.create_table(
        "webhook_deliveries",
        sa.Column("id", _ID, nullable=False),
        sa.Column("subscription_id", _str(64), nullable=False),
        sa.Column("event_row_id", sa.BigInteger(), nullable=False),
        sa.Column("event_id", _str(64), nullable=False),
        sa.Column("event_type", _str(64), nullable=False),
        sa.Column("status", _str(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", _str(2000), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("subscription_id", "event_row_id", name="uq_webhook_delivery"),
    )
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.create_index(
            "ix_webhook_deliveries_due", ["status", "next_attempt_at"], unique=False
        )
        batch_op.create_index("ix_webhook_deliveries_log", ["subscription_id", "id"], unique=False)


def downgrade() -> None:
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_subscriptions")
    op.drop_table("events")
