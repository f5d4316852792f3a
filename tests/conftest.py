"""Shared fixtures: real databases (SQLite and PostgreSQL), a real Temporal dev server, a real
worker and the real API served by uvicorn, driven over HTTP.

PostgreSQL comes from PARTNERFLOW_TEST_POSTGRES_URL (default the local server's `test`
database); each test session creates its own databases there and drops them at the end.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from store.db import create_engine, session_factory
from store.migrate import upgrade

POSTGRES_ADMIN_URL = os.environ.get(
    "PARTNERFLOW_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def _pg_conninfo(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def postgres_reachable() -> bool:
    try:
        with psycopg.connect(_pg_conninfo(POSTGRES_ADMIN_URL), connect_timeout=3):
            return True
    except psycopg.Error:
        return False


class PostgresDatabases:
    """Creates throw-away databases on the shared server; drops them at session end."""

    def __init__(self) -> None:
        self.created: list[str] = []

    def create(self) -> str:
        name = f"pf_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(_pg_conninfo(POSTGRES_ADMIN_URL), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(
            hide_password=False
        )

    def drop_all(self) -> None:
        with psycopg.connect(_pg_conninfo(POSTGRES_ADMIN_URL), autocommit=True) as conn:
            for name in self.created:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[PostgresDatabases]:
    if not postgres_reachable():
        # CI refuses to start without PostgreSQL (.ci/run); locally, say so loudly.
        pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}")
    dbs = PostgresDatabases()
    yield dbs
    dbs.drop_all()


def new_database_url(kind: str, tmp_path: Path, pg: PostgresDatabases | None) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / f'pf-{uuid.uuid4().hex[:8]}.db'}"
    assert pg is not None
    return pg.create()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path
) -> str:
    """A fresh, migrated database of each kind: store tests run on both."""
    pg = request.getfixturevalue("postgres_databases") if request.param == "postgresql" else None
    url = new_database_url(request.param, tmp_path, pg)
    upgrade(url)
    return url


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(database_url)
    yield eng
    await eng.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return session_factory(engine)
