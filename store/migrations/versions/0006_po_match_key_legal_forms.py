"""Recompute opportunities' duplicate keys with legal forms folded (R-PO-4)

`domain.opportunity.match_key` now also drops legal-form suffixes (有限公司, Co., Ltd., Inc., …):
existing rows and "one open PO per partner" claims get the key the code now computes, so an old
"Acme Co., Ltd." and a new "ACME" are duplicates, and a partner cannot open the same PO twice
by re-sending it after the upgrade. Data only; the schema does not change.

Revision ID: 0006
Revises: 0004
Create Date: 2026-11-30 05:00:00.000000
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from domain.opportunity import match_key

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

processes = sa.table(
    "processes",
    sa.column("id", sa.String),
    sa.column("process", sa.String),
    sa.column("partner_id", sa.String),
    sa.column("match_key", sa.String),
    sa.column("view", sa.JSON().with_variant(JSONB(), "postgresql")),
)
claims = sa.table(
    "claims",
    sa.column("scope", sa.String),
    sa.column("key", sa.String),
    sa.column("owner_id", sa.String),
)


def _key(view: Any) -> str | None:
    if not isinstance(view, dict):
        return None
    customer, project = view.get("customer_name"), view.get("project_name")
    if not isinstance(customer, str) or not isinstance(project, str):
        return None
    return match_key(customer, project)


def upgrade() -> None:
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(
            processes.c.id, processes.c.partner_id, processes.c.match_key, processes.c.view
        ).where(processes.c.process == "opportunity")
    ).all()
    for po_id, partner_id, old, view in rows:
        new = _key(view)
        if new is None or new == old:
            continue
        conn.execute(processes.update().where(processes.c.id == po_id).values(match_key=new))
        held = conn.execute(
            sa.select(claims.c.key).where(claims.c.scope == "po-open", claims.c.owner_id == po_id)
        ).all()
        for (claim_key,) in held:
            moved = f"{partner_id}|{new}"
            taken = conn.execute(
                sa.select(claims.c.owner_id).where(
                    claims.c.scope == "po-open", claims.c.key == moved
                )
            ).first()
            if claim_key != moved and taken is None:
                conn.execute(
                    claims.update()
                    .where(claims.c.scope == "po-open", claims.c.key == claim_key)
                    .values(key=moved)
                )


def downgrade() -> None:
    # The older keys are not kept; they were a coarser fold of the same names. Nothing to undo
    # in the schema.
    pass
