"""Who the service knows, by capacity: the people an outcome may name (`domain.tasks.NamesPerson`).

There is no staff directory (DESIGN §1: reviewers are whoever the vendor's identity provider
issues tokens to). What the service does keep is the routing table (R-PO-2, `PUT
/v1/admin/routing-rules`): it names every PDM a PO can be routed to and every PSM, and the
policy's `unmatched_psm` is the unified PSM contact (R-PO-3). A dispatcher dispatching to
someone outside it would route a PO to a person nobody maintains, so the routing table is the
directory: to add a PDM, ops add them to the routing table.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from domain.policy import Policy
from domain.tasks import TaskKind
from store.models import RoutingRule


async def _pdms(session: AsyncSession, policy: Policy) -> set[str]:
    rows = await session.exec(select(RoutingRule.pdm).distinct())
    return set(rows.all())


async def _psms(session: AsyncSession, policy: Policy) -> set[str]:
    rows = await session.exec(
        select(RoutingRule.psm).where(col(RoutingRule.psm).is_not(None)).distinct()
    )
    return {psm for psm in rows.all() if psm is not None} | {policy.unmatched_psm}


# capacity -> who holds it. Every `NamesPerson.directory` of every outcome data model is a key
# here (tests/test_completion_data.py checks it).
DIRECTORIES: dict[str, Callable[[AsyncSession, Policy], Awaitable[set[str]]]] = {
    "pdm": _pdms,
    "psm": _psms,
}


async def known_people(session: AsyncSession, directory: str, policy: Policy) -> set[str]:
    """Everyone `directory` knows (`DIRECTORIES`): the routing table's PDMs, or its PSMs plus
    the policy's `unmatched_psm`. KeyError for a directory nobody registered."""
    return await DIRECTORIES[directory](session, policy)


async def unlisted_holder(
    session: AsyncSession, kind: TaskKind, person: str, policy: Policy
) -> set[str] | None:
    """Whether `person` may be given a task of `kind` as the directory sees it: None if they
    may (or the kind's holders are not listed: `TaskKind.holder_directory` is None), else the
    people who may (for the refusal, 422 PF.PERSON_UNKNOWN). The API's reassign route and the
    ops CLI's `reassign` both ask it."""
    if kind.holder_directory is None:
        return None
    known = await known_people(session, kind.holder_directory, policy)
    return None if person in known else known
