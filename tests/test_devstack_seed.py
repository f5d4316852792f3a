"""`make run` seeds demo data only into an empty store and never overwrites an operator's data
(issue 12, finding 5), and seeds before the API listens, so `/readyz` cannot answer ready
before the demo data is loaded."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, delete, select
from sqlmodel.ext.asyncio.session import AsyncSession

import devstack
from config import Settings
from store.models import Partner, RoutingRule


async def rules(sessions: async_sessionmaker[AsyncSession]) -> list[tuple[str | None, str]]:
    async with sessions() as session:
        rows = (await session.exec(select(RoutingRule).order_by(col(RoutingRule.position)))).all()
    return [(r.region, r.pdm) for r in rows]


async def test_demo_data_is_seeded_once_and_an_operators_table_stays(
    database_url: str, sessions: async_sessionmaker[AsyncSession]
) -> None:
    assert await devstack.seed_demo_data(database_url) is True
    async with sessions() as session:
        partners = {p.id for p in (await session.exec(select(Partner))).all()}
    assert partners == set(devstack.DEMO_PARTNERS)
    assert len(await rules(sessions)) == len(devstack.DEMO_ROUTING_RULES)
    # an operator replaces the routing table (as PUT /v1/admin/routing-rules does)
    async with sessions() as session, session.begin():
        await session.exec(delete(RoutingRule))
        session.add(RoutingRule(position=0, region="west-china", pdm="pdm-operator"))
    # the next `make run`
    assert await devstack.seed_demo_data(database_url) is False
    assert await rules(sessions) == [("west-china", "pdm-operator")]


async def test_a_store_with_only_an_operators_rules_is_not_seeded(
    database_url: str, sessions: async_sessionmaker[AsyncSession]
) -> None:
    async with sessions() as session, session.begin():
        session.add(RoutingRule(position=0, region="west-china", pdm="pdm-operator"))
    assert await devstack.seed_demo_data(database_url) is False
    async with sessions() as session:
        assert (await session.exec(select(Partner))).first() is None
    assert await rules(sessions) == [("west-china", "pdm-operator")]


def test_demo_data_is_seeded_before_the_api_listens(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """The order of `_start`: migrations, seeding, then the processes; the API last."""
    events: list[str] = []

    async def seed(url: str) -> bool:
        events.append("seed")
        return True

    class Done:
        returncode = 0

    monkeypatch.setattr(devstack, "seed_demo_data", seed)

    def migrate(*args: Any, **kwargs: Any) -> Done:
        events.append("migrate")
        return Done()

    monkeypatch.setattr(subprocess, "run", migrate)
    stack = devstack.DevStack(Settings(data_dir=tmp_path))
    monkeypatch.setattr(stack, "_refuse_busy_ports", lambda: None)
    monkeypatch.setattr(stack, "_spawn", lambda name, command: events.append(f"spawn {name}"))
    monkeypatch.setattr(stack, "_wait_for_temporal", lambda: None)
    monkeypatch.setattr(stack, "_wait_for_api", lambda: events.append("api ready"))
    monkeypatch.setattr(stack, "_print_banner", lambda tokens: None)
    stack._start()
    assert events.index("seed") < events.index("spawn api") < events.index("api ready")
    assert events[:2] == ["migrate", "seed"]
