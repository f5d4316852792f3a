"""R-X-4: the outbox sender — delivers the notification rows `store.readmodel.apply_transition`
writes, by SMTP when `smtp_url` is set and to the log otherwise, once per event.

Delivery is at-least-once with receiver-side deduplication:

* A sender *claims* due rows in one short transaction by leasing them: their `next_attempt_at`
  moves `claim_lease` seconds ahead, so no other sender sees them as due. On PostgreSQL the
  claim selects with ``FOR UPDATE SKIP LOCKED``, so concurrent senders never claim the same row
  and never wait for each other; SQLite serialises writers, and the claim is one
  ``UPDATE ... RETURNING`` statement, so it is atomic there too.
* Each row is then sent outside any transaction and marked `sent` in a second short one.
* The window that remains: a crash (or a lost connection to the database) after the SMTP server
  accepted a message and before `sent` is committed leaves the row pending; when the lease runs
  out it is sent again. That second copy carries the same ``Message-ID`` — derived from the
  row's `event_key` — so mail systems and readers that deduplicate by Message-ID show it once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import smtplib
import ssl
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from typing import TYPE_CHECKING, Literal
from urllib.parse import unquote, urlsplit

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from activities.polling import exponential_backoff, lease_due, poll_until_stopped
from store.db import transaction
from store.models import OutboxMessage, utcnow

if TYPE_CHECKING:
    from config import Settings

log = logging.getLogger("partnerflow.outbox")

PENDING = "pending"
SENT = "sent"
FAILED = "failed"  # only when `max_attempts` is set and spent, or the row cannot become an email

SmtpSecurity = Literal["plain", "starttls", "tls"]
_SCHEMES: dict[str, tuple[SmtpSecurity, int]] = {
    "smtp": ("plain", 25),
    "smtp+starttls": ("starttls", 587),
    "smtps": ("tls", 465),
}


def message_id(event_key: str) -> str:
    """The Message-ID of the notification for one event: the same for every copy of it."""
    return f"<{hashlib.sha256(event_key.encode()).hexdigest()[:32]}@partnerflow>"


@dataclass(frozen=True)
class SmtpTarget:
    """Where `smtp_url` points: ``smtp://``, ``smtp+starttls://`` or ``smtps://[user:pass@]host:port``."""

    host: str
    port: int
    security: SmtpSecurity
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, url: str) -> SmtpTarget:
        parts = urlsplit(url)
        scheme = _SCHEMES.get(parts.scheme.lower())
        if scheme is None:
            raise ValueError(
                f"unsupported smtp_url scheme {parts.scheme!r} (use smtp, smtp+starttls or smtps)"
            )
        if not parts.hostname:
            raise ValueError("smtp_url has no host")
        security, default_port = scheme
        return cls(
            host=parts.hostname,
            port=parts.port or default_port,
            security=security,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
        )


@dataclass(frozen=True)
class _Claimed:
    """A row this sender holds the lease on, detached from any session."""

    id: int
    event_key: str
    recipient: str
    subject: str
    body: str
    attempts: int


