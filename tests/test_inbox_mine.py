"""`assignee=me` (store/inbox.py `mine`) selects exactly "assigned to me, claimed by me, or
offered to one of my roles within my partner and not claimed", now that it goes through the
indexed holder expression (ix_tasks_holder, migration 0007, issue 11): the expression may only
narrow the search to the index, never add or drop a row. Enumerated over every role, every
holder shape (claims only on unassigned tasks, as the workflows keep them) and partner scope,
on SQLite and PostgreSQL.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from api.access import effective_roles, is_partner_scoped
from domain.principal import Principal, Role
from store.inbox import mine
from store.models import TaskRow

PEOPLE = ["pdm-a", "pdm-b", "role:pdm", "role:dispatcher"]  # the last two: odd ids, same text
PARTNERS = [None, "p-1", "p-2"]


def rows() -> list[TaskRow]:
    now = datetime.now(UTC)
    # (assignee, candidate_role, claimed_by)
    holders: list[tuple[str | None, str | None, str | None]] = [(p, None, None) for p in PEOPLE]
    holders += [(None, str(r), claimer) for r in Role for claimer in [None, *PEOPLE]]
    holders += [(p, str(r), None) for p in PEOPLE[:1] for r in Role]  # assigned, role left behind
    out = []
    for n, ((assignee, role, claimer), partner) in enumerate(itertools.product(holders, PARTNERS)):
        out.append(
            TaskRow(
                id=f"t-{n:04d}",
                kind="po.review",
                process="opportunity",
                process_id=f"po-{n:04d}",
                assignee=assignee,
                candidate_role=role,
                claimed_by=claimer,
                assignee_partner_id=partner,
                status="open",
                created_at=now,
                due_at=now + timedelta(hours=n) if n % 3 else None,
                body={},
            )
        )
    return out


def expected(principal: Principal, row: TaskRow) -> bool:
    """The rule as the inbox states it (main's `mine` before the index), in Python."""
    if principal.sub in (row.assignee, row.claimed_by):
        return True
    scope = principal.partner_id if is_partner_scoped(principal) else None
    offered = (
        row.assignee is None
        and row.candidate_role in {str(r) for r in effective_roles(principal)}
        and row.assignee_partner_id == scope
    )
    return offered and row.claimed_by is None


def principals() -> list[Principal]:
    everyone = [Principal(sub=sub, roles=[role]) for sub in PEOPLE for role in Role]
    everyone += [Principal(sub="pdm-a", roles=[Role.pdm, Role.dispatcher])]
    everyone += [
        Principal(sub="dist-1", roles=[Role.distributor], partner_id=partner)
        for partner in PARTNERS
    ]
    everyone += [Principal(sub="acme-admin", roles=[Role.partner_admin], partner_id="p-1")]
    return everyone


async def test_mine_is_assigned_or_offered_for_every_role_and_holder(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    table = rows()
    async with sessions() as session:
        session.add_all(table)
        await session.commit()
    async with sessions() as session:
        for principal in principals():
            got = set((await session.exec(select(TaskRow.id).where(mine(principal)))).all())
            want = {row.id for row in table if expected(principal, row)}
            assert got == want, (principal, sorted(got ^ want))
