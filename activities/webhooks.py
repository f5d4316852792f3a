"""Webhooks: the URL policy (SSRF) and the sender loop the worker runs beside the e-mail outbox.

Each pass (1) dispatches: turns new feed events into delivery rows per subscription
(`store.webhooks.dispatch_subscription`), then (2) leases due delivery rows of active
subscriptions and POSTs each event, signed per Standard Webhooks with the `standardwebhooks`
library (`webhook-id` = the event id, `webhook-timestamp`, `webhook-signature`; during a secret
rotation's grace period one signature per secret, space-separated). A 2xx marks the row
delivered; anything else is logged on the row and retried with exponential backoff and jitter.
A subscription that keeps failing is disabled and its owner e-mailed (`record_failure`).

At least once per event: a crash after the receiver answered and before `delivered` is committed
sends the event again when the lease runs out, with the same `webhook-id`, which receivers use to
drop the copy. The API never sends anything: no request waits for a receiver.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from standardwebhooks.webhooks import Webhook

from activities.polling import exponential_backoff, lease_due, poll_until_stopped
from store.events import public_event
from store.models import Event, WebhookDelivery, WebhookSubscription, utcnow
from store.webhooks import (
    ACTIVE,
    Attempt,
    dispatch_subscription,
    record_failure,
    record_success,
    signing_secrets,
    subscriptions_with_new_events,
)

if TYPE_CHECKING:
    from config import Settings, Webhooks

log = logging.getLogger("partnerflow.webhooks")

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
MAX_DISPATCH_ROUNDS = 20  # per subscription and pass; the rest waits for the next pass


class WebhookUrlRefused(ValueError):
    """A subscription URL the policy refuses (PF.WEBHOOK_URL_REFUSED)."""


async def resolve_host(host: str, port: int) -> Sequence[str]:
    """Every address `host` resolves to (IPv4 and IPv6)."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return sorted({str(info[4][0]) for info in infos})


def _refused_address(address: str) -> str | None:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for what, flag in (
        ("loopback", ip.is_loopback),
        ("private", ip.is_private),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("unspecified", ip.is_unspecified),
        ("reserved", ip.is_reserved),
    ):
        if flag:
            return what
    if not ip.is_global:
        return "not globally routable"
    return None


