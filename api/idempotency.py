"""R-X-6: exact idempotency for POST and PATCH (draft-ietf-httpapi-idempotency-key-header).

A key is scoped to the caller's `sub`, the method and the CONCRETE path (`/v1/tasks/po-1.2/
complete`, not the route template: "the same request" names one target), plus the query string
in the fingerprint. The record is taken FIRST, in flight, with the request's fingerprint
(sha256 of method, path, query and the canonical JSON body), then the answer decides:

- 2xx: stored (status, content type and the exact bytes, except a one-time `secret`/`token`,
  which is stored as null: `without_secrets`) and replayed to the same caller, key and
  request, with `Idempotent-Replayed: true`, for `idempotency_retention`
  (PT24H by default); after that the key is free again.
- 4xx: released (the record is deleted). Our refusals change nothing (R-X-2), so the client may
  fix the request and retry with the same key.
- 5xx (e.g. PF.OUTCOME_PENDING, PF.WORKER_UNAVAILABLE): kept `pending`, bound to the request:
  the effect may still happen, so a retry of the same request runs again and joins it (the
  process id allocated by the first attempt is reused, update ids are the same), while another
  request under that key is refused.
- An attempt that dies without a word (a killed API) leaves its record in flight only until
  `locked_until` (the update timeout plus 15 s); then a retry takes it over.

Same key, other request: 422 PF.IDEMPOTENCY_KEY_REUSED. Same key while the first attempt is
in flight: 409 PF.IDEMPOTENCY_KEY_IN_FLIGHT with Retry-After.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import Header
from fastapi.responses import Response
from sqlalchemy import and_, delete, or_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from api.errors import ApiError
from store.models import IdempotencyRecord

log = logging.getLogger("partnerflow.api.idempotency")

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 200

IN_FLIGHT = "in_flight"
DONE = "done"
PENDING = "pending"

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias=HEADER,
        min_length=1,
        max_length=MAX_KEY_LENGTH,
        description=(
            "R-X-6: repeat a POST/PATCH with the same key to get the first answer, never a second "
            "effect. Scoped to the caller, the method and the path; kept 24 h."
        ),
    ),
]


def scope_of(sub: str, method: str, path: str, key: str) -> str:
    """The record's primary key: sha256 of (sub, method, concrete path, key), hex."""
    return hashlib.sha256(f"{sub}\0{method}\0{path}\0{key}".encode()).hexdigest()


def canonical_body(body: bytes) -> bytes:
    """JSON bodies compare by value (key order and spacing do not matter); others by bytes."""
    if not body.strip():
        return b""
    try:
        value = json.loads(body)
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    except (ValueError, UnicodeDecodeError, RecursionError):
        # not JSON we can compare by value (syntax, UTF-8, nesting too deep): by bytes; the
        # route then refuses it with 400 PF.MALFORMED_JSON
        return body


def fingerprint(method: str, path: str, query: str, body: bytes) -> str:
    """sha256 of method, path, query string and canonical body, hex."""
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), query.encode(), canonical_body(body)):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


@dataclass(frozen=True)
class StoredAnswer:
    status_code: int
    content_type: str | None
    body: bytes

    def response(self) -> Response:
        return Response(
            content=self.body,
            status_code=self.status_code,
            media_type=self.content_type,
            headers={REPLAYED_HEADER: "true"},
        )


@dataclass(frozen=True)
class Attempt:
    """This request owns the record (`attempt` is its token); `effect_id` is the process id a
    previous attempt of the same request allocated, if any."""

    attempt: str
    effect_id: str | None


SECRET_FIELDS = frozenset({"secret", "token"})
SECRET_NOTE = (
    "shown only in the first answer; it is not kept for replays (rotate it if it was lost)"
)


