"""Webhooks (DESIGN §3, issue 13) against a real local receiver (pytest-httpserver) that checks
every signature with the `standardwebhooks` library: at least once per event with the event id
as `webhook-id`, retried after the receiver was down, never holding an API request, never
crossing partners, rotating secrets without a lost delivery, disabling a subscription that keeps
failing and telling its owner; the URL policy (SSRF) outside development."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest
from pytest_httpserver import HTTPServer
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from werkzeug import Request, Response

from activities.webhooks import WebhookSender, WebhookUrlRefused, check_webhook_url
from api.main import create_app
from config import Environment, Webhooks
from store.db import transaction
from store.models import OutboxMessage, WebhookDelivery, utcnow
from store.webhooks import create_subscription, new_secret, signing_secrets
from tests.conftest import ApiServer, Stack, eventually, free_port
from tests.helpers import Actors, SettingsTokens, complete, submit
from tests.test_events import apply, transition


@dataclass
class Delivery:
    webhook_id: str
    path: str
    body: dict[str, Any]
    verified_by: list[int]  # indexes into Receiver.secrets that verify the signature
    signatures: int


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1 that verifies each delivery with the library."""

    server: HTTPServer
    secrets: dict[str, list[str]] = field(default_factory=dict)  # path -> secrets to try
    received: list[Delivery] = field(default_factory=list)
    status: int = 204
    block: threading.Event | None = None  # while set by a test, the handler waits on `release`
    release: threading.Event = field(default_factory=threading.Event)
    blocked_now: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.port}{path}"

    def handle(self, request: Request) -> Response:
        body = request.get_data(as_text=True)
        headers = dict(request.headers)
        verified = []
        for index, secret in enumerate(self.secrets.get(request.path, [])):
            try:
                Webhook(secret).verify(body, headers)
                verified.append(index)
            except WebhookVerificationError:
                pass
        import json

        self.received.append(
            Delivery(
                webhook_id=headers.get("Webhook-Id", ""),
                path=request.path,
                body=json.loads(body),
                verified_by=verified,
                signatures=len(headers.get("Webhook-Signature", "").split()),
            )
        )
        if self.block is not None and self.block.is_set():
            self.blocked_now.set()
            self.release.wait(30)
            self.blocked_now.clear()
        return Response(status=self.status)

    def at(self, path: str) -> list[Delivery]:
        return [d for d in self.received if d.path == path]


def start_receiver(port: int | None = None) -> Receiver:
    server = HTTPServer(host="127.0.0.1", port=port or free_port(), threaded=True)
    receiver = Receiver(server)
    server.expect_request("/", method="POST").respond_with_handler(receiver.handle)
    for n in range(8):
        server.expect_request(f"/hook/{n}", method="POST").respond_with_handler(receiver.handle)
    server.start()
    return receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = start_receiver()
    yield rec
    rec.release.set()
    rec.server.clear()
    if rec.server.is_running():
        rec.server.stop()


@pytest.fixture
async def subscriptions(stack: Stack) -> AsyncIterator[list[tuple[str, dict[str, str]]]]:
    """(id, headers) of the subscriptions a test made; deleted afterwards so the shared stack's
    sender does not keep calling receivers that are gone."""
    made: list[tuple[str, dict[str, str]]] = []
    yield made
    for sub_id, headers in made:
        await stack.http.delete(f"/v1/webhook-subscriptions/{sub_id}", headers=headers)


async def subscribe(
    stack: Stack,
    made: list[tuple[str, dict[str, str]]],
    headers: dict[str, str],
    url: str,
    event_types: Sequence[str] = ("*",),
) -> dict[str, Any]:
    r = await stack.http.post(
        "/v1/webhook-subscriptions",
        json={"url": url, "event_types": list(event_types)},
        headers=headers,
    )
    assert r.status_code == 201, r.text
    sub: dict[str, Any] = r.json()
    assert sub["secret"].startswith("whsec_")
    made.append((sub["id"], headers))
    return sub