async def check_webhook_url(
    url: str, *, production: bool, resolve: Resolver = resolve_host
) -> list[str]:
    """The webhook URL policy. Outside development: `https` only, and the host must resolve, with
    every address it resolves to public (no loopback, private, link-local, multicast, reserved:
    the service must not be made to call into its own network). In development anything
    `http(s)` goes (tests and `make run` use local receivers).

    Returns the addresses it checked (none in development), for the sender to connect to
    exactly those (`pinned`). Raises WebhookUrlRefused (the API answers 422
    PF.WEBHOOK_URL_REFUSED)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    allowed = ("https",) if production else ("https", "http")
    if scheme not in allowed:
        raise WebhookUrlRefused(f"the URL must use {' or '.join(allowed)}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise WebhookUrlRefused(f"the URL's port is not valid: {exc}") from exc
    if not host:
        raise WebhookUrlRefused("the URL has no host")
    if not production:
        return []
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        try:
            addresses = list(await resolve(host, port or 443))
        except OSError as exc:
            raise WebhookUrlRefused(f"the host {host} does not resolve: {exc}") from exc
    if not addresses:
        raise WebhookUrlRefused(f"the host {host} does not resolve")
    for address in addresses:
        why = _refused_address(address)
        if why is not None:
            raise WebhookUrlRefused(f"the host {host} resolves to a {why} address ({address})")
    return addresses


def pinned(url: str, addresses: Sequence[str]) -> tuple[str, dict[str, str], dict[str, Any]]:
    """The request that reaches `url` at the first of the `addresses` just checked, so DNS
    asked again by the HTTP client cannot send it elsewhere (DNS rebinding): (the URL with that
    address as its host, the `host` header, the TLS `sni_hostname` extension — the certificate
    is still verified against the URL's host name). No addresses (development): `url` as is."""
    parts = urlsplit(url)
    host = parts.hostname
    if not addresses or host is None:
        return url, {}, {}
    address = addresses[0].split("%", 1)[0]
    literal = f"[{address}]" if ":" in address else address
    netloc = f"{literal}:{parts.port}" if parts.port else literal
    host_header = f"{host}:{parts.port}" if parts.port else host
    target = parts._replace(netloc=netloc).geturl()
    return target, {"host": host_header}, {"sni_hostname": host}


def sign(secrets: Sequence[str], *, msg_id: str, timestamp: Any, body: str) -> str:
    """The `webhook-signature` header: one `v1,<base64>` per secret, space-separated."""
    return " ".join(Webhook(s).sign(msg_id=msg_id, timestamp=timestamp, data=body) for s in secrets)


class WebhookSender:
    """Dispatches feed events to delivery rows and sends them. Built once in the worker; `run`
    is its loop, `run_once` one pass."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        config: Webhooks,
        *,
        production: bool,
        transport: httpx.AsyncBaseTransport | None = None,
        resolve: Resolver = resolve_host,
    ) -> None:
        if config.claim_lease_seconds <= config.timeout_seconds:
            raise ValueError("webhooks.claim_lease_seconds must be longer than timeout_seconds")
        self._sessions = sessions
        self._config = config
        self._production = production
        self._transport = transport
        self._resolve = resolve

    @classmethod
    def from_settings(
        cls, sessions: async_sessionmaker[AsyncSession], settings: Settings
    ) -> WebhookSender:
        return cls(sessions, settings.webhooks, production=settings.env == "production")

    # --- one pass -----------------------------------------------------------------------------

    async def run_once(self) -> int:
        """Dispatch new events, then send one batch of due deliveries; return the deliveries
        leased (a full batch means more are probably due)."""
        await self.dispatch()
        return await self.deliver_due()

    async def dispatch(self) -> int:
        """Turn new feed events into delivery rows for every active subscription."""
        total = 0
        for subscription_id in await subscriptions_with_new_events(self._sessions):
            for _ in range(MAX_DISPATCH_ROUNDS):
                read = await dispatch_subscription(
                    self._sessions, subscription_id, batch_size=self._config.batch_size
                )
                total += read
                if read < self._config.batch_size:
                    break
        return total

    async def deliver_due(self) -> int:
        """Lease due deliveries of active subscriptions and send them, a few at a time."""
        leased = await lease_due(
            self._sessions,
            WebhookDelivery,
            now=utcnow(),
            batch_size=self._config.batch_size,
            lease_seconds=self._config.claim_lease_seconds,
            returning=(
                col(WebhookDelivery.subscription_id),
                col(WebhookDelivery.event_row_id),
                col(WebhookDelivery.attempts),
            ),
            where=(
                col(WebhookDelivery.subscription_id).in_(
                    select(WebhookSubscription.id).where(WebhookSubscription.status == ACTIVE)
                ),
            ),
        )
        if not leased:
            return 0
        async with self._sessions() as session:
            events = {
                e.id: e
                for e in (
                    await session.exec(
                        select(Event).where(col(Event.id).in_({row[2] for row in leased}))
                    )
                ).all()
            }
            subs = {
                s.id: s
                for s in (
                    await session.exec(
                        select(WebhookSubscription).where(
                            col(WebhookSubscription.id).in_({row[1] for row in leased})
                        )
                    )
                ).all()
            }
        gate = asyncio.Semaphore(self._config.concurrency)
        async with httpx.AsyncClient(
            timeout=self._config.timeout_seconds,
            follow_redirects=False,
            transport=self._transport,
            headers={"user-agent": "partnerflow-webhooks/1"},
        ) as client:

            async def send(row: tuple[Any, ...]) -> None:
                delivery_id, subscription_id, event_row_id, attempts = row
                async with gate:
                    await self._attempt(
                        client,
                        delivery_id,
                        attempts,
                        subs.get(subscription_id),
                        events.get(event_row_id),
                    )

            await asyncio.gather(*(send(row) for row in leased))
        return len(leased)

    async def _attempt(
        self,
        client: httpx.AsyncClient,
        delivery_id: int,
        attempts: int,
        sub: WebhookSubscription | None,
        event: Event | None,
    ) -> None:
        if sub is None or event is None:
            return  # deleted meanwhile
        now = utcnow()
        body = json.dumps(public_event(event), separators=(",", ":"), ensure_ascii=False)
        msg_id = public_event(event)["id"]
        status_code: int | None = None
        error: str | None = None
        try:
            # again at send time: DNS may answer differently than when the URL was accepted;
            # and the request goes to the very addresses checked (`pinned`)
            addresses = await check_webhook_url(
                sub.url, production=self._production, resolve=self._resolve
            )
            url, host, extensions = pinned(sub.url, addresses)
            secrets = signing_secrets(
                sub.secret, sub.previous_secret, sub.previous_secret_expires_at, now
            )
            response = await client.post(
                url,
                content=body.encode(),
                headers={
                    **host,
                    "content-type": "application/json",
                    "webhook-id": msg_id,
                    "webhook-timestamp": str(int(now.timestamp())),
                    "webhook-signature": sign(secrets, msg_id=msg_id, timestamp=now, body=body),
                },
                extensions=extensions,
            )
            status_code = response.status_code
            if not 200 <= status_code < 300:
                error = f"HTTP {status_code}"
        except Exception as exc:  # one receiver's failure must not stop the batch
            error = f"{type(exc).__name__}: {exc}"
        attempt = Attempt(
            delivery_id=delivery_id,
            subscription_id=sub.id,
            ok=error is None,
            status_code=status_code,
            error=error,
            at=now,
        )
        if attempt.ok:
            await record_success(self._sessions, attempt)
            return
        retry_in = exponential_backoff(
            attempts + 1,
            base=self._config.base_backoff_seconds,
            cap=self._config.max_backoff_seconds,
            jitter=self._config.jitter,
        )
        log.warning("webhook %s to %s failed: %s", msg_id, sub.id, error)
        disabled = await record_failure(
            self._sessions,
            attempt,
            retry_in=timedelta(seconds=retry_in),
            disable_after_failures=self._config.disable_after_failures,
            disable_after=timedelta(seconds=self._config.disable_after_seconds),
        )
        if disabled:
            log.error("webhook subscription %s disabled: it keeps failing", sub.id)

    # --- the loop -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Dispatch and deliver until `stop` is set; a failing pass is logged and retried."""
        await poll_until_stopped(
            self.run_once,
            stop,
            log=log,
            what="webhooks",
            batch_size=self._config.batch_size,
            poll_interval=self._config.poll_interval_seconds,
            base_backoff=self._config.base_backoff_seconds,
            max_backoff=self._config.max_backoff_seconds,
        )
