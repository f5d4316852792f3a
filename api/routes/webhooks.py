"""Webhook subscriptions: subscribe a URL to event types, read the delivery log, rotate the
signing secret, enable again after a disable, unsubscribe (DESIGN §3; issue 13).

A subscription receives exactly the events its creator sees in `GET /v1/events` (R-X-8, one
rule: `store.feed_access`): a partner admin's, its own partner's (and, with `distributor`, the
resellers' applications addressed to its partner); an ops admin's, every partner's. Nothing here
sends anything: the worker delivers (`activities.webhooks`), so no request waits for a receiver.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import Query, Response
from pydantic import AnyUrl, BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from activities.webhooks import WebhookUrlRefused, check_webhook_url
from api import access
from api.auth import CurrentUser
from api.deps import SessionsDep, SettingsDep
from api.errors import ApiError
from api.frame import command_router
from config import Environment
from domain.events import unknown_patterns
from domain.principal import Principal, Role
from domain.values import url_credentials_refusal
from store.db import transaction
from store.events import utc_z
from store.models import WebhookDelivery, WebhookSubscription, utcnow
from store.webhooks import ACTIVE, DISABLED, create_subscription, rotate

router = command_router(prefix="/v1/webhook-subscriptions", tags=["webhooks"])


class WebhookSubscriptionCreate(BaseModel):
    """`url`: where deliveries go (https outside development; no credentials in it).
    `event_types`: exact types (`opportunity.approved`, `task.opened`) or wildcards (`*`,
    `<process>.*` like `task.*`). An unknown field is refused with 422."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "url": "https://portal.example/hooks/partnerflow",
                    "event_types": ["opportunity.*", "task.opened"],
                }
            ]
        },
    )

    url: AnyUrl
    event_types: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        min_length=1, max_length=50
    )

    @field_validator("url")
    @classmethod
    def _length_and_no_credentials(cls, url: AnyUrl) -> AnyUrl:
        """At most 2000 characters, and no credentials (`https://user:pass@host/…`): the URL is
        stored and shown in the subscription and its delivery log; receivers authenticate us
        by the signature (Standard Webhooks), not by a secret in the URL."""
        if len(str(url)) > 2000:
            raise ValueError("the URL is longer than 2000 characters")
        why = url_credentials_refusal(str(url))
        if url.username is not None or url.password is not None or why is not None:
            raise ValueError(why or "the URL must not carry credentials")
        return url


class WebhookSubscriptionPublic(BaseModel):
    """A subscription. `status`: active or disabled (it kept failing: see `disabled_reason`,
    then POST …/enable). `secret` (`whsec_…`) is shown only in the answers that create it:
    the subscription's creation and a rotation."""

    id: str
    url: str
    event_types: list[str]
    partner_id: str | None
    status: str
    created_by: str
    created_at: str | None
    failure_streak: int
    failing_since: str | None
    disabled_at: str | None
    disabled_reason: str | None
    previous_secret_expires_at: str | None
    secret: str | None = None


class WebhookSubscriptionPage(BaseModel):
    items: list[WebhookSubscriptionPublic]
    next_cursor: str | None = None


class DeliveryPublic(BaseModel):
    """One event for one subscription: how its delivery went so far (times UTC)."""

    id: int
    event_id: str
    event_type: str
    status: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    created_at: str | None
    last_attempt_at: str | None
    next_attempt_at: str | None
    delivered_at: str | None


class DeliveryPage(BaseModel):
    items: list[DeliveryPublic]
    next_cursor: str | None


def public(sub: WebhookSubscription, *, secret: str | None = None) -> dict[str, Any]:
    return WebhookSubscriptionPublic(
        id=sub.id,
        url=sub.url,
        event_types=list(sub.event_types),
        partner_id=sub.partner_id,
        status=sub.status,
        created_by=sub.created_by,
        created_at=utc_z(sub.created_at),
        failure_streak=sub.failure_streak,
        failing_since=utc_z(sub.failing_since),
        disabled_at=utc_z(sub.disabled_at),
        disabled_reason=sub.disabled_reason,
        previous_secret_expires_at=utc_z(sub.previous_secret_expires_at),
        secret=secret,
    ).model_dump(mode="json")


