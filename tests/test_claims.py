"""Exclusive claims (`store.claims.CLAIM_SCOPES`): every scope the code takes a claim under is
described once; for each, what happens when the fields its key is made of change (nothing may
change them, or the claim moves, or it is given back) and when its holder closes (released in
the same commit). Then R-PO-4's "one open PO per partner, customer and project" following a PO
through R-PO-7 (resubmission) and R-PO-9 (re-verification) over HTTP, concurrency included, and
the history of a PO whose claim moved, replayed."""

from __future__ import annotations

import ast
import asyncio
import importlib
import os
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from domain.certification import CertificationStatus
from domain.incentives import IncentiveStatus
from domain.invitations import CustomerInvitationStatus, DissociationStatus, InvitationStatus
from domain.opportunity import OpportunityStatus, claim_key, match_key
from domain.projection import ProcessRecord, Transition
from domain.resellers import ApplicationStatus
from store.claims import CLAIM_SCOPES, PO_APPROVED, PO_OPEN, KeyChange, claim
from store.db import transaction
from store.models import Claim
from store.readmodel import apply_transition
from tests.conftest import Stack
from tests.helpers import ALL_PASS, Actors, complete, get_po, history_actions, po_body, submit
from tests.test_replay import HISTORIES, replayer
from workflows.registry import ALL_WORKFLOWS

ROOT = Path(__file__).resolve().parent.parent
CLAIM_FUNCTIONS = {"claim", "claim_or_refuse", "take", "move", "release", "claimed_within"}
STATUSES: dict[str, type[StrEnum]] = {
    "opportunity": OpportunityStatus,
    "certification": CertificationStatus,
    "invitation": InvitationStatus,
    "customer_invitation": CustomerInvitationStatus,
    "dissociation": DissociationStatus,
    "reseller_application": ApplicationStatus,
    "incentive": IncentiveStatus,
}
PROCESSES = {str(w.process): w for w in ALL_WORKFLOWS}  # type: ignore[attr-defined]


