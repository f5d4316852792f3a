"""tasks.assignee_partner_id: a task offered to a role within one partner (R-RES-1)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 04:44:14.222260
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "assignee_partner_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True
            )
        )
        batch_op.create_index(
            batch_op.f("ix_tasks_assignee_partner_id"), ["assignee_partner_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tasks_assignee_partner_id"))
        batch_op.drop_column("assignee_partner_id")
