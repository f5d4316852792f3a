"""lists: processes.summary/addressee/search_text with list indexes; tasks.claimed_by

Revision ID: 0004
Revises: 0002
Create Date: 2026-11-30 04:30:00.000000

Existing rows are back-filled from their view (and partner name) with the same functions the
read-model writer uses from now on (domain.summaries).
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_LIST_INDEXES = {
    "ix_processes_list": ["process", "updated_at", "id"],
    "ix_processes_list_partner": ["process", "partner_id", "updated_at", "id"],
    "ix_processes_list_status": ["process", "status", "updated_at", "id"],
    "ix_processes_list_addressee": ["process", "addressee", "updated_at", "id"],
}


def upgrade() -> None:
    with op.batch_alter_table("processes", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("summary", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True)
        )
        batch_op.add_column(
            sa.Column("addressee", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True)
        )
        batch_op.add_column(
            sa.Column("search_text", sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=True)
        )
        for name, columns in _LIST_INDEXES.items():
            batch_op.create_index(name, columns, unique=False)
    if op.get_bind().dialect.name == "postgresql":
        # pg_trgm is a trusted extension (PostgreSQL 13+): the database owner may create it
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    op.create_index(
        "ix_processes_search",
        "processes",
        ["search_text"],
        unique=False,
        postgresql_using="gin",
        postgresql_ops={"search_text": "gin_trgm_ops"},
    )
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("claimed_by", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True)
        )
    _backfill()


def _backfill() -> None:
    from domain.summaries import process_addressee, process_summary, search_text

    conn = op.get_bind()
    processes = sa.table(
        "processes",
        sa.column("id", sa.String),
        sa.column("process", sa.String),
        sa.column("partner_id", sa.String),
        sa.column("view", sa.JSON),
        sa.column("summary", sa.String),
        sa.column("addressee", sa.String),
        sa.column("search_text", sa.String),
    )
    names = dict(conn.execute(sa.text("SELECT id, name FROM partners")).all())
    rows = conn.execute(
        sa.select(processes.c.id, processes.c.process, processes.c.partner_id, processes.c.view)
    ).all()
    for pid, process, partner_id, view in rows:
        summary = process_summary(process, view or {}, names.get(partner_id))
        conn.execute(
            processes.update()
            .where(processes.c.id == pid)
            .values(
                summary=summary,
                addressee=process_addressee(process, view or {}),
                search_text=search_text(process, view or {}, summary),
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("claimed_by")
    op.drop_index("ix_processes_search", table_name="processes")
    with op.batch_alter_table("processes", schema=None) as batch_op:
        for name in _LIST_INDEXES:
            batch_op.drop_index(name)
        batch_op.drop_column("search_text")
        batch_op.drop_column("addressee")
        batch_op.drop_column("summary")
