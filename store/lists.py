"""Lists of processes (GET /v1/{resource}) over the read model: who sees what, filters, and
keyset pagination newest update first.

Which rows a caller may list is decided by the one access policy (`api.access.process_filter`,
R-X-8), the same that decides single reads.
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

from api import access
from domain.principal import Principal
from store.db import as_utc
from store.models import ProcessRow


class BadCursor(ValueError):
    """The `cursor` is not one this API handed out (→ 400 PF.BAD_REQUEST)."""


def is_staff_caller(principal: Principal) -> bool:
    """R-X-8: staff tokens carry no `partner_id`; a token with one is a partner's, whatever its
    roles (`api.access.is_partner_scoped`)."""
    return not access.is_partner_scoped(principal)


def processes_visible_to(principal: Principal, process: str) -> Any:
    """The SQL condition on `processes` rows of `process` the caller may see (R-X-8), exactly as
    its single read: decided by the one access policy, `api.access.process_filter`."""
    return access.process_filter(principal, process)


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
