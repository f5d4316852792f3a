"""webhook_subscriptions.subscriber_roles: a subscription sees what its creator's feed shows

R-X-8: a webhook delivers exactly the events its subscriber's `GET /v1/events` returns (one
rule, `store.feed_access`). The subscriber is the token that created the subscription: its
`created_by`, `partner_id` and, from now on, its roles (a distributor's admin also sees the
resellers' applications addressed to its partner). Rows created before keep NULL and are read as
the role their creation required (`partner_admin` for a partner's, `ops_admin` for ops').

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 08:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("webhook_subscriptions") as batch:
        batch.add_column(sa.Column("subscriber_roles", _JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("webhook_subscriptions") as batch:
        batch.drop_column("subscriber_roles")
