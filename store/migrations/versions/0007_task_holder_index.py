"""tasks: ix_tasks_holder, the index behind a staff member's inbox (`assignee=me`)

"Mine" is "assigned to me, claimed by me, or offered to one of my roles" (store/inbox.py
`mine`). As an OR over columns no single index served it: PostgreSQL at 100,000 tasks walked
ix_tasks_due backwards and dropped 6,226 rows to find a PDM's 21 (33 ms). One expression, the
task's holder (`coalesce(assignee, claimed_by, 'role:' || candidate_role)`), turns the branches
into one indexed IN list, and ANALYZE keeps statistics on it, so the planner knows how few rows
a person holds (0.3 ms; docs/performance.md).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 04:45:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

HOLDER = "coalesce(assignee, claimed_by, 'role:' || candidate_role)"


def upgrade() -> None:
    op.create_index(
        "ix_tasks_holder", "tasks", ["status", sa.text(HOLDER), "due_at", "id"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_tasks_holder", table_name="tasks")