async def feed_events(stack: Stack, process_id: str) -> list[dict[str, Any]]:
    r = await stack.http.get(
        "/v1/events", params={"limit": 500}, headers=stack.auth("ops-1", ["ops_admin"])
    )
    events: list[dict[str, Any]] = []
    after = None
    while True:
        params: dict[str, Any] = {"limit": 500}
        if after:
            params["after"] = after
        r = await stack.http.get(
            "/v1/events", params=params, headers=stack.auth("ops-1", ["ops_admin"])
        )
        page = r.json()
        if not page["items"]:
            return [e for e in events if e["process_id"] == process_id]
        events += page["items"]
        after = page["next_cursor"]


async def deliveries(stack: Stack, sub_id: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    r = await stack.http.get(f"/v1/webhook-subscriptions/{sub_id}/deliveries", headers=headers)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


# --- delivery ----------------------------------------------------------------------------------


async def test_receiver_down_then_up_gets_each_event_once_signed(
    stack: Stack, subscriptions: list[tuple[str, dict[str, str]]]
) -> None:
    """Deliveries to a receiver that is down are retried (the log shows the failed attempts and
    the next one); once it is up each event arrives once, `webhook-id` = the event id, body =
    the event as the feed shows it, signature verified by the library."""
    actors = Actors(stack)
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook/0"
    sub = await subscribe(stack, subscriptions, actors.acme, url, ["opportunity.*", "task.*"])
    po = await submit(stack.http, actors.acme)

    async def failed_attempts() -> list[dict[str, Any]] | None:
        log = await deliveries(stack, sub["id"], actors.acme)
        failing = [d for d in log if d["attempts"] >= 2 and d["status"] == "pending"]
        return failing or None

    failing = await eventually(failed_attempts, what="failed attempts in the delivery log")
    assert failing[0]["last_error"] and failing[0]["next_attempt_at"]
    assert failing[0]["last_status_code"] is None  # nothing answered

    receiver = start_receiver(port)
    try:
        receiver.secrets["/hook/0"] = [sub["secret"]]
        expected = await feed_events(stack, po["id"])
        assert expected, "the PO's events are in the feed"

        async def all_delivered() -> bool:
            got = {d.webhook_id for d in receiver.at("/hook/0")}
            return {e["id"] for e in expected} <= got

        await eventually(all_delivered, what="every event delivered after the receiver came up")
        mine = [d for d in receiver.at("/hook/0") if d.body["process_id"] == po["id"]]
        counts = Counter(d.webhook_id for d in mine)
        assert set(counts.values()) == {1}, counts
        by_id = {d.webhook_id: d for d in mine}
        for event in expected:
            delivered = by_id[event["id"]]
            assert delivered.body == event
            assert delivered.verified_by == [0]

        async def logged_delivered() -> bool:  # the sender records it after the answer
            log = await deliveries(stack, sub["id"], actors.acme)
            return {d["event_id"] for d in log if d["status"] == "delivered"} >= set(by_id)

        await eventually(logged_delivered, what="the log to show every event delivered")
    finally:
        receiver.server.clear()
        receiver.server.stop()


async def test_slow_receiver_never_holds_an_api_request(
    stack: Stack, receiver: Receiver, subscriptions: list[tuple[str, dict[str, str]]]
) -> None:
    """While the receiver holds a delivery and answers nothing, a POST whose transition makes
    new events is answered: the API never waits for a receiver."""
    actors = Actors(stack)
    sub = await subscribe(stack, subscriptions, actors.acme, receiver.url("/hook/1"))
    receiver.secrets["/hook/1"] = [sub["secret"]]
    receiver.block = threading.Event()
    receiver.block.set()
    await submit(stack.http, actors.acme)
    await eventually(
        lambda: _async(receiver.blocked_now.is_set()), what="the receiver to hold a delivery"
    )
    started = time.monotonic()
    second = await submit(stack.http, actors.acme)
    answered_in = time.monotonic() - started
    assert receiver.blocked_now.is_set(), "the POST was answered while the receiver held on"
    assert answered_in < stack.settings.update_timeout_seconds
    receiver.block.clear()
    receiver.release.set()

    async def second_delivered() -> bool:
        return any(d.body["process_id"] == second["id"] for d in receiver.at("/hook/1"))

    await eventually(second_delivered, what="the held-up deliveries to go through")


async def _async(value: bool) -> bool:
    return value


async def test_r_x_8_a_partners_subscription_never_receives_another_partners_event(
    stack: Stack, receiver: Receiver, subscriptions: list[tuple[str, dict[str, str]]]
) -> None:
    actors = Actors(stack)
    acme = await subscribe(stack, subscriptions, actors.acme, receiver.url("/hook/2"))
    bright = await subscribe(stack, subscriptions, actors.bright, receiver.url("/hook/3"))
    ops = await subscribe(stack, subscriptions, actors.admin, receiver.url("/hook/4"))
    receiver.secrets.update(
        {"/hook/2": [acme["secret"]], "/hook/3": [bright["secret"]], "/hook/4": [ops["secret"]]}
    )
    acme_po = await submit(stack.http, actors.acme)
    bright_po = await submit(stack.http, actors.bright, region="north-china")

    async def ops_saw_both() -> bool:
        seen = {d.body["process_id"] for d in receiver.at("/hook/4")}
        return {acme_po["id"], bright_po["id"]} <= seen

    await eventually(ops_saw_both, what="the ops subscription to see both partners' POs")

    async def partners_saw_theirs() -> bool:
        a = {d.body["process_id"] for d in receiver.at("/hook/2")}
        b = {d.body["process_id"] for d in receiver.at("/hook/3")}
        return acme_po["id"] in a and bright_po["id"] in b

    await eventually(partners_saw_theirs, what="each partner to see its own PO")
    assert {d.body["partner_id"] for d in receiver.at("/hook/2")} == {"p-acme"}
    assert {d.body["partner_id"] for d in receiver.at("/hook/3")} == {"p-bright"}
    assert all(d.verified_by == [0] for d in receiver.received)
    # nor may it read or delete another partner's subscription
    r = await stack.http.get(f"/v1/webhook-subscriptions/{acme['id']}", headers=actors.bright)
    assert r.status_code == 404
    assert r.json()["error_code"] == "PF.WEBHOOK_SUBSCRIPTION_NOT_FOUND"
    r = await stack.http.delete(f"/v1/webhook-subscriptions/{acme['id']}", headers=actors.bright)
    assert r.status_code == 404
    listed = await stack.http.get("/v1/webhook-subscriptions", headers=actors.bright)
    assert {s["id"] for s in listed.json()["items"]} == {bright["id"]}
    assert all("secret" not in s or s["secret"] is None for s in listed.json()["items"])


async def test_rotation_deliveries_in_the_grace_period_verify_with_either_secret(
    stack: Stack, receiver: Receiver, subscriptions: list[tuple[str, dict[str, str]]]
) -> None:
    actors = Actors(stack)
    sub = await subscribe(stack, subscriptions, actors.acme, receiver.url("/hook/5"))
    old = sub["secret"]
    r = await stack.http.post(
        f"/v1/webhook-subscriptions/{sub['id']}/rotate-secret", headers=actors.acme
    )
    assert r.status_code == 200, r.text
    rotated = r.json()
    new = rotated["secret"]
    assert new.startswith("whsec_") and new != old
    assert rotated["previous_secret_expires_at"].endswith("Z")
    receiver.secrets["/hook/5"] = [old, new]
    po = await submit(stack.http, actors.acme)

    async def delivered() -> list[Delivery] | None:
        got = [d for d in receiver.at("/hook/5") if d.body["process_id"] == po["id"]]
        return got or None

    got = await eventually(delivered, what="a delivery after the rotation")
    for d in got:
        assert d.verified_by == [0, 1], "both the old and the new secret verify it"
        assert d.signatures == 2
    # the secret is shown only when made
    r = await stack.http.get(f"/v1/webhook-subscriptions/{sub['id']}", headers=actors.acme)
    assert r.json()["secret"] is None


def test_after_the_grace_period_only_the_new_secret_signs() -> None:
    now = utcnow()
    current, previous = new_secret(), new_secret()
    assert signing_secrets(current, previous, now + timedelta(seconds=1), now) == [
        current,
        previous,
    ]
    assert signing_secrets(current, previous, now, now) == [current]
    assert signing_secrets(current, None, None, now) == [current]


async def test_a_subscription_that_keeps_failing_is_disabled_and_its_owner_told(
    stack: Stack, receiver: Receiver, subscriptions: list[tuple[str, dict[str, str]]]
) -> None:
    """The receiver answers 500: after `webhooks.disable_after_failures` failed attempts in a row
    the subscription is disabled and its creator gets an e-mail (outbox); its pending deliveries
    are kept, and enabling it again delivers them."""
    actors = Actors(stack)
    receiver.status = 500
    sub = await subscribe(stack, subscriptions, actors.acme, receiver.url("/hook/6"))
    receiver.secrets["/hook/6"] = [sub["secret"]]
    po = await submit(stack.http, actors.acme)

    async def disabled() -> dict[str, Any] | None:
        r = await stack.http.get(f"/v1/webhook-subscriptions/{sub['id']}", headers=actors.acme)
        body: dict[str, Any] = r.json()
        return body if body["status"] == "disabled" else None

    state = await eventually(disabled, timeout=30, what="the subscription to be disabled")
    assert state["disabled_reason"] and state["disabled_at"].endswith("Z")
    assert state["failure_streak"] >= stack.settings.webhooks.disable_after_failures
    log = await deliveries(stack, sub["id"], actors.acme)
    assert log and all(d["status"] == "pending" for d in log)
    assert any(d["last_status_code"] == 500 for d in log)
    async with stack.sessions() as session:
        notes = (
            await session.exec(
                select(OutboxMessage).where(
                    OutboxMessage.event_key.startswith(f"webhook-disabled:{sub['id']}:")
                )
            )
        ).all()
    assert [n.recipient for n in notes] == ["u-acme-1"]
    assert sub["id"] in notes[0].subject

    receiver.status = 204
    r = await stack.http.post(f"/v1/webhook-subscriptions/{sub['id']}/enable", headers=actors.acme)
    assert r.status_code == 200 and r.json()["status"] == "active"

    async def delivered_after_enable() -> bool:
        log = await deliveries(stack, sub["id"], actors.acme)
        mine = [d for d in log if d["status"] == "delivered"]
        return bool(mine) and all(d["status"] == "delivered" for d in log)

    await eventually(delivered_after_enable, what="the kept deliveries to go through")
    assert any(d.body["process_id"] == po["id"] for d in receiver.at("/hook/6"))


# --- the API's refusals -----------------------------------------------------------------------


async def test_subscription_refusals(
    stack: Stack, subscriptions: list[tuple[str, dict[str, str]]]
) -> None:
    actors = Actors(stack)
    body = {"url": "http://127.0.0.1:9/hook", "event_types": ["*"]}
    r = await stack.http.post("/v1/webhook-subscriptions", json=body)
    assert r.status_code == 401
    for who in (actors.acme_member, actors.pdm_li, stack.auth("ops-2", ["ops_admin"], "p-acme")):
        r = await stack.http.post("/v1/webhook-subscriptions", json=body, headers=who)
        assert r.status_code == 403, r.text
        assert r.json()["error_code"] == "PF.FORBIDDEN"
    for bad in (
        {"url": "http://127.0.0.1:9/hook", "event_types": ["opportunity.aproved"]},
        {"url": "http://127.0.0.1:9/hook", "event_types": []},
        {"url": "not a url", "event_types": ["*"]},
        {"url": "http://127.0.0.1:9/hook", "event_types": ["*"], "extra": 1},
    ):
        r = await stack.http.post("/v1/webhook-subscriptions", json=bad, headers=actors.acme)
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["error_code"] == "PF.VALIDATION_FAILED"
    r = await stack.http.post(
        "/v1/webhook-subscriptions",
        json={"url": "ftp://files.example/hook", "event_types": ["*"]},
        headers=actors.acme,
    )
    assert r.status_code == 422 and r.json()["error_code"] == "PF.WEBHOOK_URL_REFUSED"
    sub = await subscribe(stack, subscriptions, actors.acme, "http://127.0.0.1:9/hook")
    r = await stack.http.delete(f"/v1/webhook-subscriptions/{sub['id']}", headers=actors.acme)
    assert r.status_code == 204
    r = await stack.http.get(f"/v1/webhook-subscriptions/{sub['id']}", headers=actors.acme)
    assert r.status_code == 404


# --- the URL policy outside development (SSRF) ------------------------------------------------

REFUSED_IN_PRODUCTION = [
    "http://hooks.example.com/partnerflow",  # not https
    "https://127.0.0.1/hook",
    "https://10.1.2.3/hook",
    "https://169.254.169.254/latest/meta-data",
    "https://[::1]/hook",
    "https://[::ffff:127.0.0.1]/hook",
    "https://192.168.0.10/hook",
    "https://224.0.0.1/hook",
    "https://0.0.0.0/hook",
    "https://localhost/hook",  # a name that resolves to loopback
]


@pytest.mark.parametrize("url", REFUSED_IN_PRODUCTION)
async def test_production_url_policy_refuses(url: str) -> None:
    with pytest.raises(WebhookUrlRefused):
        await check_webhook_url(url, production=True)


async def test_production_url_policy_checks_every_resolved_address() -> None:
    """A name with one public and one private address is refused; all public is accepted."""

    async def mixed(host: str, port: int) -> list[str]:
        return ["93.184.215.14", "10.0.0.7"]

    async def public(host: str, port: int) -> list[str]:
        return ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]

    with pytest.raises(WebhookUrlRefused, match=r"10\.0\.0\.7"):
        await check_webhook_url("https://hooks.example.com/x", production=True, resolve=mixed)
    await check_webhook_url("https://hooks.example.com/x", production=True, resolve=public)
    await check_webhook_url("https://93.184.215.14/x", production=True)
    # development: local receivers are fine
    await check_webhook_url("http://127.0.0.1:8080/x", production=False)


