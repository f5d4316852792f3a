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
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from api import access
from domain.principal import Principal
from store.db import as_utc
from store.models import ProcessRow


def cursor_json(cursor: str) -> Any:
    """The JSON inside an opaque cursor (url-safe base64); BadCursor for anything else, never
    another exception (deep nesting, bad UTF-8, non-base64)."""
    try:
        return json.loads(base64.urlsafe_b64decode(cursor.encode("ascii")))
    except (ValueError, UnicodeError, binascii.Error, RecursionError) as exc:
        raise BadCursor("the cursor is not valid") from exc


def cursor_time(value: object) -> datetime:
    """A cursor's ISO time as UTC; BadCursor if it is not one, or is out of range in UTC."""
    try:
        if not isinstance(value, str):
            raise TypeError(value)
        moment = datetime.fromisoformat(value)
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except (ValueError, TypeError, OverflowError) as exc:
        raise BadCursor("the cursor is not valid") from exc


def cursor_id(value: object) -> str:
    """A cursor's row id: a short printable string (NUL would be a 500 on PostgreSQL)."""
    if not isinstance(value, str) or len(value) > 200 or not value.isprintable():
        raise BadCursor("the cursor is not valid")
    return value


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
    raw = cursor_json(cursor)
    if not isinstance(raw, dict):
        raise BadCursor("the cursor is not valid")
    return cursor_time(raw.get("u")), cursor_id(raw.get("i"))


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
    if filters.q is not None:
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
