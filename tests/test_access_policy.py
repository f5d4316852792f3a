"""R-X-8: the two shapes of the access policy agree. `api.access` answers "may this caller see
this row" as a predicate (single reads, actions) and as SQL (lists, the inbox); for every
principal kind and every row kind, on SQLite and PostgreSQL, the SQL keeps exactly the rows the
predicate lets through — so a list can never show what a single read refuses."""

from __future__ import annotations

import itertools
from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from api import access
from domain.principal import Principal, Role
from store.db import transaction
from store.models import ProcessRow, TaskRow

PARTNERS = ("p-a", "p-b", "p-d")
PRINCIPALS = [
    Principal(sub="u-a", roles=[Role.partner_admin], partner_id="p-a"),
    Principal(sub="u-a2", roles=[Role.partner_member], partner_id="p-a"),
    Principal(sub="u-b", roles=[Role.partner_admin], partner_id="p-b"),
    Principal(sub="d-d", roles=[Role.distributor], partner_id="p-d"),
    Principal(sub="d-b", roles=[Role.distributor], partner_id="p-b"),
    Principal(sub="x-b", roles=[Role.ops_admin, Role.pdm, Role.dispatcher], partner_id="p-b"),
    Principal(sub="pdm-1", roles=[Role.pdm]),
    Principal(sub="cr-1", roles=[Role.cert_reviewer]),
    Principal(sub="fin-1", roles=[Role.finance]),
    Principal(sub="fl-1", roles=[Role.finance_lead]),
    Principal(sub="ops-1", roles=[Role.ops_admin]),
    Principal(sub="acct-1", roles=[Role.account]),
    Principal(sub="acct-2", roles=[Role.account]),
    Principal(sub="nobody", roles=[]),
]


def process_rows() -> list[ProcessRow]:
    rows = []
    for n, (process, partner) in enumerate(
        itertools.product(sorted(access.PROCESS_READERS), PARTNERS)
    ):
        rows.append(
            ProcessRow(
                id=f"row-{n}",
                process=process,
                partner_id=partner,
                status="open",
                version=1,
                view={"account_id": "acct-1", "distributor_id": "p-d" if n % 2 else "p-b"},
            )
        )
    return rows


def task_rows() -> list[TaskRow]:
    rows = []
    shapes: list[dict[str, Any]] = [
        {"assignee": "pdm-1"},
        {"candidate_role": "pdm"},
        {"candidate_role": "distributor", "assignee_partner_id": "p-d"},
        {"assignee": "d-d", "assignee_partner_id": "p-d"},
        {"assignee": "fin-2", "escalate_to_role": "finance_lead"},
        {"candidate_role": "cert_reviewer"},
    ]
    for n, (shape, partner) in enumerate(itertools.product(shapes, PARTNERS)):
        rows.append(
            TaskRow(
                id=f"task-{n}",
                kind="k",
                process="opportunity",
                process_id=f"row-{n}",
                partner_id=partner,
                status="open",
                **shape,
            )
        )
    return rows


async def test_r_x_8_list_filters_agree_with_single_reads(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    procs, tasks = process_rows(), task_rows()
    async with transaction(sessions) as session:
        session.add_all(procs)
        session.add_all(tasks)
    async with sessions() as session:
        for principal in PRINCIPALS:
            for kind in (None, *sorted(access.PROCESS_READERS)):
                listed = set(
                    (
                        await session.exec(
                            select(ProcessRow.id).where(access.process_filter(principal, kind))
                        )
                    ).all()
                )
                seen = {
                    r.id
                    for r in procs
                    if (kind is None or r.process == kind)
                    and access.may_see_process(
                        principal, process=r.process, partner_id=r.partner_id, view=r.view
                    )
                }
                assert listed == seen, (principal, kind)
            inbox = set(
                (await session.exec(select(TaskRow.id).where(access.task_filter(principal)))).all()
            )
            assert inbox == {t.id for t in tasks if access.may_see_task(principal, t)}, principal
    # and the rule itself, on a few cases
    a, b, d = PRINCIPALS[0], PRINCIPALS[2], PRINCIPALS[3]
    po_of_a = next(r for r in procs if r.process == "opportunity" and r.partner_id == "p-a")
    for principal, expected in ((a, True), (b, False), (d, False), (PRINCIPALS[5], False)):
        assert (
            access.may_see_process(principal, process="opportunity", partner_id="p-a", view={})
            is expected
        )
    assert po_of_a.partner_id == "p-a"
