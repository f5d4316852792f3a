"""Comment threads on processes (R-X-3): read from the audit trail, and the one write made
outside a workflow - a comment on a process whose workflow has closed."""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from store.lists import BadCursor
from store.models import AuditEvent, ProcessRow

COMMENT_ACTION = "commented"

# "<version>:<position>", both non-negative and at most a signed 64-bit integer (checked after)
_CURSOR = re.compile(r"([0-9]{1,19}):([0-9]{1,19})")
MAX_CURSOR_INT = 2**63 - 1


def encode_cursor(row: AuditEvent) -> str:
    """Opaque: url-safe base64 of "<version>:<position>" of the last comment on the page."""
    return base64.urlsafe_b64encode(f"{row.version}:{row.position}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[int, int]:
    try:
        text = base64.urlsafe_b64decode(cursor.encode("ascii")).decode("ascii")
        match = _CURSOR.fullmatch(text)
        if match is None:
            raise ValueError(text)
        version, position = int(match.group(1)), int(match.group(2))
    except (ValueError, UnicodeError, binascii.Error) as exc:
        raise BadCursor("the cursor is not valid") from exc
    if version > MAX_CURSOR_INT or position > MAX_CURSOR_INT:
        raise BadCursor("the cursor is not valid")
    return version, position


async def list_comments(
    session: AsyncSession, subject_id: str, *, cursor: str | None, limit: int
) -> tuple[list[AuditEvent], str | None]:
    """A process's comments, oldest first (audit order: version, position), keyset-paginated."""
    stmt = select(AuditEvent).where(
        AuditEvent.subject_id == subject_id, AuditEvent.action == COMMENT_ACTION
    )
    if cursor is not None:
        version, position = decode_cursor(cursor)
        stmt = stmt.where(
            sa.tuple_(col(AuditEvent.version), col(AuditEvent.position)) > (version, position)
        )
    stmt = stmt.order_by(col(AuditEvent.version), col(AuditEvent.position)).limit(limit + 1)
    rows = list((await session.exec(stmt)).all())
    next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor


async def add_comment_to_closed_process(
    sessions: async_sessionmaker[AsyncSession],
    *,
    process_id: str,
    actor: str,
    body: str,
    at: datetime,
    attempts: int = 5,
) -> AuditEvent:
    """Record a comment on a process whose workflow has closed: an audit row at the process's
    last version with the next free position, so it sorts after everything the workflow wrote
    and shows in GET …/history. A closed workflow writes nothing more, so only concurrent
    comments compete for a position; the loser of a race takes the next one. The process row is
    left as it is (a comment is not a state change)."""
    for _ in range(attempts):
        async with sessions() as session:
            row = await session.get(ProcessRow, process_id)
            assert row is not None, f"no process {process_id}"
            last = (
                await session.exec(
                    select(sa.func.max(AuditEvent.position)).where(
                        AuditEvent.subject_id == process_id, AuditEvent.version == row.version
                    )
                )
            ).first()
            entry = AuditEvent(
                subject_id=process_id,
                version=row.version,
                position=(last if last is not None else -1) + 1,
                at=at,
                actor=actor,
                action=COMMENT_ACTION,
                comment=body,
            )
            session.add(entry)
            try:
                await session.commit()
            except IntegrityError:
                await session.rollback()
                continue
            await session.refresh(entry)
            return entry
    raise RuntimeError(f"could not place a comment on {process_id} after {attempts} attempts")
