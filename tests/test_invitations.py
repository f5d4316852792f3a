"""Association invitations, customer invitations and dissociations against the real stack:
R-INV-1 … R-INV-6, over HTTP as the portal and the invitee do."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from domain.policy import Policy
from store import accounts
from store.db import transaction
from store.models import Account, OutboxMessage, ProcessRow
from tests.conftest import ApiServer, Stack, eventually
from tests.test_replay import HISTORIES, replayer

ADMIN = ("ops-1", ["ops_admin"])


# --- helpers ------------------------------------------------------------------------------------


class People:
    def __init__(self, stack: Stack) -> None:
        self.admin = stack.auth(*ADMIN)
        self.acme = stack.auth("u-acme-1", ["partner_admin"], "p-acme")
        self.acme_member = stack.auth("u-acme-2", ["partner_member"], "p-acme")
        self.bright = stack.auth("u-bright-1", ["partner_admin"], "p-bright")
        self.cobalt = stack.auth("u-cobalt-1", ["partner_admin"], "p-cobalt")
        self.pdm = stack.auth("pdm-li", ["pdm"])
        self.stack = stack

    def account(self, account_id: str) -> dict[str, str]:
        return self.stack.auth(account_id, ["account"])


def account_body(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "enterprise_verified": False,
        "real_name_verified": True,
        "site": "china",
        "associated_partner_id": None,
    }
    body.update(fields)
    return body


async def put_account(stack: Stack, account_id: str, **fields: Any) -> None:
    body = account_body(email=f"{account_id}@customer.example", **fields)
    r = await stack.http.put(
        f"/v1/admin/accounts/{account_id}", json=body, headers=People(stack).admin
    )
    assert r.status_code == 200, r.text


async def new_account(stack: Stack, **fields: Any) -> str:
    account_id = f"acct-{uuid.uuid4().hex[:12]}"
    await put_account(stack, account_id, **fields)
    return account_id


async def associated_partner(stack: Stack, account_id: str) -> str | None:
    async with stack.sessions() as session:
        row: Account | None = await session.get(Account, account_id, populate_existing=True)
    assert row is not None
    return row.associated_partner_id


async def invite(
    http: httpx.AsyncClient,
    headers: dict[str, str],
    account_id: str,
    *,
    expect: int = 201,
    **extra: Any,
) -> dict[str, Any]:
    r = await http.post(
        "/v1/invitations", json={"account_id": account_id, **extra}, headers=headers
    )
    assert r.status_code == expect, r.text
    result: dict[str, Any] = r.json()
    return result


async def post(
    http: httpx.AsyncClient,
    path: str,
    headers: dict[str, str],
    *,
    expect: int = 200,
    json: dict[str, Any] | None = None,
) -> dict[str, Any]:
    r = await http.post(path, headers=headers, json=json)
    assert r.status_code == expect, r.text
    result: dict[str, Any] = r.json()
    return result


async def get(
    http: httpx.AsyncClient, path: str, headers: dict[str, str], *, expect: int = 200
) -> dict[str, Any]:
    r = await http.get(path, headers=headers)
    assert r.status_code == expect, r.text
    result: dict[str, Any] = r.json()
    return result


async def wait_status(
    http: httpx.AsyncClient, path: str, headers: dict[str, str], status: str
) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        view = await get(http, path, headers)
        return view if view["status"] == status else None

    return await eventually(probe, timeout=20, what=f"{path} to be {status}")


async def outbox_for(stack: Stack, process_id: str) -> list[OutboxMessage]:
    async with stack.sessions() as session:
        rows = (
            await session.exec(
                select(OutboxMessage)
                .where(col(OutboxMessage.event_key).startswith(f"{process_id}:"))
                .order_by(col(OutboxMessage.id))
            )
        ).all()
    return list(rows)


async def history(stack: Stack, path: str, headers: dict[str, str]) -> list[str]:
    return [item["action"] for item in (await get(stack.http, f"{path}/history", headers))["items"]]


async def check_replay(stack: Stack, workflow_id: str, label: str) -> None:
    """Replay a finished workflow's history on the current code; with
    PARTNERFLOW_RECORD_HISTORIES=1, commit it under tests/histories (see tests/test_replay.py)."""
    handle = stack.client.get_workflow_handle(workflow_id)
    await handle.result()
    recorded = await handle.fetch_history()
    await replayer().replay_workflow(recorded)
    if os.environ.get("PARTNERFLOW_RECORD_HISTORIES") == "1" and stack.db == "sqlite":
        HISTORIES.mkdir(exist_ok=True)
        for old in HISTORIES.glob(f"{label}__*.json"):
            old.unlink()
        (HISTORIES / f"{label}__{workflow_id}.json").write_text(recorded.to_json())


@pytest.fixture(scope="module")
async def short(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """The same store and worker behind an API whose invitations, links and dissociation
    requests last two seconds."""
    server = ApiServer(
        stack.settings.model_copy(
            update={
                "policy": Policy(
                    invite_ttl="PT2S", customer_link_ttl="PT2S", dissociation_answer_ttl="PT2S"
                )
            }
        )
    )
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            yield http
    finally:
        await server.stop()


# --- R-INV-1 … R-INV-5: association invitations --------------------------------------------------


class TestInvitation:
    async def test_r_inv_1_invitee_accepts_in_time_and_is_associated(self, stack: Stack) -> None:
        p = People(stack)
        account_id = await new_account(stack)
        headers = {**p.acme, "Idempotency-Key": f"inv-{account_id}"}
        inv = await invite(stack.http, headers, account_id, message="Join our team")
        assert inv["status"] == "pending" and inv["partner_id"] == "p-acme"
        assert inv["account_id"] == account_id and inv["invited_by"] == "u-acme-1"
        assert inv["message"] == "Join our team"
        # R-X-6: the same key answers with the same invitation, not a second one
        again = await invite(stack.http, headers, account_id, message="Join our team")
        assert again["id"] == inv["id"]
        path = f"/v1/invitations/{inv['id']}"
        assert await get(stack.http, path, p.account(account_id)) == inv

        view = await post(stack.http, f"{path}/accept", p.account(account_id))
        assert view["status"] == "accepted" and view["accepted_at"]
        assert await associated_partner(stack, account_id) == "p-acme"
        assert (await get(stack.http, path, p.acme))["status"] == "accepted"
        assert await history(stack, path, p.acme) == ["invited", "accepted"]
        # accepted is final: neither accepted again nor revoked
        err = await post(stack.http, f"{path}/accept", p.account(account_id), expect=409)
        assert err["error_code"] == "PF.INVITATION_ACCEPTED"
        err = await post(stack.http, f"{path}/revoke", p.acme, expect=409)
        assert err["error_code"] == "PF.INVITATION_ACCEPTED"
        await check_replay(stack, inv["id"], "invitation_accepted")

    async def test_r_inv_1_every_invitation_event_is_emailed(self, stack: Stack) -> None:
        p = People(stack)
        account_id = await new_account(stack)
        inv = await invite(stack.http, p.acme, account_id)
        await post(stack.http, f"/v1/invitations/{inv['id']}/accept", p.account(account_id))
        rows = await outbox_for(stack, inv["id"])
        mail = f"{account_id}@customer.example"
        assert [r.recipient for r in rows] == [mail, "u-acme-1", mail]
        assert f"/v1/invitations/{inv['id']}/accept" in rows[0].body
        assert "accepted" in rows[1].subject and "associated" in rows[2].subject

    async def test_r_inv_1_shows_in_the_temporal_ui(self, stack: Stack) -> None:
        p = People(stack)
        account_id = await new_account(stack)
        inv = await invite(stack.http, p.acme, account_id)
        description = await stack.client.get_workflow_handle(inv["id"]).describe()
        assert account_id in (await description.static_summary() or "")
        query = f'WorkflowId = "{inv["id"]}" AND ProcessKind = "invitation" AND Stage = "pending"'

        async def listed() -> list[str]:
            return [w.id async for w in stack.client.list_workflows(query)]

        assert await eventually(listed, what="the invitation in visibility") == [inv["id"]]

    async def test_r_inv_1_only_a_partner_admin_invites(self, stack: Stack) -> None:
        p = People(stack)
        account_id = await new_account(stack)
        for headers in (p.acme_member, p.pdm, p.account(account_id)):
            err = await invite(stack.http, headers, account_id, expect=403)
            assert err["error_code"] == "PF.FORBIDDEN"
        err = await invite(stack.http, p.acme, "not a valid id!", expect=422)
        assert err["error_code"] == "PF.VALIDATION_FAILED"

    async def test_r_inv_1_one_pending_invitation_per_partner_and_account(
        self, stack: Stack
    ) -> None:
        p = People(stack)
        account_id = await new_account(stack)
        first = await invite(stack.http, p.acme, account_id)
        err = await invite(stack.http, p.acme, account_id, expect=409)
        assert err["error_code"] == "PF.INVITATION_PENDING"
        assert err["details"] == {"existing_id": first["id"]}
        # another partner may invite the same account meanwhile
        await invite(stack.http, p.bright, account_id)

    @pytest.mark.parametrize(
        ("fields", "status", "code"),
        [
            ({"enterprise_verified": True}, 422, "PF.ACCOUNT_ENTERPRISE_VERIFIED"),
            ({"associated_partner_id": "p-bright"}, 409, "PF.ACCOUNT_ASSOCIATED_ELSEWHERE"),
            ({"real_name_verified": False}, 422, "PF.ACCOUNT_NOT_REAL_NAME_VERIFIED"),
            ({"associated_partner_id": "p-acme"}, 409, "PF.ACCOUNT_ALREADY_ASSOCIATED"),
        ],
        ids=["enterprise", "associated_elsewhere", "no_real_name", "already_ours"],
    )
    async def test_r_inv_2_ineligible_account_is_refused_at_send(
        self, stack: Stack, fields: dict[str, Any], status: int, code: str
    ) -> None:
        p = People(stack)
        account_id = await new_account(stack, **fields)
        err = await invite(stack.http, p.acme, account_id, expect=status)
        assert err["error_code"] == code and err["details"] == {"account_id": account_id}
        async with stack.sessions() as session:  # nothing was started
            rows = (
                await session.exec(select(ProcessRow).where(ProcessRow.match_key == account_id))
            ).all()
        assert rows == []

    async def test_r_inv_2_unknown_account_and_real_name_on_china_site_only(
        self, stack: Stack
    ) -> None:
        p = People(stack)
        err = await invite(stack.http, p.acme, f"acct-missing-{uuid.uuid4().hex[:8]}", expect=422)
        assert err["error_code"] == "PF.ACCOUNT_NOT_FOUND"
        international = await new_account(stack, site="international", real_name_verified=False)
        assert (await invite(stack.http, p.acme, international))["status"] == "pending"

    async def test_r_inv_3_acceptance_after_ttl_is_refused(
        self, stack: Stack, short: httpx.AsyncClient
    ) -> None:
        p = People(stack)
        account_id = await new_account(stack)
        inv = await invite(short, p.acme, account_id)
        path = f"/v1/invitations/{inv['id']}"
        expired = await wait_status(stack.http, path, p.acme, "expired")
        assert expired["expires_at"] == inv["expires_at"]
        err = await post(stack.http, f"{path}/accept", p.account(account_id), expect=409)
        assert err["error_code"] == "PF.INVITATION_EXPIRED"
        assert await associated_partner(stack, account_id) is None
        err = await post(stack.http, f"{path}/revoke", p.acme, expect=409)
        assert err["error_code"] == "PF.INVITATION_EXPIRED"
        assert await history(stack, path, p.acme) == ["invited", "expired"]
        rows = await outbox_for(stack, inv["id"])
        assert {r.recipient for r in rows[1:]} == {"u-acme-1", f"{account_id}@customer.example"}
        assert all("expired" in r.subject for r in rows[1:])
        await check_replay(stack, inv["id"], "invitation_expired")

    async def test_r_inv_3_partner_may_invite_again_after_expiry(
        self, stack: Stack, short: httpx.AsyncClient
    ) -> None:
        p = People(stack)
        account_id = await new_account(stack)
        old = await invite(short, p.acme, account_id)
        await wait_status(stack.http, f"/v1/invitations/{old['id']}", p.acme, "expired")
        new = await invite(stack.http, p.acme, account_id)
        assert new["id"] != old["id"] and new["status"] == "pending"
        await post(stack.http, f"/v1/invitations/{new['id']}/accept", p.account(account_id))
        assert await associated_partner(stack, account_id) == "p-acme"
        old_view = await get(stack.http, f"/v1/invitations/{old['id']}", p.acme)
        assert old_view["status"] == "expired"  # the old one keeps its final state

    async def test_r_inv_4_partner_revokes_a_pending_invitation(self, stack: Stack) -> None:
        p = People(stack)
        account_id = await new_account(stack)
        inv = await invite(stack.http, p.acme, account_id)
        path = f"/v1/invitations/{inv['id']}"
        err = await post(stack.http, f"{path}/revoke", p.bright, expect=403)
        assert err["error_code"] == "PF.FORBIDDEN"  # another partner's invitation
        err = await post(stack.http, f"{path}/revoke", p.acme_member, expect=403)
        assert err["error_code"] == "PF.NOT_OWNER"  # admins only
        view = await post(
            stack.http, f"{path}/revoke", p.acme, json={"reason": "sent to the wrong person"}
        )
        assert view["status"] == "revoked" and view["revoke_reason"] == "sent to the wrong person"
        err = await post(stack.http, f"{path}/accept", p.account(account_id), expect=409)
        assert err["error_code"] == "PF.INVITATION_REVOKED"
        err = await post(stack.http, f"{path}/revoke", p.acme, expect=409)
        assert err["error_code"] == "PF.INVITATION_REVOKED"
        assert await history(stack, path, p.acme) == ["invited", "revoked"]
        rows = await outbox_for(stack, inv["id"])
        assert rows[-1].recipient == f"{account_id}@customer.example"
        assert "withdrawn" in rows[-1].subject
        # and may invite again: a new invitation, the old one stays revoked
        new = await invite(stack.http, p.acme, account_id)
        await post(stack.http, f"/v1/invitations/{new['id']}/accept", p.account(account_id))
        assert (await get(stack.http, path, p.acme))["status"] == "revoked"

    @pytest.mark.parametrize(
        ("change", "status", "code"),
        [
            ({"associated_partner_id": "p-bright"}, 409, "PF.ACCOUNT_ASSOCIATED_ELSEWHERE"),
            ({"enterprise_verified": True}, 422, "PF.ACCOUNT_ENTERPRISE_VERIFIED"),
            ({"real_name_verified": False}, 422, "PF.ACCOUNT_NOT_REAL_NAME_VERIFIED"),
        ],
        ids=["associated_elsewhere", "enterprise", "no_real_name"],
    )
    async def test_r_inv_5_eligibility_is_checked_again_at_acceptance(
        self, stack: Stack, change: dict[str, Any], status: int, code: str
    ) -> None:
        p = People(stack)
        account_id = await new_account(stack)
        inv = await invite(stack.http, p.acme, account_id)
        path = f"/v1/invitations/{inv['id']}"
        await put_account(stack, account_id, **change)  # the account changed in between
        err = await post(stack.http, f"{path}/accept", p.account(account_id), expect=status)
        assert err["error_code"] == code
        assert await associated_partner(stack, account_id) == change.get("associated_partner_id")
        # a refused acceptance leaves the invitation pending: once eligible again, it goes through
        assert (await get(stack.http, path, p.acme))["status"] == "pending"
        await put_account(stack, account_id)
        assert (await post(stack.http, f"{path}/accept", p.account(account_id)))["status"] == (
            "accepted"
        )
        assert await associated_partner(stack, account_id) == "p-acme"

    async def test_r_inv_1_another_account_cannot_accept(self, stack: Stack) -> None:
        p = People(stack)
        account_id = await new_account(stack)
        intruder = await new_account(stack)
        inv = await invite(stack.http, p.acme, account_id)
        path = f"/v1/invitations/{inv['id']}"
        for headers in (p.account(intruder), p.acme, p.pdm):
            err = await post(stack.http, f"{path}/accept", headers, expect=403)
            assert err["error_code"] == "PF.NOT_INVITEE"
        err = await get(stack.http, path, p.account(intruder), expect=403)
        assert err["error_code"] == "PF.FORBIDDEN"
        assert (await get(stack.http, path, p.acme))["status"] == "pending"
        assert await associated_partner(stack, intruder) is None
        err = await post(
            stack.http, "/v1/invitations/inv-nope/accept", p.account(account_id), expect=404
        )
        assert err["error_code"] == "PF.NOT_FOUND"

    async def test_r_inv_1_concurrent_invitations_from_two_partners_end_in_one_association(
        self, stack: Stack
    ) -> None:
        p = People(stack)
        account_id = await new_account(stack)
        invitations = [
            await invite(stack.http, h, account_id) for h in (p.acme, p.bright, p.cobalt)
        ]
        answers = await asyncio.gather(
            *(
                stack.http.post(f"/v1/invitations/{i['id']}/accept", headers=p.account(account_id))
                for i in invitations
            )
        )
        winners = [i for i, r in zip(invitations, answers, strict=True) if r.status_code == 200]
        losers = [r for r in answers if r.status_code != 200]
        assert len(winners) == 1, [r.text for r in answers]
        assert {(r.status_code, r.json()["error_code"]) for r in losers} == {
            (409, "PF.ACCOUNT_ASSOCIATED_ELSEWHERE")
        }
        assert await associated_partner(stack, account_id) == winners[0]["partner_id"]


async def test_r_inv_1_the_association_update_lets_exactly_one_writer_win(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """The store-level guarantee under the concurrency test above, on SQLite and PostgreSQL:
    many partners associating one account at the same moment, one wins."""
    async with transaction(sessions) as session:
        session.add(Account(id="acct-race", real_name_verified=True))

    async def attempt(partner_id: str) -> bool:
        async with transaction(sessions) as session:
            return await accounts.associate(
                session, account_id="acct-race", partner_id=partner_id, rules="invitation"
            )

    partners = [f"p-{n}" for n in range(8)]
    won = await asyncio.gather(*(attempt(pid) for pid in partners))
    assert sum(won) == 1
    async with sessions() as session:
        facts = await accounts.account_facts(session, "acct-race")
    assert facts is not None and facts.associated_partner_id == partners[won.index(True)]


# --- R-INV-6: customer invitations and dissociation ----------------------------------------------


async def invite_customer(http: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, Any]:
    body = {"email": f"it-{uuid.uuid4().hex[:8]}@lakeside.example", "customer_name": "Lakeside"}
    return await post(http, "/v1/customer-invitations", headers, expect=201, json=body)


class TestCustomerInvitation:
    async def test_r_inv_6_customer_registers_within_the_link_validity(self, stack: Stack) -> None:
        p = People(stack)
        link = await invite_customer(stack.http, p.acme)
        assert link["status"] == "sent" and link["token"] and link["customer_account_id"] is None
        assert link["registration_path"] == f"/v1/customer-invitations/{link['id']}/register"
        customer = await new_account(stack, enterprise_verified=True)  # customers may be firms
        view = await post(
            stack.http,
            link["registration_path"],
            p.account(customer),
            json={"token": link["token"]},
        )
        assert view["status"] == "registered" and view["customer_account_id"] == customer
        assert await associated_partner(stack, customer) == "p-acme"
        path = f"/v1/customer-invitations/{link['id']}"
        assert (await get(stack.http, path, p.acme_member))["customer_account_id"] == customer
        assert await history(stack, path, p.acme) == ["link_sent", "registered"]
        rows = await outbox_for(stack, link["id"])
        assert [r.recipient for r in rows] == [
            link["email"],
            f"{customer}@customer.example",
            "u-acme-1",
        ]
        assert link["token"] in rows[0].body
        err = await post(
            stack.http,
            link["registration_path"],
            p.account(customer),
            json={"token": link["token"]},
            expect=409,
        )
        assert err["error_code"] == "PF.LINK_USED"
        await check_replay(stack, link["id"], "customer_invitation_registered")

    async def test_r_inv_6_registration_needs_the_links_token_and_an_account(
        self, stack: Stack
    ) -> None:
        p = People(stack)
        link = await invite_customer(stack.http, p.acme)
        customer = await new_account(stack)
        err = await post(
            stack.http,
            link["registration_path"],
            p.account(customer),
            json={"token": "guess"},
            expect=403,
        )
        assert err["error_code"] == "PF.LINK_TOKEN_INVALID"
        err = await post(
            stack.http,
            link["registration_path"],
            p.bright,
            json={"token": link["token"]},
            expect=403,
        )
        assert err["error_code"] == "PF.FORBIDDEN"
        err = await get(stack.http, f"/v1/customer-invitations/{link['id']}", p.bright, expect=403)
        assert err["error_code"] == "PF.FORBIDDEN"
        # one partner per account: a customer of p-bright cannot register with p-acme
        taken = await new_account(stack, associated_partner_id="p-bright")
        err = await post(
            stack.http,
            link["registration_path"],
            p.account(taken),
            json={"token": link["token"]},
            expect=409,
        )
        assert err["error_code"] == "PF.ACCOUNT_ASSOCIATED_ELSEWHERE"
        assert (await get(stack.http, f"/v1/customer-invitations/{link['id']}", p.acme))[
            "status"
        ] == "sent"

    async def test_r_inv_6_customer_link_expires(
        self, stack: Stack, short: httpx.AsyncClient
    ) -> None:
        p = People(stack)
        link = await invite_customer(short, p.acme)
        path = f"/v1/customer-invitations/{link['id']}"
        await wait_status(stack.http, path, p.acme, "expired")
        customer = await new_account(stack)
        err = await post(
            stack.http,
            link["registration_path"],
            p.account(customer),
            json={"token": link["token"]},
            expect=409,
        )
        assert err["error_code"] == "PF.LINK_EXPIRED"
        assert await associated_partner(stack, customer) is None
        assert await history(stack, path, p.acme) == ["link_sent", "link_expired"]
        assert "expired" in (await outbox_for(stack, link["id"]))[-1].subject


async def request_dissociation(
    stack: Stack, headers: dict[str, str], account_id: str, *, expect: int = 201, **extra: Any
) -> dict[str, Any]:
    return await post(
        stack.http,
        "/v1/dissociations",
        headers,
        expect=expect,
        json={"account_id": account_id, "reason": "The customer moved region", **extra},
    )


class TestDissociation:
    async def test_r_inv_6_dissociation_accepted_ends_the_association(self, stack: Stack) -> None:
        p = People(stack)
        account_id = await new_account(stack, associated_partner_id="p-acme")
        dis = await request_dissociation(stack, p.acme, account_id)
        assert dis["status"] == "requested" and dis["reason"] == "The customer moved region"
        path = f"/v1/dissociations/{dis['id']}"
        assert (await get(stack.http, path, p.account(account_id)))["status"] == "requested"
        err = await request_dissociation(stack, p.acme, account_id, expect=409)
        assert err["error_code"] == "PF.DISSOCIATION_PENDING"
        view = await post(
            stack.http, f"{path}/accept", p.account(account_id), json={"comment": "ok"}
        )
        assert view["status"] == "accepted" and view["answer_comment"] == "ok"
        assert await associated_partner(stack, account_id) is None
        assert await history(stack, path, p.acme) == [
            "dissociation_requested",
            "dissociation_accepted",
        ]
        mail = f"{account_id}@customer.example"
        rows = await outbox_for(stack, dis["id"])
        assert [r.recipient for r in rows] == [mail, "u-acme-1", mail]  # both are told
        assert "The customer moved region" in rows[0].body
        err = await post(stack.http, f"{path}/decline", p.account(account_id), expect=409)
        assert err["error_code"] == "PF.DISSOCIATION_ANSWERED"
        # free again: another partner may now invite the account
        await invite(stack.http, p.bright, account_id)
        await check_replay(stack, dis["id"], "dissociation_accepted")

    async def test_r_inv_6_dissociation_declined_keeps_the_association(self, stack: Stack) -> None:
        p = People(stack)
        account_id = await new_account(stack, associated_partner_id="p-acme")
        dis = await request_dissociation(stack, p.acme, account_id)
        path = f"/v1/dissociations/{dis['id']}"
        view = await post(stack.http, f"{path}/decline", p.account(account_id))
        assert view["status"] == "declined" and view["answered_at"]
        assert await associated_partner(stack, account_id) == "p-acme"
        rows = await outbox_for(stack, dis["id"])
        assert {r.recipient for r in rows[1:]} == {"u-acme-1", f"{account_id}@customer.example"}
        assert all("declined" in r.subject for r in rows[1:])
        # the partner may ask again later
        again = await request_dissociation(stack, p.acme, account_id)
        assert again["id"] != dis["id"]

    async def test_r_inv_6_unanswered_dissociation_lapses_and_both_are_told(
        self, stack: Stack, short: httpx.AsyncClient
    ) -> None:
        p = People(stack)
        account_id = await new_account(stack, associated_partner_id="p-acme")
        dis = await post(
            short,
            "/v1/dissociations",
            p.acme,
            expect=201,
            json={"account_id": account_id, "reason": "The customer moved region"},
        )
        assert dis["lapses_at"] is not None
        path = f"/v1/dissociations/{dis['id']}"
        view = await wait_status(stack.http, path, p.acme, "lapsed")
        assert view["answered_at"] is None
        assert await associated_partner(stack, account_id) == "p-acme"  # nothing changed
        err = await post(stack.http, f"{path}/accept", p.account(account_id), expect=409)
        assert err["error_code"] == "PF.DISSOCIATION_LAPSED"
        assert await history(stack, path, p.acme) == [
            "dissociation_requested",
            "dissociation_lapsed",
        ]
        rows = await outbox_for(stack, dis["id"])
        mail = f"{account_id}@customer.example"
        assert [r.recipient for r in rows] == [mail, "u-acme-1", mail]  # both are told
        assert all("lapsed" in r.subject for r in rows[1:])
        # the partner may ask again
        again = await request_dissociation(stack, p.acme, account_id)
        assert again["id"] != dis["id"]
        await check_replay(stack, dis["id"], "dissociation_lapsed")

    async def test_r_inv_6_dissociation_needs_a_reason_an_association_and_the_customer(
        self, stack: Stack
    ) -> None:
        p = People(stack)
        account_id = await new_account(stack, associated_partner_id="p-acme")
        err = await request_dissociation(stack, p.acme, account_id, reason="  ", expect=422)
        assert err["error_code"] == "PF.VALIDATION_FAILED"
        err = await request_dissociation(stack, p.bright, account_id, expect=409)
        assert err["error_code"] == "PF.ACCOUNT_NOT_ASSOCIATED"
        err = await request_dissociation(stack, p.acme_member, account_id, expect=403)
        assert err["error_code"] == "PF.FORBIDDEN"
        dis = await request_dissociation(stack, p.acme, account_id)
        other = await new_account(stack)
        for headers in (p.account(other), p.acme):
            err = await post(
                stack.http, f"/v1/dissociations/{dis['id']}/accept", headers, expect=403
            )
            assert err["error_code"] == "PF.NOT_CUSTOMER"
        assert await associated_partner(stack, account_id) == "p-acme"