class OutboxSender:
    """Sends the outbox. Built once in the worker; `run` is its loop, `deliver_due` one pass."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        smtp_url: str | None,
        mail_from: str,
        mail_domain: str,
        batch_size: int = 50,
        max_attempts: int | None = None,
        base_backoff: float = 1.0,
        max_backoff: float = 300.0,
        claim_lease: float = 300.0,
        smtp_timeout: float = 30.0,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if max_attempts is not None and max_attempts < 1:
            raise ValueError("max_attempts must be at least 1 (or None: retry forever)")
        if claim_lease <= smtp_timeout:
            raise ValueError("claim_lease must be longer than smtp_timeout")
        self._sessions = sessions
        self._smtp = SmtpTarget.parse(smtp_url) if smtp_url else None
        self._mail_from = mail_from
        self._mail_domain = mail_domain
        self._batch_size = batch_size
        self._max_attempts = max_attempts
        self._base_backoff = base_backoff
        self._max_backoff = max_backoff
        self._claim_lease = claim_lease
        self._smtp_timeout = smtp_timeout

    @classmethod
    def from_settings(
        cls, sessions: async_sessionmaker[AsyncSession], settings: Settings
    ) -> OutboxSender:
        return cls(
            sessions,
            smtp_url=settings.smtp_url,
            mail_from=settings.mail_from,
            mail_domain=settings.mail_domain,
        )

    def recipient_address(self, recipient: str) -> str:
        """Staff and partner ids that are not addresses get the configured mail domain."""
        return recipient if "@" in recipient else f"{recipient}@{self._mail_domain}"

    def backoff(self, attempts: int) -> timedelta:
        """The wait after the `attempts`-th failure (1, 2, ...): doubling, capped."""
        return timedelta(
            seconds=exponential_backoff(attempts, base=self._base_backoff, cap=self._max_backoff)
        )

    # --- one pass -----------------------------------------------------------------------------

    async def deliver_due(self) -> int:
        """Claim up to `batch_size` due rows, send each and record how it went; return the sent."""
        _, sent = await self._deliver_batch()
        return sent

    async def _deliver_batch(self) -> tuple[int, int]:
        claimed = await self._claim()
        # Stop before the lease could lapse mid-send: past it, another sender may hold the row.
        deadline = time.monotonic() + self._claim_lease - self._smtp_timeout
        sent = 0
        for position, row in enumerate(claimed):
            if time.monotonic() >= deadline:
                log.warning(
                    "outbox lease nearly spent; %d rows left for a later pass",
                    len(claimed) - position,
                )
                break
            try:
                message = self._compose(row)
            except (ValueError, TypeError) as exc:  # e.g. a line break in a header
                log.error("outbox %s cannot become an email: %s", row.event_key, exc)
                await self._mark_failed(row, exc, permanent=True)
                continue
            try:
                await self._send(message)
            except Exception as exc:  # any failure of one message must not stop the batch
                log.warning(
                    "outbox %s not delivered (attempt %d): %r", row.event_key, row.attempts + 1, exc
                )
                await self._mark_failed(row, exc, permanent=False)
                continue
            await self._mark_sent(row)
            sent += 1
        return len(claimed), sent

    async def _claim(self) -> list[_Claimed]:
        rows = await lease_due(
            self._sessions,
            OutboxMessage,
            now=utcnow(),
            batch_size=self._batch_size,
            lease_seconds=self._claim_lease,
            returning=(
                col(OutboxMessage.event_key),
                col(OutboxMessage.recipient),
                col(OutboxMessage.subject),
                col(OutboxMessage.body),
                col(OutboxMessage.attempts),
            ),
        )
        return [_Claimed(*row) for row in rows]

    async def _mark_sent(self, row: _Claimed) -> None:
        async with transaction(self._sessions) as session:
            await session.exec(
                sa.update(OutboxMessage)
                .where(col(OutboxMessage.id) == row.id)
                .where(col(OutboxMessage.status) == PENDING)
                .values(status=SENT, sent_at=utcnow(), last_error=None)
                .execution_options(synchronize_session=False)
            )

    async def _mark_failed(self, row: _Claimed, exc: Exception, *, permanent: bool) -> None:
        attempts = row.attempts + 1
        exhausted = permanent or (self._max_attempts is not None and attempts >= self._max_attempts)
        next_attempt_at: datetime = utcnow() + self.backoff(attempts)
        async with transaction(self._sessions) as session:
            await session.exec(
                sa.update(OutboxMessage)
                .where(col(OutboxMessage.id) == row.id)
                .where(col(OutboxMessage.status) == PENDING)
                .values(
                    status=FAILED if exhausted else PENDING,
                    attempts=attempts,
                    last_error=f"{type(exc).__name__}: {exc}"[:2000],
                    next_attempt_at=next_attempt_at,
                )
                .execution_options(synchronize_session=False)
            )
        if exhausted:
            log.error("outbox %s given up after %d attempts", row.event_key, attempts)

    # --- delivery -----------------------------------------------------------------------------

    def _compose(self, row: _Claimed) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self._mail_from
        message["To"] = self.recipient_address(row.recipient)
        message["Subject"] = row.subject
        message["Message-ID"] = message_id(row.event_key)
        message["Date"] = format_datetime(utcnow())
        message.set_content(row.body)
        return message

    async def _send(self, message: EmailMessage) -> None:
        if self._smtp is None:
            log.info(
                "notification (no smtp_url) Message-ID %s to %s\nSubject: %s\n\n%s",
                message["Message-ID"],
                message["To"],
                message["Subject"],
                message.get_content(),
            )
            return
        # smtplib blocks; a thread keeps the event loop (and the worker's activities) moving.
        await asyncio.to_thread(_smtp_send, self._smtp, message, self._smtp_timeout)

    # --- the loop -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, poll_interval: float = 1.0) -> None:
        """Deliver until `stop` is set. A failing pass (database down, a bug) is logged and
        retried with backoff; it never ends the loop."""

        async def one_pass() -> int:
            claimed, _ = await self._deliver_batch()
            return claimed

        await poll_until_stopped(
            one_pass,
            stop,
            log=log,
            what="outbox",
            batch_size=self._batch_size,
            poll_interval=poll_interval,
            base_backoff=self._base_backoff,
            max_backoff=self._max_backoff,
        )


def _smtp_send(target: SmtpTarget, message: EmailMessage, timeout: float) -> None:
    smtp: smtplib.SMTP
    if target.security == "tls":
        smtp = smtplib.SMTP_SSL(
            target.host, target.port, timeout=timeout, context=ssl.create_default_context()
        )
    else:
        smtp = smtplib.SMTP(target.host, target.port, timeout=timeout)
    with smtp:
        if target.security == "starttls":
            smtp.starttls(context=ssl.create_default_context())
        if target.username:
            smtp.login(target.username, target.password or "")
        smtp.send_message(message)