def subscriber_scope(principal: Principal) -> str | None:
    """The partner whose events the caller may subscribe to; None: all partners (ops).

    Raises PF.FORBIDDEN unless the caller is a partner admin or an ops admin (R-X-8: a token
    with `partner_id` only ever its own partner's)."""
    if access.is_partner_scoped(principal):
        if access.has_role(principal, Role.partner_admin):
            return principal.partner_id
    elif access.has_role(principal, Role.ops_admin):
        return None
    raise ApiError(
        "PF.FORBIDDEN", "only a partner's admins (partner_admin) or ops_admin manage webhooks"
    )


def _visible(principal: Principal) -> Any:
    partner_id = subscriber_scope(principal)
    if partner_id is None:
        return sa.true()
    return col(WebhookSubscription.partner_id) == partner_id


async def _load(
    sessions: async_sessionmaker[AsyncSession], principal: Principal, subscription_id: str
) -> WebhookSubscription:
    async with sessions() as session:
        sub: WebhookSubscription | None = (
            await session.exec(
                select(WebhookSubscription)
                .where(WebhookSubscription.id == subscription_id)
                .where(_visible(principal))
            )
        ).first()
    if sub is None:  # another partner's is as unknown as a missing one
        raise ApiError(
            "PF.WEBHOOK_SUBSCRIPTION_NOT_FOUND", f"no webhook subscription {subscription_id}"
        )
    return sub


@router.post("", status_code=201, response_model=WebhookSubscriptionPublic)
async def create_webhook_subscription(
    body: WebhookSubscriptionCreate,
    principal: CurrentUser,
    sessions: SessionsDep,
    settings: SettingsDep,
) -> Any:
    """Subscribe `url` to `event_types`; deliveries start with the events committed after this,
    and are the events the caller sees in `GET /v1/events` (its roles are kept with it).

    The answer carries the signing `secret` (`whsec_…`), once. Raises PF.FORBIDDEN,
    PF.VALIDATION_FAILED (an event type no event can have), PF.WEBHOOK_URL_REFUSED (plain http
    or a loopback/private/link-local address outside development: SSRF)."""
    partner_id = subscriber_scope(principal)
    unknown = unknown_patterns(body.event_types)
    if unknown:
        raise ApiError(
            "PF.VALIDATION_FAILED",
            "no event has these types; use `<process>.<status>`, `<process>.*`, `task.*` or `*`",
            {"event_types": unknown},
        )
    url = str(body.url)
    try:
        await check_webhook_url(url, production=settings.env is Environment.production)
    except WebhookUrlRefused as exc:
        raise ApiError("PF.WEBHOOK_URL_REFUSED", str(exc), {"url": url[:200]}) from exc

    async with transaction(sessions) as session:
        sub = await create_subscription(
            session,
            partner_id=partner_id,
            url=url,
            event_types=sorted(set(body.event_types)),
            created_by=principal.sub,
            subscriber_roles=sorted(str(r) for r in access.effective_roles(principal)),
        )
    return public(sub, secret=sub.secret)


@router.get("", response_model=WebhookSubscriptionPage)
async def list_webhook_subscriptions(principal: CurrentUser, sessions: SessionsDep) -> Any:
    """The caller's partner's subscriptions (ops admin: all), oldest first."""
    async with sessions() as session:
        rows = (
            await session.exec(
                select(WebhookSubscription)
                .where(_visible(principal))
                .order_by(col(WebhookSubscription.created_at), col(WebhookSubscription.id))
            )
        ).all()
    return {"items": [public(s) for s in rows], "next_cursor": None}


@router.get("/{subscription_id}", response_model=WebhookSubscriptionPublic)
async def get_webhook_subscription(
    subscription_id: str, principal: CurrentUser, sessions: SessionsDep
) -> Any:
    return public(await _load(sessions, principal, subscription_id))


@router.delete("/{subscription_id}", status_code=204)
async def delete_webhook_subscription(
    subscription_id: str, principal: CurrentUser, sessions: SessionsDep
) -> Response:
    """Unsubscribe: the subscription and its delivery log are gone; nothing more is sent."""
    await _load(sessions, principal, subscription_id)
    async with transaction(sessions) as session:
        await session.exec(
            sa.delete(WebhookDelivery)
            .where(col(WebhookDelivery.subscription_id) == subscription_id)
            .execution_options(synchronize_session=False)
        )
        await session.exec(
            sa.delete(WebhookSubscription)
            .where(col(WebhookSubscription.id) == subscription_id)
            .execution_options(synchronize_session=False)
        )
    return Response(status_code=204)


