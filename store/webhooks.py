"""Webhook subscriptions and deliveries in the store: create, rotate, dispatch, record attempts.

Dispatch is the outbox pattern over the event feed: each subscription keeps a cursor into the
feed (`cursor_txid`, `cursor_id`); one transaction reads the events after it that the
subscription may see and selects, inserts a delivery row for each (unique per subscription and
event) and moves the cursor. The cursor and the rows move together, so every event after the
subscription was created gets exactly one delivery row, across crashes and restarts; the sender
then retries each row until the receiver answers 2xx (at least once per event).
"""

from __future__ import annotations

import base64
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from domain.events import matches
from store.db import as_utc, transaction
from store.events import encode_event_id, feed_head, read_feed
from store.feed_access import event_scope, read_visible, subscriber
from store.models import OutboxMessage, WebhookDelivery, WebhookSubscription, utcnow

ACTIVE = "active"
DISABLED = "disabled"
PENDING = "pending"
DELIVERED = "delivered"


def new_secret() -> str:
    """A Standard Webhooks signing secret: `whsec_` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def new_subscription_id() -> str:
    return f"whs_{uuid.uuid4().hex}"


async def create_subscription(
    session: AsyncSession,
    *,
    partner_id: str | None,
    url: str,
    event_types: list[str],
    created_by: str,
    subscriber_roles: list[str],
) -> WebhookSubscription:
    """Insert an active subscription starting at the feed's head (caller commits). It delivers
    what the subscriber (`created_by` with `subscriber_roles` and `partner_id`) sees in the
    feed (`store.feed_access.subscriber`)."""
    cursor_txid, cursor_id = await feed_head(session)
    now = utcnow()
    sub = WebhookSubscription(
        id=new_subscription_id(),
        partner_id=partner_id,
        url=url,
        event_types=event_types,
        secret=new_secret(),
        status=ACTIVE,
        created_by=created_by,
        subscriber_roles=subscriber_roles,
        created_at=now,
        updated_at=now,
        cursor_txid=cursor_txid,
        cursor_id=cursor_id,
    )
    session.add(sub)
    return sub


def rotate(sub: WebhookSubscription, *, grace: timedelta) -> str:
    """A new secret; the old one keeps signing (alongside) for `grace`. Returns the new one."""
    now = utcnow()
    sub.previous_secret = sub.secret
    sub.previous_secret_expires_at = now + grace
    sub.secret = new_secret()
    sub.updated_at = now
    return sub.secret


def signing_secrets(
    secret: str, previous: str | None, previous_expires_at: datetime | None, now: datetime
) -> list[str]:
    """The secrets a delivery is signed with now: the current one, and the previous one during
    its grace period after a rotation."""
    expires = as_utc(previous_expires_at)
    if previous and expires is not None and now < expires:
        return [secret, previous]
    return [secret]


def _insert_delivery(session: AsyncSession) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(WebhookDelivery)
    return sqlite.insert(WebhookDelivery)


async def dispatch_subscription(
    sessions: async_sessionmaker[AsyncSession], subscription_id: str, *, batch_size: int
) -> int:
    """Turn up to `batch_size` feed events after the subscription's cursor into delivery rows
    (those its `event_types` select), and move the cursor past all of them, in one transaction.
    Returns how many events were read (a full batch: call again)."""
    async with transaction(sessions) as session:
        # Lock the subscription first: concurrent dispatchers take turns (and on SQLite the
        # write lock is taken before reading, as every read-then-write here must).
        locked = (
            await session.exec(
                sa.update(WebhookSubscription)
                .where(col(WebhookSubscription.id) == subscription_id)
                .where(col(WebhookSubscription.status) == ACTIVE)
                .values(cursor_id=WebhookSubscription.cursor_id)
                .returning(
                    col(WebhookSubscription.cursor_txid),
                    col(WebhookSubscription.cursor_id),
                    col(WebhookSubscription.event_types),
                )
                .execution_options(synchronize_session=False)
            )
        ).first()
        if locked is None:
            return 0  # deleted or disabled meanwhile
        cursor_txid, cursor_id, event_types = locked
        sub = await session.get(WebhookSubscription, subscription_id)
        assert sub is not None
        # exactly what the subscriber's GET /v1/events shows (R-X-8): one rule, not a copy
        page = await read_visible(
            session, subscriber(sub), after=(cursor_txid, cursor_id), limit=batch_size
        )
        if page.cursor is None:
            return 0
        now = utcnow()
        for event in page.visible:
            assert event.id is not None
            if not matches(list(event_types), event.type):
                continue
            stmt = _insert_delivery(session).values(
                subscription_id=subscription_id,
                event_row_id=event.id,
                event_id=encode_event_id(event.txid, event.id),
                event_type=event.type,
                status=PENDING,
                attempts=0,
                created_at=now,
                next_attempt_at=now,
            )
            await session.exec(stmt.on_conflict_do_nothing())
        # past every row read, shown or not
        await session.exec(
            sa.update(WebhookSubscription)
            .where(col(WebhookSubscription.id) == subscription_id)
            .values(cursor_txid=page.cursor[0], cursor_id=page.cursor[1])
            .execution_options(synchronize_session=False)
        )
        return page.read


async def subscriptions_with_new_events(
    sessions: async_sessionmaker[AsyncSession],
) -> list[str]:
    """Active subscriptions with servable events past their cursor: read-only, so an idle pass
    takes no write lock (SQLite has one for the whole database)."""
    async with sessions() as session:
        subs = (
            await session.exec(
                select(WebhookSubscription)
                .where(WebhookSubscription.status == ACTIVE)
                .order_by(col(WebhookSubscription.id))
            )
        ).all()
        due = []
        for sub in subs:
            after = (sub.cursor_txid, sub.cursor_id)
            scope = event_scope(subscriber(sub))
            if await read_feed(session, scope, after=after, limit=1):
                due.append(sub.id)
        return due


@dataclass(frozen=True)
class Attempt:
    """How one delivery attempt went."""

    delivery_id: int
    subscription_id: str
    ok: bool
    status_code: int | None
    error: str | None
    at: datetime


async def record_success(sessions: async_sessionmaker[AsyncSession], attempt: Attempt) -> None:
    """The receiver answered 2xx: the delivery is done, the subscription's failure streak ends."""
    async with transaction(sessions) as session:
        await session.exec(
            sa.update(WebhookDelivery)
            .where(col(WebhookDelivery.id) == attempt.delivery_id)
            .where(col(WebhookDelivery.status) == PENDING)
            .values(
                status=DELIVERED,
                attempts=WebhookDelivery.attempts + 1,
                last_status_code=attempt.status_code,
                last_error=None,
                last_attempt_at=attempt.at,
                delivered_at=attempt.at,
            )
            .execution_options(synchronize_session=False)
        )
        await session.exec(
            sa.update(WebhookSubscription)
            .where(col(WebhookSubscription.id) == attempt.subscription_id)
            .where(col(WebhookSubscription.failure_streak) > 0)
            .values(failure_streak=0, failing_since=None)
            .execution_options(synchronize_session=False)
        )