def without_secrets(body: bytes) -> bytes:
    """The answer as it is stored for replay: a one-time credential (a top-level `secret` or
    `token`, e.g. a webhook signing secret or a registration link token) is never written to
    the idempotency record, so a replay says `null` (with `secret_note`) instead of showing it
    again for `idempotency_retention`. Other answers are stored byte for byte."""
    try:
        value = json.loads(body)
    except ValueError:
        return body
    if not isinstance(value, dict):
        return body
    hidden = [k for k in SECRET_FIELDS if value.get(k) is not None]
    if not hidden:
        return body
    for k in hidden:
        value[k] = None
    value["secret_note"] = SECRET_NOTE
    return json.dumps(value, separators=(",", ":")).encode()


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class IdempotencyStore:
    """The records' one writer. Every change after `begin` is conditional on the attempt token,
    so an attempt whose record was taken over (it was stale) changes nothing."""

    sessions: async_sessionmaker[AsyncSession]
    retention: timedelta
    in_flight_bound: timedelta

    async def begin(self, scope: str, print_: str) -> Attempt | StoredAnswer:
        """Take the record for this request, or say what the earlier one became.

        Raises ApiError PF.IDEMPOTENCY_KEY_REUSED (422) or PF.IDEMPOTENCY_KEY_IN_FLIGHT (409).
        """
        for _ in range(3):
            now = _now()
            attempt = uuid.uuid4().hex
            fresh: dict[str, Any] = {
                "fingerprint": print_,
                "state": IN_FLIGHT,
                "attempt": attempt,
                "created_at": now,
                "locked_until": now + self.in_flight_bound,
                "expires_at": now + self.retention,
            }
            try:
                async with self.sessions() as session, session.begin():
                    session.add(IdempotencyRecord(scope=scope, **fresh))
                return Attempt(attempt, None)
            except IntegrityError:
                pass
            async with self.sessions() as session, session.begin():
                expired = await session.exec(
                    update(IdempotencyRecord)
                    .where(
                        col(IdempotencyRecord.scope) == scope,
                        col(IdempotencyRecord.expires_at) < now,
                    )
                    .values(
                        effect_id=None, status_code=None, content_type=None, response=None, **fresh
                    )
                )
                if expired.rowcount == 1:
                    return Attempt(attempt, None)
                retaken = await session.exec(
                    update(IdempotencyRecord)
                    .where(
                        col(IdempotencyRecord.scope) == scope,
                        col(IdempotencyRecord.fingerprint) == print_,
                        or_(
                            col(IdempotencyRecord.state) == PENDING,
                            and_(
                                col(IdempotencyRecord.state) == IN_FLIGHT,
                                col(IdempotencyRecord.locked_until) < now,
                            ),
                        ),
                    )
                    .values(state=IN_FLIGHT, attempt=attempt, locked_until=fresh["locked_until"])
                )
                if retaken.rowcount == 1:
                    effect = (
                        await session.exec(
                            select(IdempotencyRecord.effect_id).where(
                                IdempotencyRecord.scope == scope
                            )
                        )
                    ).first()
                    return Attempt(attempt, effect)
            async with self.sessions() as session:
                row = await session.get(IdempotencyRecord, scope)
            if row is None:
                continue  # released meanwhile: take it
            if row.fingerprint != print_:
                raise ApiError(
                    "PF.IDEMPOTENCY_KEY_REUSED",
                    "this Idempotency-Key was used with a different request; use a new key for "
                    "a new request",
                )
            if row.state == DONE and row.status_code is not None and row.response is not None:
                return StoredAnswer(row.status_code, row.content_type, row.response)
            raise ApiError(
                "PF.IDEMPOTENCY_KEY_IN_FLIGHT",
                "the first request with this Idempotency-Key is still being processed; retry "
                "later to get its answer",
                headers={"Retry-After": "2"},
            )
        raise ApiError(  # pragma: no cover - three lost races in a row
            "PF.IDEMPOTENCY_KEY_IN_FLIGHT",
            "this Idempotency-Key is contended; retry later",
            headers={"Retry-After": "2"},
        )

    async def _change(self, scope: str, attempt: str, **values: object) -> None:
        async with self.sessions() as session, session.begin():
            await session.exec(
                update(IdempotencyRecord)
                .where(
                    col(IdempotencyRecord.scope) == scope,
                    col(IdempotencyRecord.attempt) == attempt,
                )
                .values(**values)
            )

    async def set_effect(self, scope: str, attempt: str, effect_id: str) -> None:
        await self._change(scope, attempt, effect_id=effect_id)

    async def complete(self, scope: str, attempt: str, answer: StoredAnswer) -> None:
        await self._change(
            scope,
            attempt,
            state=DONE,
            status_code=answer.status_code,
            content_type=answer.content_type,
            response=answer.body,
        )

    async def suspend(self, scope: str, attempt: str) -> None:
        await self._change(scope, attempt, state=PENDING)

    async def release(self, scope: str, attempt: str) -> None:
        async with self.sessions() as session, session.begin():
            await session.exec(
                delete(IdempotencyRecord).where(
                    col(IdempotencyRecord.scope) == scope,
                    col(IdempotencyRecord.attempt) == attempt,
                )
            )

    async def purge_expired(self) -> int:
        """Delete records past their retention; returns how many."""
        async with self.sessions() as session, session.begin():
            result = await session.exec(
                delete(IdempotencyRecord).where(col(IdempotencyRecord.expires_at) < _now())
            )
        return int(result.rowcount or 0)


@dataclass
class IdempotencyGuard:
    """What a handler knows of its request's Idempotency-Key (dependency `api.deps.Idem`).

    `new_id(prefix)` gives the id of a process this request starts: fresh (never derived from
    the key), and the same for every retry of the same request. `update_id(action, target)`
    names a workflow Update: `<action>:<target>:<sub>:<key>`, so one caller's retries are one
    Update and two callers never share one; without a key it is fresh.
    """

    key: str | None = None
    sub: str | None = None
    store: IdempotencyStore | None = None
    scope: str | None = None
    attempt: Attempt | None = None
    _effect: str | None = field(default=None, repr=False)

    async def new_id(self, prefix: str) -> str:
        if self.attempt is not None and self.attempt.effect_id is not None:
            return self.attempt.effect_id
        if self._effect is None:
            self._effect = f"{prefix}-{uuid.uuid4().hex[:20]}"
            if self.store is not None and self.scope is not None and self.attempt is not None:
                # recorded before anything starts, so a retry after a 5xx joins this process
                await self.store.set_effect(self.scope, self.attempt.attempt, self._effect)
        return self._effect

    def update_id(self, action: str, target: str) -> str:
        if self.key is None or self.sub is None:
            return f"{action}:{target}:{uuid.uuid4().hex}"
        return f"{action}:{target}:{self.sub}:{self.key}"


_last_purge: dict[int, float] = {}


async def purge_now_and_then(store: IdempotencyStore, every_seconds: float = 300.0) -> None:
    """Drop expired records at most every few minutes per API process; never fails a request."""
    mark = id(store.sessions)
    now = time.monotonic()
    if now - _last_purge.get(mark, 0.0) < every_seconds:
        return
    _last_purge[mark] = now
    try:
        await store.purge_expired()
    except Exception:  # pragma: no cover - the next purge will do
        log.warning("could not purge expired idempotency records", exc_info=True)