@router.post("/{subscription_id}/rotate-secret", response_model=WebhookSubscriptionPublic)
async def rotate_webhook_secret(
    subscription_id: str,
    principal: CurrentUser,
    sessions: SessionsDep,
    settings: SettingsDep,
) -> Any:
    """A new signing secret, shown once. Until `previous_secret_expires_at`
    (`WEBHOOKS__ROTATION_GRACE_SECONDS`) deliveries carry a signature by each secret, so a
    receiver that still checks the old one loses nothing while it switches."""
    await _load(sessions, principal, subscription_id)

    async with transaction(sessions) as session:
        sub = (
            await session.exec(
                select(WebhookSubscription)
                .where(WebhookSubscription.id == subscription_id)
                .with_for_update()
            )
        ).first()
        if sub is None:
            raise ApiError(
                "PF.WEBHOOK_SUBSCRIPTION_NOT_FOUND",
                f"no webhook subscription {subscription_id}",
            )
        secret = rotate(sub, grace=timedelta(seconds=settings.webhooks.rotation_grace_seconds))
        session.add(sub)
    return public(sub, secret=secret)


@router.post("/{subscription_id}/enable", response_model=WebhookSubscriptionPublic)
async def enable_webhook_subscription(
    subscription_id: str, principal: CurrentUser, sessions: SessionsDep
) -> Any:
    """Resume a disabled subscription where it stopped: its pending deliveries are sent and the
    events since are dispatched. Enabling an active one changes nothing."""
    await _load(sessions, principal, subscription_id)
    async with transaction(sessions) as session:
        await session.exec(
            sa.update(WebhookSubscription)
            .where(col(WebhookSubscription.id) == subscription_id)
            .where(col(WebhookSubscription.status) == DISABLED)
            .values(
                status=ACTIVE,
                failure_streak=0,
                failing_since=None,
                disabled_at=None,
                disabled_reason=None,
                updated_at=utcnow(),
            )
            .execution_options(synchronize_session=False)
        )
        await session.exec(
            sa.update(WebhookDelivery)
            .where(col(WebhookDelivery.subscription_id) == subscription_id)
            .where(col(WebhookDelivery.status) == "pending")
            .values(next_attempt_at=utcnow())
            .execution_options(synchronize_session=False)
        )
    return public(await _load(sessions, principal, subscription_id))


def _delivery(row: WebhookDelivery) -> dict[str, Any]:
    assert row.id is not None
    return DeliveryPublic(
        id=row.id,
        event_id=row.event_id,
        event_type=row.event_type,
        status=row.status,
        attempts=row.attempts,
        last_status_code=row.last_status_code,
        last_error=row.last_error,
        created_at=utc_z(row.created_at),
        last_attempt_at=utc_z(row.last_attempt_at),
        next_attempt_at=utc_z(row.next_attempt_at) if row.status == "pending" else None,
        delivered_at=utc_z(row.delivered_at),
    ).model_dump(mode="json")


@router.get("/{subscription_id}/deliveries", response_model=DeliveryPage)
async def list_webhook_deliveries(
    subscription_id: str,
    principal: CurrentUser,
    sessions: SessionsDep,
    status: Annotated[str | None, Query(pattern="^(pending|delivered)$")] = None,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> Any:
    """The delivery log, newest first: per event its attempts, last status code or error, and
    when the next attempt is due. `next_cursor` pages on."""
    await _load(sessions, principal, subscription_id)
    if cursor is not None and not (cursor.isascii() and cursor.isdigit() and len(cursor) < 19):
        raise ApiError("PF.BAD_REQUEST", "`cursor` must be a next_cursor from this log")
    stmt = select(WebhookDelivery).where(WebhookDelivery.subscription_id == subscription_id)
    if status is not None:
        stmt = stmt.where(WebhookDelivery.status == status)
    if cursor is not None:
        stmt = stmt.where(col(WebhookDelivery.id) < int(cursor))
    stmt = stmt.order_by(col(WebhookDelivery.id).desc()).limit(limit + 1)
    async with sessions() as session:
        rows = list((await session.exec(stmt)).all())
    next_cursor = str(rows[limit - 1].id) if len(rows) > limit else None
    return {"items": [_delivery(r) for r in rows[:limit]], "next_cursor": next_cursor}