async def record_failure(
    sessions: async_sessionmaker[AsyncSession],
    attempt: Attempt,
    *,
    retry_in: timedelta,
    disable_after_failures: int,
    disable_after: timedelta,
) -> bool:
    """Log a failed attempt and schedule the next; disable the subscription when it has failed
    `disable_after_failures` times in a row or for `disable_after`, and tell its owner by the
    e-mail outbox (once). Returns whether this attempt disabled it."""
    async with transaction(sessions) as session:
        await session.exec(
            sa.update(WebhookDelivery)
            .where(col(WebhookDelivery.id) == attempt.delivery_id)
            .where(col(WebhookDelivery.status) == PENDING)
            .values(
                attempts=WebhookDelivery.attempts + 1,
                last_status_code=attempt.status_code,
                last_error=(attempt.error or "")[:2000] or None,
                last_attempt_at=attempt.at,
                next_attempt_at=attempt.at + retry_in,
            )
            .execution_options(synchronize_session=False)
        )
        row = (
            await session.exec(
                sa.update(WebhookSubscription)
                .where(col(WebhookSubscription.id) == attempt.subscription_id)
                .values(
                    failure_streak=WebhookSubscription.failure_streak + 1,
                    failing_since=sa.func.coalesce(WebhookSubscription.failing_since, attempt.at),
                )
                .returning(
                    col(WebhookSubscription.failure_streak),
                    col(WebhookSubscription.failing_since),
                    col(WebhookSubscription.status),
                    col(WebhookSubscription.created_by),
                    col(WebhookSubscription.url),
                )
                .execution_options(synchronize_session=False)
            )
        ).first()
        if row is None:
            return False  # deleted meanwhile
        streak, failing_since, status, owner, url = row
        since = as_utc(failing_since) or attempt.at
        if status != ACTIVE:
            return False
        if streak < disable_after_failures and attempt.at - since < disable_after:
            return False
        reason = (
            f"{streak} failed deliveries in a row since {since.isoformat()}; "
            f"last: {attempt.status_code or attempt.error}"
        )[:500]
        await session.exec(
            sa.update(WebhookSubscription)
            .where(col(WebhookSubscription.id) == attempt.subscription_id)
            .values(status=DISABLED, disabled_at=attempt.at, disabled_reason=reason)
            .execution_options(synchronize_session=False)
        )
        session.add(
            OutboxMessage(
                event_key=f"webhook-disabled:{attempt.subscription_id}:{attempt.at.isoformat()}",
                recipient=owner,
                subject=f"Webhook subscription {attempt.subscription_id} disabled",
                body=(
                    f"Deliveries to {url} kept failing ({reason}), so the subscription "
                    f"{attempt.subscription_id} is disabled. Pending deliveries are kept: fix the "
                    f"receiver, then POST /v1/webhook-subscriptions/{attempt.subscription_id}"
                    "/enable to resume from where it stopped."
                ),
                status="pending",
                attempts=0,
                created_at=attempt.at,
                next_attempt_at=attempt.at,
            )
        )
        return True
