"""Lists of processes (GET /v1/{resource}) over the read model: who sees what, filters, and
keyset pagination newest update first.

`processes_visible_to` is the one place that says which process rows a caller may list (R-X-8).
It mirrors the single reads (api/routes/*: `load_*`) and is written so it can be folded into a
shared access-policy module: it takes a `Principal` and returns a SQL condition.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from domain.principal import Principal, Role
from store.db import as_utc
from store.models import ProcessRow

# Processes addressed to a personal account (`addressee` = the account id): the invited
# account lists its invitations, a customer the dissociation requests sent to it.
ADDRESSED_TO_ACCOUNT = frozenset({"invitation", "dissociation"})
# Processes addressed to a partner (`addressee` = a partner id), seen by its users with the
# role: a distributor's users list the reseller applications sent to their partner.
ADDRESSED_TO_PARTNER_ROLE: dict[str, Role] = {"reseller_application": Role.distributor}
# Processes staff see only with one of these roles (as their single reads); others: any staff.
STAFF_ROLES_FOR: dict[str, frozenset[Role]] = {
    "reseller_application": frozenset({Role.ops_admin}),
}


class BadCursor(ValueError):
    """The `cursor` is not one this API handed out (→ 400 PF.BAD_REQUEST)."""


def is_staff_caller(principal: Principal) -> bool:
    """R-X-8: staff are callers with a staff role and no `partner_id`; a token carrying a
    `partner_id` is a partner's, whatever its roles (a distributor's users included)."""
    return principal.partner_id is None and principal.is_staff


def processes_visible_to(principal: Principal, process: str) -> Any:
    """The SQL condition on `processes` rows of `process` the caller may see (R-X-8):

    - staff (no `partner_id`, a staff role): every row, except where `STAFF_ROLES_FOR` narrows
      it (reseller applications: ops_admin only);
    - a caller with `partner_id`: its own partner's rows; with the `distributor` role also the
      reseller applications addressed to its partner;
    - an `account` (sub = account id): the invitations and dissociation requests addressed to it;
    - anyone else: nothing.
    """
    clauses: list[Any] = []
    if is_staff_caller(principal):
        needed = STAFF_ROLES_FOR.get(process)
        if needed is None or principal.has(*needed):
            return sa.true()
    if principal.partner_id is not None:
        clauses.append(col(ProcessRow.partner_id) == principal.partner_id)
        role = ADDRESSED_TO_PARTNER_ROLE.get(process)
        if role is not None and principal.has(role):
            clauses.append(col(ProcessRow.addressee) == principal.partner_id)
    if process in ADDRESSED_TO_ACCOUNT and principal.has(Role.account):
        clauses.append(col(ProcessRow.addressee) == principal.sub)
    return sa.or_(*clauses) if clauses else sa.false()


def encode_cursor(row: ProcessRow) -> str:
    """Opaque: url-safe base64 of {"u": updated_at ISO 8601 UTC, "i": id}."""
    updated = as_utc(row.updated_at)
    assert updated is not None
    raw = json.dumps({"u": updated.isoformat(), "i": row.id}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """(updated_at, id) of the last row of the previous page; BadCursor if it is not ours."""
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        updated = as_utc(datetime.fromisoformat(raw["u"]))
        last_id = raw["i"]
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise BadCursor("the cursor is not valid") from exc
    if updated is None or not isinstance(last_id, str):
        raise BadCursor("the cursor is not valid")
    return updated, last_id


@dataclass(frozen=True)
class ListFilters:
    """A list's filters. `updated_after` is UTC (the API converts any offset); `q` matches the
    lower-cased `search_text` as a substring; `partner_id` narrows to one owner partner (the
    API allows it to staff, and to a partner's users for their own partner only)."""

    status: str | None = None
    updated_after: datetime | None = None
    partner_id: str | None = None
    q: str | None = None


def _like_pattern(q: str) -> str:
    escaped = q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def list_processes(
    session: AsyncSession,
    principal: Principal,
    *,
    process: str,
    filters: ListFilters,
    cursor: str | None,
    limit: int,
) -> tuple[list[ProcessRow], str | None]:
    """One page of `process` rows visible to the caller, newest update first (updated_at desc,
    id desc), and the cursor of the next page (None on the last).

    Keyset pagination on (updated_at, id): a row is on exactly one page however many rows share
    an `updated_at`, and rows updated between two page reads move to the front rather than
    being repeated. Each page is one index walk (ix_processes_list*, migration 0004).
    Raises BadCursor.
    """
    stmt = (
        select(ProcessRow)
        .where(col(ProcessRow.process) == process)
        .where(processes_visible_to(principal, process))
    )
    if filters.status is not None:
        stmt = stmt.where(col(ProcessRow.status) == filters.status)
    if filters.partner_id is not None:
        stmt = stmt.where(col(ProcessRow.partner_id) == filters.partner_id)
    if filters.updated_after is not None:
        stmt = stmt.where(col(ProcessRow.updated_at) > filters.updated_after)
    if filters.q:
        stmt = stmt.where(col(ProcessRow.search_text).like(_like_pattern(filters.q), escape="\\"))
    if cursor is not None:
        updated, last_id = decode_cursor(cursor)
        stmt = stmt.where(
            sa.tuple_(col(ProcessRow.updated_at), col(ProcessRow.id)) < (updated, last_id)
        )
    stmt = stmt.order_by(col(ProcessRow.updated_at).desc(), col(ProcessRow.id).desc())
    rows = list((await session.exec(stmt.limit(limit + 1))).all())
    next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor


async def may_see_process(session: AsyncSession, principal: Principal, row: ProcessRow) -> bool:
    """Whether the caller may see this one process row: `processes_visible_to`, for one row."""
    found = await session.exec(
        select(ProcessRow.id).where(
            col(ProcessRow.id) == row.id, processes_visible_to(principal, row.process)
        )
    )
    return found.first() is not None