def scopes_in_code() -> dict[str, list[str]]:
    """Every scope a claim function is called with in api/, store/, activities/: the `scope=`
    argument evaluated in its module (a literal, a constant, `PO_OPEN.name`), with where."""
    found: dict[str, list[str]] = {}
    for folder in ("api", "store", "activities"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            tree = ast.parse(path.read_text())
            module = importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts))
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call):
                    continue
                name = getattr(node.func, "id", getattr(node.func, "attr", None))
                if name not in CLAIM_FUNCTIONS:
                    continue
                for kw in node.keywords:
                    if kw.arg != "scope":
                        continue
                    try:
                        value = eval(ast.unparse(kw.value), vars(module))
                    except NameError:
                        continue  # a wrapper passing its own `scope` parameter on
                    found.setdefault(value, []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_every_claim_scope_in_use_is_described_and_every_described_one_is_used() -> None:
    used = scopes_in_code()
    assert set(used) == set(CLAIM_SCOPES), (sorted(used), sorted(CLAIM_SCOPES))
    for scope in CLAIM_SCOPES.values():
        assert scope.process in PROCESSES, scope
        statuses = {s.value for s in STATUSES[scope.process]}
        assert scope.released_at <= statuses, scope
        assert scope.rule.startswith("R-"), scope


def test_every_process_of_the_registry_has_its_statuses_here() -> None:
    assert set(STATUSES) == set(PROCESSES)


def fields_of(model: type[BaseModel], skip: frozenset[str] = frozenset({"actor"})) -> set[str]:
    """Every field name a model carries, nested models' included."""
    names: set[str] = set()
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        names.add(name)
        kind = info.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            names |= fields_of(kind)
    return names


def changes_of(workflow: Any) -> dict[str, set[str]]:
    """What each command (and each task outcome's data) a process accepts can carry."""
    changes: dict[str, set[str]] = {}
    for command in workflow.commands:
        changes[command.__name__] = fields_of(command)
    for kind in workflow.task_kinds.values():
        for outcome, spec in kind.outcomes.items():
            if spec.data_model is not None:
                changes[f"{kind.name}:{outcome}"] = fields_of(spec.data_model)
    return changes


@pytest.mark.parametrize("scope", sorted(CLAIM_SCOPES))
def test_a_claims_key_fields_change_only_where_the_claim_follows_them(scope: str) -> None:
    """For every scope and every command or task outcome of its process: a `fixed` key is never
    among what they carry; a key that moves or is given back is (the PO's, R-PO-7 / R-PO-9),
    and its workflow moves it (`test_r_po_4_*` below)."""
    spec = CLAIM_SCOPES[scope]
    carried = {
        name: fields & set(spec.key_fields)
        for name, fields in changes_of(PROCESSES[spec.process]).items()
    }
    changing = {name: fields for name, fields in carried.items() if fields}
    if spec.on_key_change is KeyChange.fixed:
        assert not changing, (scope, changing)
    else:
        assert set(changing) == {"ResubmitOpportunity", "UpdateProgress"}, (scope, changing)


# --- released with the commit that closes the holder -------------------------------------------


def closing(process: str, process_id: str, status: str) -> Transition:
    now = datetime.now(UTC)
    return Transition(
        record=ProcessRecord(
            id=process_id,
            process=process,
            partner_id="p-claims",
            status=status,
            version=1,
            created_at=now,
            updated_at=now,
            view={"id": process_id, "status": status},
        )
    )


async def holders(sessions: async_sessionmaker[AsyncSession], scope: str, key: str) -> list[str]:
    async with sessions() as session:
        rows = await session.exec(
            select(Claim.owner_id).where(col(Claim.scope) == scope, col(Claim.key) == key)
        )
        return list(rows.all())


@pytest.mark.parametrize("scope", sorted(CLAIM_SCOPES))
async def test_every_claim_is_released_by_the_commit_that_closes_its_holder(
    scope: str, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """For every scope and every status of its process: a transition into a status the scope
    releases at deletes the holder's claim in the same transaction (then anyone may take the
    key); any other status keeps it."""
    spec = CLAIM_SCOPES[scope]
    for status in STATUSES[spec.process]:
        holder = f"{spec.process}-{uuid.uuid4().hex[:12]}"
        key = f"k-{uuid.uuid4().hex}"
        async with transaction(sessions) as session:
            session.add(Claim(scope=scope, key=key, owner_id=holder))
        async with transaction(sessions) as session:
            await apply_transition(session, closing(spec.process, holder, status.value))
        released = status.value in spec.released_at
        assert await holders(sessions, scope, key) == ([] if released else [holder]), status

        async def still_live(_: str) -> bool:
            return True

        taken = await claim(
            sessions, scope=scope, key=key, owner_id="next", holder_is_live=still_live
        )
        assert (taken is None) == released, (status, taken)


# --- R-PO-4 with R-PO-7 / R-PO-9, over HTTP ------------------------------------------------------


async def open_claims(stack: Stack, po_id: str) -> dict[str, set[str]]:
    async with stack.sessions() as session:
        rows = await session.exec(select(Claim).where(col(Claim.owner_id) == po_id))
        held: dict[str, set[str]] = {}
        for row in rows.all():
            held.setdefault(row.scope, set()).add(row.key)
        return held


def key_of(partner_id: str, body: dict[str, Any]) -> str:
    return claim_key(partner_id, match_key(body["customer_name"], body["project_name"]))


def edited(view: dict[str, Any], **changes: Any) -> dict[str, Any]:
    fields = ("customer_name", "project_name", "offerings", "amount", "expected_close_date")
    return {**{k: view[k] for k in fields}, "region": view["region"], **changes}


async def returned_po(stack: Stack, a: Actors, **overrides: Any) -> dict[str, Any]:
    po = await submit(stack.http, a.acme, **overrides)
    return await complete(
        stack.http,
        a.pdm_li,
        po["open_task_id"],
        "return",
        comment="which site?",
        data={"criteria": ALL_PASS},
    )


async def resubmitted_onto_another_open_po(
    stack: Stack, a: Actors
) -> tuple[dict[str, Any], dict[str, Any], httpx.Response]:
    """A returned PO of p-acme resubmitted onto the (customer, project) of another open PO of
    p-acme: (the returned PO, the other, the 409 answer)."""
    po = await returned_po(stack, a)
    other = await submit(stack.http, a.acme)
    r = await stack.http.post(
        f"/v1/opportunities/{po['id']}/resubmit",
        json=edited(po, customer_name=other["customer_name"], project_name=other["project_name"]),
        headers=a.acme,
    )
    assert r.status_code == 409, r.text
    return po, other, r


async def test_r_po_4_r_po_7_a_resubmitted_po_takes_its_new_key_and_frees_the_old_one(
    stack: Stack,
) -> None:
    a = Actors(stack)
    po, other, r = await resubmitted_onto_another_open_po(stack, a)
    # the new (customer, project) is another open PO's: refused, nothing written
    assert r.json()["error_code"] == "PF.OPPORTUNITY_EXISTS"
    assert r.json()["details"]["existing_id"] == other["id"]
    assert (await get_po(stack.http, a.acme, po["id"]))["status"] == "returned"
    assert "resubmitted" not in await history_actions(stack.http, a.acme, po["id"])
    assert await open_claims(stack, po["id"]) == {PO_OPEN.name: {key_of("p-acme", po)}}

    # a new (customer, project) nobody holds: the claim follows the PO
    body = po_body()
    r = await stack.http.post(
        f"/v1/opportunities/{po['id']}/resubmit",
        json=edited(
            po, **{"customer_name": body["customer_name"], "project_name": body["project_name"]}
        ),
        headers=a.acme,
    )
    assert r.status_code == 200, r.text
    assert await open_claims(stack, po["id"]) == {PO_OPEN.name: {key_of("p-acme", body)}}
    # the new key is this PO's: a second open PO for it is the duplicate R-PO-4 refuses
    r = await stack.http.post("/v1/opportunities", json=body, headers=a.acme)
    assert r.status_code == 409, r.text
    assert r.json()["details"]["existing_id"] == po["id"]
    # the old key is free again
    old = {k: po[k] for k in ("customer_name", "project_name")}
    r = await stack.http.post("/v1/opportunities", json=po_body(**old), headers=a.acme)
    assert r.status_code == 201, r.text


async def test_r_po_4_r_po_9_a_re_verified_po_moves_its_open_claim_and_gives_back_its_approval(
    stack: Stack,
) -> None:
    a = Actors(stack)
    po = await submit(stack.http, a.acme)
    await complete(stack.http, a.pdm_li, po["open_task_id"], "approve", data={"criteria": ALL_PASS})
    first = match_key(po["customer_name"], po["project_name"])
    assert await open_claims(stack, po["id"]) == {
        PO_OPEN.name: {key_of("p-acme", po)},
        PO_APPROVED.name: {first},
    }
    other = await submit(stack.http, a.acme)
    r = await stack.http.patch(
        f"/v1/opportunities/{po['id']}",
        json={"customer_name": other["customer_name"], "project_name": other["project_name"]},
        headers=a.acme,
    )
    assert r.status_code == 409, r.text
    assert r.json()["error_code"] == "PF.OPPORTUNITY_EXISTS"
    assert r.json()["details"]["existing_id"] == other["id"]
    assert (await get_po(stack.http, a.acme, po["id"]))["status"] == "approved"

    moved_to = po_body()["customer_name"]
    r = await stack.http.patch(
        f"/v1/opportunities/{po['id']}", json={"customer_name": moved_to}, headers=a.acme
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "in_review"
    now = {"customer_name": moved_to, "project_name": po["project_name"]}
    # R-PO-9: not approved under the new key, so no approval claim on the old one either
    assert await open_claims(stack, po["id"]) == {PO_OPEN.name: {key_of("p-acme", now)}}
    r = await stack.http.post("/v1/opportunities", json=po_body(**now), headers=a.acme)
    assert r.status_code == 409, r.text
    assert r.json()["details"]["existing_id"] == po["id"]
    old = {k: po[k] for k in ("customer_name", "project_name")}
    r = await stack.http.post("/v1/opportunities", json=po_body(**old), headers=a.acme)
    assert r.status_code == 201, r.text
    # approved again under its new key, it claims that one
    view = await get_po(stack.http, a.acme, po["id"])
    await complete(
        stack.http, a.pdm_li, view["open_task_id"], "approve", data={"criteria": ALL_PASS}
    )
    assert await open_claims(stack, po["id"]) == {
        PO_OPEN.name: {key_of("p-acme", now)},
        PO_APPROVED.name: {match_key(moved_to, po["project_name"])},
    }
    # closed (lost): both claims are given back with the commit
    r = await stack.http.patch(
        f"/v1/opportunities/{po['id']}", json={"stage": "lost"}, headers=a.acme
    )
    assert r.status_code == 200, r.text
    assert await open_claims(stack, po["id"]) == {}


async def test_r_po_4_two_edits_and_a_submission_racing_for_one_key_one_wins(
    stack: Stack,
) -> None:
    a = Actors(stack)
    first, second = await returned_po(stack, a), await returned_po(stack, a)
    target = po_body()
    names = {k: target[k] for k in ("customer_name", "project_name")}
    answers = await asyncio.gather(
        stack.http.post(
            f"/v1/opportunities/{first['id']}/resubmit",
            json=edited(first, **names),
            headers=a.acme,
        ),
        stack.http.post(
            f"/v1/opportunities/{second['id']}/resubmit",
            json=edited(second, **names),
            headers=a.acme,
        ),
        stack.http.post("/v1/opportunities", json=target, headers=a.acme),
    )
    codes = sorted(r.status_code for r in answers)
    assert codes in ([200, 409, 409], [201, 409, 409]), [r.text for r in answers]
    winner = next(r.json()["id"] for r in answers if r.status_code in (200, 201))
    for r in answers:
        if r.status_code == 409:
            assert r.json()["error_code"] == "PF.OPPORTUNITY_EXISTS", r.text
            assert r.json()["details"]["existing_id"] == winner, r.text
    key = key_of("p-acme", target)
    assert await holders(stack.sessions, PO_OPEN.name, key) == [winner]
    # a loser keeps its own key, and holds nothing else
    for po in (first, second):
        if po["id"] != winner:
            assert await open_claims(stack, po["id"]) == {PO_OPEN.name: {key_of("p-acme", po)}}
            assert (await get_po(stack.http, a.acme, po["id"]))["status"] == "returned"


async def test_r_po_4_open_claim_follows_history_replays(stack: Stack) -> None:
    """A PO returned, refused a resubmission onto another open PO's key, resubmitted onto a new
    key, approved, moved by R-PO-9 to another customer, approved and lost: recorded as
    `opportunity_open_claim_follows`, replayed on the current code."""
    if stack.db != "sqlite":
        pytest.skip("one recording is enough; the workflow code does not depend on the store")
    a = Actors(stack)
    po, _, _ = await resubmitted_onto_another_open_po(stack, a)
    fresh = po_body()
    r = await stack.http.post(
        f"/v1/opportunities/{po['id']}/resubmit",
        json=edited(po, project_name=fresh["project_name"]),
        headers=a.acme,
    )
    assert r.status_code == 200, r.text
    await complete(
        stack.http, a.pdm_li, r.json()["open_task_id"], "approve", data={"criteria": ALL_PASS}
    )
    r = await stack.http.patch(
        f"/v1/opportunities/{po['id']}",
        json={"customer_name": fresh["customer_name"]},
        headers=a.acme,
    )
    assert r.status_code == 200, r.text
    await complete(
        stack.http, a.pdm_li, r.json()["open_task_id"], "approve", data={"criteria": ALL_PASS}
    )
    r = await stack.http.patch(
        f"/v1/opportunities/{po['id']}", json={"stage": "lost"}, headers=a.acme
    )
    assert r.status_code == 200, r.text
    handle = stack.client.get_workflow_handle(po["id"])
    assert (await handle.result())["status"] == "lost"
    history = await handle.fetch_history()
    await replayer().replay_workflow(history)
    if os.environ.get("PARTNERFLOW_RECORD_HISTORIES") == "1":
        (HISTORIES / f"opportunity_open_claim_follows__{po['id']}.json").write_text(
            history.to_json()
        )