async def test_production_api_answers_422_webhook_url_refused(stack: Stack) -> None:
    """The served API with PARTNERFLOW_ENV=production refuses each URL above with 422
    PF.WEBHOOK_URL_REFUSED, before anything is stored or sent."""
    settings = stack.settings.model_copy(
        update={"env": Environment.production, "jwt_secret": "p" * 40}
    )
    api = ApiServer(settings)
    await api.start()
    try:
        admin = SettingsTokens(settings).auth("u-acme-1", ["partner_admin"], "p-acme")
        async with httpx.AsyncClient(base_url=api.url, timeout=30) as http:
            for url in REFUSED_IN_PRODUCTION:
                r = await http.post(
                    "/v1/webhook-subscriptions",
                    json={"url": url, "event_types": ["*"]},
                    headers=admin,
                )
                assert r.status_code == 422, (url, r.text)
                assert r.json()["error_code"] == "PF.WEBHOOK_URL_REFUSED"
            listed = await http.get("/v1/webhook-subscriptions", headers=admin)
            assert not [s for s in listed.json()["items"] if s["url"] in REFUSED_IN_PRODUCTION]
    finally:
        await api.stop()


async def test_production_sends_to_the_address_it_checked_and_refuses_a_rebound_name(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """DNS rebinding (the attack's note): the URL check and the HTTP client resolved the name
    separately, so a name that answered a public address to the check could answer a private
    one to the client. The sender now checks at send time and connects to exactly the address
    it checked (`pinned`): the request goes to that IP with the name in `host` and as the TLS
    SNI (the certificate is verified against it). When the name rebinds to a private address,
    nothing is sent and the attempt fails naming it."""
    answers = {"hooks.example.com": ["93.184.215.14"]}

    async def resolve(host: str, port: int) -> list[str]:
        return answers[host]

    seen: list[httpx.Request] = []

    def receive(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    async with transaction(sessions) as session:
        sub = await create_subscription(
            session,
            partner_id="p-acme",
            url="https://hooks.example.com:8443/partnerflow?x=1",
            event_types=["opportunity.*"],
            created_by="u-acme-1",
            subscriber_roles=["partner_admin"],
        )
    config = Webhooks(batch_size=5, base_backoff_seconds=0.1, max_backoff_seconds=0.5)
    sender = WebhookSender(
        sessions,
        config,
        production=True,
        transport=httpx.MockTransport(receive),
        resolve=resolve,
    )
    await apply(sessions, transition("po-pin-1", 1, "submitted"))

    async def sent() -> bool:
        await sender.run_once()
        return bool(seen)

    await eventually(sent, what="the delivery to the checked address")
    [request] = seen
    assert str(request.url) == "https://93.184.215.14:8443/partnerflow?x=1"
    assert request.headers["host"] == "hooks.example.com:8443"
    assert request.extensions["sni_hostname"] == "hooks.example.com"

    answers["hooks.example.com"] = ["10.0.0.7"]  # the name rebinds to a private address
    await apply(sessions, transition("po-pin-2", 1, "submitted"))

    async def refused() -> bool:
        await sender.run_once()
        async with sessions() as session:
            rows = (
                await session.exec(
                    select(WebhookDelivery).where(WebhookDelivery.subscription_id == sub.id)
                )
            ).all()
        return any("10.0.0.7" in (r.last_error or "") for r in rows)

    await eventually(refused, what="the rebound name refused at send time")
    assert len(seen) == 1  # nothing reached the private address


# --- the sender on its own: restarts, two workers, a crash after the answer -------------------


async def test_events_committed_while_no_sender_ran_are_delivered_once_by_two_senders(
    sessions: async_sessionmaker[AsyncSession], receiver: Receiver
) -> None:
    """The subscription's cursor and its delivery rows are in the store, so a sender started
    later (a restarted worker) delivers what was committed meanwhile; two senders at once (two
    workers) deliver each event once; a crash between the answer and `delivered` sends the
    event again with the same `webhook-id`."""
    async with transaction(sessions) as session:
        sub = await create_subscription(
            session,
            partner_id="p-acme",
            url=receiver.url("/hook/7"),
            event_types=["opportunity.*"],
            created_by="u-acme-1",
            subscriber_roles=["partner_admin"],
        )
    receiver.secrets["/hook/7"] = [sub.secret]
    for n in range(5):
        await apply(sessions, transition(f"po-s{n}", 1, "submitted"))
    await apply(sessions, transition("po-other", 1, "submitted", partner_id="p-bright"))
    config = Webhooks(batch_size=2, base_backoff_seconds=0.1, max_backoff_seconds=0.5)
    senders = [WebhookSender(sessions, config, production=False) for _ in range(2)]

    async def all_delivered() -> bool:
        await asyncio.gather(*(s.run_once() for s in senders))
        return len({d.webhook_id for d in receiver.at("/hook/7")}) >= 5

    await eventually(all_delivered, what="two senders to deliver the backlog")
    for _ in range(3):  # more passes send nothing more
        await asyncio.gather(*(s.run_once() for s in senders))
    got = receiver.at("/hook/7")
    assert sorted(d.body["process_id"] for d in got) == [f"po-s{n}" for n in range(5)]
    assert set(Counter(d.webhook_id for d in got).values()) == {1}
    assert all(d.verified_by == [0] for d in got)

    # a sender that died after the receiver answered: the lease runs out, the row is due again
    async with transaction(sessions) as session:
        row = (await session.exec(select(WebhookDelivery).limit(1))).one()
        row.status, row.next_attempt_at = "pending", utcnow()
        session.add(row)
    await senders[0].run_once()
    again = [d for d in receiver.at("/hook/7") if d.webhook_id == row.event_id]
    assert len(again) == 2 and again[0].body == again[1].body


async def test_r_x_8_every_subscription_route_is_its_partners_only(
    stack: Stack, subscriptions: list[tuple[str, dict[str, str]]]
) -> None:
    """Every route under /v1/webhook-subscriptions/{subscription_id}, taken from the OpenAPI:
    without a token 401; another partner's admin, a partner member, staff other than ops, and
    staff roles on another partner's token get 403/404 in the envelope, never the subscription;
    its partner's admin and ops_admin get through."""
    spec = create_app(stack.settings).openapi()
    routes = [
        (method.upper(), template)
        for template, operations in spec["paths"].items()
        if template.startswith("/v1/webhook-subscriptions/{")
        for method in operations
    ]
    assert ("GET", "/v1/webhook-subscriptions/{subscription_id}/deliveries") in routes
    assert ("DELETE", "/v1/webhook-subscriptions/{subscription_id}") in routes
    actors = Actors(stack)
    sub = await subscribe(stack, subscriptions, actors.acme, "http://127.0.0.1:9/hook")
    refused = {
        "another partner's admin": actors.bright,
        "a partner member": actors.acme_member,
        "staff other than ops": actors.pdm_li,
        "ops_admin on another partner's token": stack.auth("ops-x", ["ops_admin"], "p-bright"),
    }
    for method, template in routes:
        path = template.replace("{subscription_id}", sub["id"])
        r = await stack.http.request(method, path)
        assert r.status_code == 401, (method, path, r.status_code)
        for who, headers in refused.items():
            r = await stack.http.request(method, path, headers=headers)
            assert r.status_code in (403, 404), (who, method, path, r.text)
            assert set(r.json()) == {"error_code", "error_msg", "details"}
            assert sub["url"] not in r.text
    # the owner and ops get through; deleting last
    for method, template in sorted(routes, key=lambda mt: mt[0] == "DELETE"):
        path = template.replace("{subscription_id}", sub["id"])
        for headers in (actors.admin, actors.acme):
            if method == "DELETE" and headers is actors.admin:
                continue
            r = await stack.http.request(method, path, headers=headers)
            assert r.status_code < 300, (method, path, r.text)
    # and a partner lists only its own subscriptions
    listed = await stack.http.get("/v1/webhook-subscriptions", headers=actors.bright)
    assert sub["id"] not in listed.text


async def test_a_replayed_answer_never_shows_a_one_time_secret_again(
    stack: Stack, subscriptions: list[tuple[str, dict[str, str]]]
) -> None:
    """R-X-6 replays the stored answer for 24 h; a signing secret is shown once: every route
    whose answer makes one (create, rotate-secret) stores `secret: null` (+ `secret_note`) in the
    idempotency record, and the plaintext is in no record."""
    actors = Actors(stack)
    key = {"Idempotency-Key": f"sub-{time.monotonic_ns()}"}
    body = {"url": f"http://127.0.0.1:{free_port()}/hook/9", "event_types": ["task.*"]}
    first = await stack.http.post(
        "/v1/webhook-subscriptions", json=body, headers={**actors.acme, **key}
    )
    assert first.status_code == 201, first.text
    sub = first.json()
    subscriptions.append((sub["id"], actors.acme))
    rotate = f"/v1/webhook-subscriptions/{sub['id']}/rotate-secret"
    rotated = await stack.http.post(rotate, headers={**actors.acme, **key})
    assert rotated.status_code == 200, rotated.text
    made = {"create": (first, body, "/v1/webhook-subscriptions"), "rotate": (rotated, None, rotate)}
    for name, (answer, json_body, path) in made.items():
        secret = answer.json()["secret"]
        assert secret.startswith("whsec_"), name
        again = await stack.http.post(path, json=json_body, headers={**actors.acme, **key})
        assert again.status_code == answer.status_code, (name, again.text)
        assert again.headers.get("Idempotent-Replayed") == "true", name
        assert again.json()["secret"] is None, name
        assert "secret_note" in again.json(), name
        assert again.json()["id"] == sub["id"], name
        async with stack.sessions() as session:
            from store.models import IdempotencyRecord

            rows = (await session.exec(select(IdempotencyRecord))).all()
        assert all(secret.encode() not in (r.response or b"") for r in rows), name


# --- R-X-8: a webhook delivers what its subscriber's feed shows -----------------------------------


async def feed_of(stack: Stack, headers: dict[str, str], process_ids: set[str]) -> dict[str, str]:
    """id -> type of the events of `process_ids` in the caller's GET /v1/events, read to its
    end."""
    seen: dict[str, str] = {}
    after = None
    while True:
        params: dict[str, Any] = {"limit": 500}
        if after:
            params["after"] = after
        r = await stack.http.get("/v1/events", params=params, headers=headers)
        assert r.status_code == 200, r.text
        page = r.json()
        seen |= {e["id"]: e["type"] for e in page["items"] if e["process_id"] in process_ids}
        if not page["items"]:
            return seen
        after = page["next_cursor"]


async def test_r_x_8_every_subscriber_receives_by_webhook_exactly_what_its_feed_shows(
    stack: Stack, receiver: Receiver, subscriptions: list[tuple[str, dict[str, str]]]
) -> None:
    """For an item of every process of the registry (tests/test_r_x_8_tenant_isolation.py's
    world), moved on (the distributor approves the reseller's application, the owner withdraws
    its PO), and every kind of subscriber — the owner partner, the reseller that applied, the
    distributor the application is addressed to (its reviewer, and its admin without the
    `distributor` role), another partner, another distributor, ops —
    the events delivered to its webhook are exactly the ones its GET /v1/events shows: one rule
    (`store.feed_access`). The example: a distributor's webhook receives the application
    addressed to it, and the review task offered to it."""
    from tests.test_r_x_8_tenant_isolation import build_world
    from workflows.registry import ALL_WORKFLOWS

    tag = uuid.uuid4().hex[:8]
    subscribers = {
        "owner": stack.auth(f"u-p-own-{tag}", ["partner_admin"], f"p-own-{tag}"),
        "reseller": stack.auth(f"u-p-res-{tag}", ["partner_admin"], f"p-res-{tag}"),
        "addressed distributor": stack.auth(
            f"da-{tag}", ["partner_admin", "distributor"], f"p-dist-{tag}"
        ),
        # the attack's example: the distributor's admin without the `distributor` role
        "addressed distributor's admin": stack.auth(
            f"dadm-{tag}", ["partner_admin"], f"p-dist-{tag}"
        ),
        "other partner": stack.auth(f"u-p-oth-{tag}", ["partner_admin"], f"p-oth-{tag}"),
        "other distributor": stack.auth(
            f"d2a-{tag}", ["partner_admin", "distributor"], f"p-dist2-{tag}"
        ),
        "ops": stack.auth("ops-1", ["ops_admin"]),
    }
    paths = {name: f"/hook/{n}" for n, name in enumerate(subscribers)}
    for name, headers in subscribers.items():
        sub = await subscribe(stack, subscriptions, headers, receiver.url(paths[name]))
        receiver.secrets[paths[name]] = [sub["secret"]]

    world = await build_world(stack, tag)
    assert {item.kind for item in world.items} == {w.process for w in ALL_WORKFLOWS}  # type: ignore[attr-defined]
    by_kind = {item.kind: item for item in world.items}
    application = by_kind["reseller_application"]
    assert application.task_id is not None and application.assignee is not None
    await complete(stack.http, application.assignee, application.task_id, "approve")
    po = by_kind["opportunity"]
    r = await stack.http.post(f"/v1/opportunities/{po.id}/cancel", headers=po.owner)
    assert r.status_code == 200, r.text
    process_ids = {item.id for item in world.items}

    async def ops_saw_the_last_changes() -> bool:
        # both last changes servable: everything committed before them is too (store.events)
        types = set((await feed_of(stack, subscribers["ops"], process_ids)).values())
        return {"reseller_application.approved", "opportunity.cancelled"} <= types

    await eventually(ops_saw_the_last_changes, what="the world's last events in the ops feed")

    async def webhooks_match_feeds() -> bool:
        feeds = {
            name: set(await feed_of(stack, headers, process_ids))
            for name, headers in subscribers.items()
        }
        delivered = {
            name: {
                d.webhook_id
                for d in receiver.at(paths[name])
                if d.body["process_id"] in process_ids
            }
            for name in subscribers
        }
        return feeds == delivered

    await eventually(webhooks_match_feeds, timeout=60, what="every webhook to match its feed")
    at = {
        name: {
            (d.body["process"], d.body["type"])
            for d in receiver.at(paths[name])
            if d.body["process_id"] in process_ids
        }
        for name in subscribers
    }
    assert ("reseller_application", "reseller_application.approved") in at["addressed distributor"]
    assert ("reseller_application", "task.opened") in at["addressed distributor"]
    assert {p for p, _ in at["addressed distributor"]} == {"reseller_application"}
    admin = at["addressed distributor's admin"]
    assert ("reseller_application", "reseller_application.approved") in admin
    assert {p for p, _ in admin} == {"reseller_application"}
    assert at["other partner"] == set() and at["other distributor"] == set()
    assert {p for p, _ in at["ops"]} == {w.process for w in ALL_WORKFLOWS}  # type: ignore[attr-defined]
    assert ("opportunity", "opportunity.cancelled") in at["owner"]
    assert ("reseller_application", "reseller_application.approved") in at["reseller"]
    assert all(d.verified_by == [0] for d in receiver.received)
