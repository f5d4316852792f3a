"""R-X-4: notifications go through the outbox and are sent once per event — proved against a real
SMTP server (aiosmtpd on 127.0.0.1) and real databases (SQLite and PostgreSQL).

Outbox rows are written the way the system writes them: by `store.readmodel.apply_transition`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from typing import Any

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from activities.outbox import OutboxSender, SmtpTarget, message_id
from domain.projection import Notification, ProcessRecord, Transition
from store.db import as_utc, transaction
from store.models import OutboxMessage
from store.readmodel import apply_transition, notification_key
from tests.conftest import eventually, free_port

MAIL_FROM = "partnerflow@partners.example"
MAIL_DOMAIN = "partners.example"


# --- a real SMTP server -------------------------------------------------------------------------


@dataclass
class Received:
    rcpt_tos: list[str]
    message: EmailMessage


@dataclass
class Inbox:
    """An aiosmtpd handler that keeps every message it accepts."""

    url: str
    received: list[Received] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = message_from_bytes(envelope.original_content, policy=default_policy)
        assert isinstance(message, EmailMessage)
        self.received.append(Received(rcpt_tos=list(envelope.rcpt_tos), message=message))
        return "250 Message accepted for delivery"

    def message_ids(self) -> list[str]:
        return [str(r.message["Message-ID"]) for r in self.received]


@contextmanager
def smtp_server(port: int) -> Iterator[Inbox]:
    inbox = Inbox(url=f"smtp://127.0.0.1:{port}")
    controller = Controller(inbox, hostname="127.0.0.1", port=port, server_hostname="mx.test")
    controller.start()
    try:
        yield inbox
    finally:
        controller.stop()


@pytest.fixture
def smtp() -> Iterator[Inbox]:
    with smtp_server(free_port()) as inbox:
        yield inbox


# --- writing and reading the outbox -------------------------------------------------------------


def transition(process_id: str, version: int, *notes: Notification) -> Transition:
    now = datetime.now(UTC)
    return Transition(
        record=ProcessRecord(
            id=process_id,
            process="opportunity",
            partner_id="p-1",
            status="in_review",
            version=version,
            created_at=now,
            updated_at=now,
            view={"id": process_id},
        ),
        notifications=list(notes),
    )


async def apply(sessions: async_sessionmaker[AsyncSession], t: Transition) -> None:
    async with transaction(sessions) as session:
        await apply_transition(session, t)


async def outbox_rows(sessions: async_sessionmaker[AsyncSession]) -> list[OutboxMessage]:
    async with sessions() as session:
        rows = await session.exec(select(OutboxMessage).order_by(col(OutboxMessage.id)))
        return list(rows.all())


def sender(
    sessions: async_sessionmaker[AsyncSession], smtp_url: str | None, **kw: Any
) -> OutboxSender:
    return OutboxSender(
        sessions, smtp_url=smtp_url, mail_from=MAIL_FROM, mail_domain=MAIL_DOMAIN, **kw
    )


# --- the rule -----------------------------------------------------------------------------------


async def test_r_x_4_each_notification_is_delivered_once(
    sessions: async_sessionmaker[AsyncSession], smtp: Inbox
) -> None:
    t = transition(
        "po-100",
        3,
        Notification(recipient="pdm.li", subject="PO po-100 needs your review", body="Please."),
        Notification(recipient="owner@acme.example", subject="PO po-100 is in review", body="Hi."),
    )
    await apply(sessions, t)
    await apply(sessions, t)  # a retried activity writes nothing twice

    mailer = sender(sessions, smtp.url)
    assert await mailer.deliver_due() == 2
    assert await mailer.deliver_due() == 0

    assert len(smtp.received) == 2
    by_rcpt = {r.rcpt_tos[0]: r.message for r in smtp.received}
    assert set(by_rcpt) == {"pdm.li@partners.example", "owner@acme.example"}
    review = by_rcpt["pdm.li@partners.example"]
    assert review["Subject"] == "PO po-100 needs your review"
    assert review["From"] == MAIL_FROM
    assert review.get_content().strip() == "Please."
    key = notification_key("po-100", 3, 0)
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    assert review["Message-ID"] == f"<{digest}@partnerflow>" == message_id(key)
    owner_key = notification_key("po-100", 3, 1)
    assert by_rcpt["owner@acme.example"]["Message-ID"] == message_id(owner_key)

    rows = await outbox_rows(sessions)
    assert [(r.event_key, r.status, r.attempts) for r in rows] == [
        (notification_key("po-100", 3, 0), "sent", 0),
        (notification_key("po-100", 3, 1), "sent", 0),
    ]
    assert all(as_utc(r.sent_at) is not None for r in rows)


async def test_r_x_4_smtp_down_retries_until_it_returns(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    port = free_port()  # nothing listens here yet
    await apply(
        sessions,
        transition("po-200", 1, Notification(recipient="pdm.wang", subject="Review", body="x")),
    )
    mailer = sender(sessions, f"smtp://127.0.0.1:{port}", smtp_timeout=5.0)

    before = datetime.now(UTC)
    assert await mailer.deliver_due() == 0
    [row] = await outbox_rows(sessions)
    assert row.status == "pending"
    assert row.attempts == 1
    assert row.last_error and "Connection" in row.last_error
    next_attempt_at = as_utc(row.next_attempt_at)
    assert next_attempt_at is not None and next_attempt_at > before

    # not due yet: no second attempt is made
    assert await mailer.deliver_due() == 0
    [row] = await outbox_rows(sessions)
    assert row.attempts == 1

    with smtp_server(port) as inbox:
        async with transaction(sessions) as session:
            await session.exec(
                sa.update(OutboxMessage)
                .where(col(OutboxMessage.id) == row.id)
                .values(next_attempt_at=datetime.now(UTC) - timedelta(seconds=1))
            )
        assert await mailer.deliver_due() == 1
        assert await mailer.deliver_due() == 0

    assert inbox.message_ids() == [message_id(notification_key("po-200", 1, 0))]
    assert inbox.received[0].rcpt_tos == ["pdm.wang@partners.example"]
    [row] = await outbox_rows(sessions)
    assert (row.status, row.attempts) == ("sent", 1)
    assert row.last_error is None and row.sent_at is not None


async def test_r_x_4_two_senders_never_send_the_same_row(
    sessions: async_sessionmaker[AsyncSession], smtp: Inbox
) -> None:
    # PostgreSQL: the claim's FOR UPDATE SKIP LOCKED keeps the senders apart; SQLite serialises
    # the claiming UPDATEs. Either way each row goes out once.
    for n in range(4):
        notes = [Notification(recipient=f"pdm.{n}.{i}", subject=f"s{i}", body="") for i in range(5)]
        await apply(sessions, transition(f"po-3{n:02}", 1, *notes))
    first = sender(sessions, smtp.url, batch_size=3)
    second = sender(sessions, smtp.url, batch_size=3)

    async def drain(mailer: OutboxSender) -> int:
        total = 0
        while sent := await mailer.deliver_due():
            total += sent
        return total

    counts = await asyncio.gather(drain(first), drain(second))

    assert sum(counts) == 20
    ids = smtp.message_ids()
    assert len(ids) == 20
    assert len(set(ids)) == 20
    rows = await outbox_rows(sessions)
    assert {message_id(r.event_key) for r in rows} == set(ids)
    assert {r.status for r in rows} == {"sent"}


async def test_r_x_4_without_smtp_url_notifications_are_logged(
    sessions: async_sessionmaker[AsyncSession], caplog: pytest.LogCaptureFixture
) -> None:
    await apply(
        sessions,
        transition(
            "po-400", 2, Notification(recipient="pdm.zhao", subject="Please review", body="Body!")
        ),
    )
    caplog.set_level(logging.INFO, logger="partnerflow.outbox")

    mailer = sender(sessions, None)
    assert await mailer.deliver_due() == 1
    assert await mailer.deliver_due() == 0

    logged = [
        r for r in caplog.records if r.name == "partnerflow.outbox" and r.levelno == logging.INFO
    ]
    assert len(logged) == 1
    text = logged[0].getMessage()
    assert "pdm.zhao@partners.example" in text
    assert "Please review" in text and "Body!" in text
    assert message_id(notification_key("po-400", 2, 0)) in text
    [row] = await outbox_rows(sessions)
    assert row.status == "sent" and row.sent_at is not None


def test_r_x_4_smtp_url_forms_are_understood() -> None:
    plain = SmtpTarget.parse("smtp://mail.internal:2525")
    assert (plain.host, plain.port, plain.security, plain.username) == (
        "mail.internal",
        2525,
        "plain",
        None,
    )
    starttls = SmtpTarget.parse("smtp+starttls://bot%40corp:s%3Acret@smtp.corp.example")
    assert (starttls.port, starttls.security) == (587, "starttls")
    assert (starttls.username, starttls.password) == ("bot@corp", "s:cret")
    assert "s:cret" not in repr(starttls)
    assert SmtpTarget.parse("smtps://smtp.corp.example").port == 465
    with pytest.raises(ValueError, match="scheme"):
        SmtpTarget.parse("http://smtp.corp.example")


async def test_r_x_4_the_sender_loop_delivers_until_stopped(
    sessions: async_sessionmaker[AsyncSession], smtp: Inbox
) -> None:
    mailer = sender(sessions, smtp.url)
    stop = asyncio.Event()
    loop = asyncio.create_task(mailer.run(stop, poll_interval=0.05))
    try:
        await apply(
            sessions,
            transition("po-500", 1, Notification(recipient="pdm.sun", subject="Hi", body="b")),
        )

        async def sent() -> bool:
            return [r.status for r in await outbox_rows(sessions)] == ["sent"]

        await eventually(sent, what="the loop to deliver the notification")
    finally:
        stop.set()
        await asyncio.wait_for(loop, timeout=10)
    assert smtp.message_ids() == [message_id(notification_key("po-500", 1, 0))]
