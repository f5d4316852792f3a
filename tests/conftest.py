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
    """Creates throw-away databases on the shared server; drops them at session end.

    Names are random (`pf_test_<uuid>`), so test runs and xdist workers sharing the server never
    meet. The server is first reached on the first `create()`: a session that needs no
    PostgreSQL never asks for it, and one that does fails there, saying where it looked.
    """

    def __init__(self) -> None:
        self.created: list[str] = []
        self.reachable: bool | None = None

    def create(self) -> str:
        if self.reachable is None:
            self.reachable = postgres_reachable()
        if not self.reachable:
            # CI refuses to start without PostgreSQL (.ci/run); locally, say so loudly.
            pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}")
        name = f"pf_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(_pg_conninfo(POSTGRES_ADMIN_URL), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        if not self.created:
            return
        with psycopg.connect(_pg_conninfo(POSTGRES_ADMIN_URL), autocommit=True) as conn:
            for name in self.created:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[PostgresDatabases]:
    dbs = PostgresDatabases()
    yield dbs
    dbs.drop_all()


def new_database_url(kind: str, tmp_path: Path, pg: PostgresDatabases | None) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / f'pf-{uuid.uuid4().hex[:8]}.db'}"
    assert pg is not None
    return pg.create()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
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


# --- the real stack: Temporal dev server, worker, API over HTTP ---------------------------------

import asyncio  # noqa: E402
import contextlib  # noqa: E402
import fcntl  # noqa: E402
import itertools  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Awaitable, Callable  # noqa: E402
from contextlib import asynccontextmanager  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any, TypeVar  # noqa: E402

import httpx  # noqa: E402
import uvicorn  # noqa: E402
from temporalio.client import Client  # noqa: E402

from api.auth import mint_token  # noqa: E402
from api.main import create_app  # noqa: E402
from config import Settings  # noqa: E402
from devstack import temporal_dev_server_command  # noqa: E402
from domain.policy import Policy  # noqa: E402
from worker import connect, running_worker  # noqa: E402

T = TypeVar("T")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


# Ports for the servers the tests start (Temporal, uvicorn, proxies, webhook receivers). Asking
# the kernel for port 0 and closing it races: until our server binds, any process may be handed
# that port, by its own bind(0) or as the local end of an outgoing connection (both come from the
# ephemeral range, /proc/sys/net/ipv4/ip_local_port_range, 32768-60999 here), and with several
# xdist workers starting servers at once that race was lost. So ports come from below the
# ephemeral range, where the kernel hands out nothing, and each is reserved across processes
# (xdist workers, other test runs on the machine) by an exclusive lock on a file named after it,
# held until this process exits, then checked free by a bind (a service already listening there).
TEST_PORTS = range(20000, 32768)
PORT_LOCKS = Path(tempfile.gettempdir()) / "partnerflow-test-ports"
_port_locks: dict[int, int] = {}  # port -> the descriptor holding its lock, for the process life


def _xdist_worker_index() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")  # set by pytest-xdist in its workers
    return int(worker.removeprefix("gw") or 0)


# Each worker starts in its own stretch of the range, so they rarely even meet on a lock.
_port_candidates = itertools.islice(
    itertools.cycle(TEST_PORTS),
    (_xdist_worker_index() * 1000) % len(TEST_PORTS),
    None,
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on and that no other test process of this
    machine, nor the kernel, will hand out while this process lives."""
    PORT_LOCKS.mkdir(exist_ok=True)
    for _ in TEST_PORTS:
        port = next(_port_candidates)
        if port in _port_locks:
            continue
        fd = os.open(PORT_LOCKS / f"{port}.lock", os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another live test process holds it
            os.close(fd)
            continue
        try:
            with socket.socket() as s:
                # as servers bind (SO_REUSEADDR): only a listener makes the port unusable
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", port))
        except OSError:
            os.close(fd)
            continue
        _port_locks[port] = fd
        return port
    raise RuntimeError(f"no free port left in {TEST_PORTS}")


async def eventually(
    probe: Callable[[], Awaitable[T | None]],
    *,
    timeout: float = 15.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll `probe` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


@dataclass
class TemporalServer:
    address: str
    ui_url: str
    db_file: Path
    process: subprocess.Popen[bytes]
    command: list[str] = field(default_factory=list)


def start_temporal(
    tmp: Path, *, db_file: Path | None = None, port: int | None = None, ui_port: int | None = None
) -> TemporalServer:
    port = port or free_port()
    ui_port = ui_port or free_port()
    db_file = db_file or tmp / "temporal.db"
    settings = Settings(temporal_port=port, ui_port=ui_port)
    command = temporal_dev_server_command(
        settings,
        str(db_file),
        extra=["--http-port", str(free_port()), "--metrics-port", str(free_port())],
    )
    ARTIFACTS.mkdir(exist_ok=True)
    log_path = ARTIFACTS / f"temporal-{port}.log"
    with log_path.open("wb") as log:
        # its own process group: `stop_process` ends it and anything it started, together
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"temporal dev server exited: see {log_path}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.1)  # waiting on a port, not on state: nothing to poll but the socket
    else:
        stop_process(proc, grace=0)
        raise RuntimeError(f"temporal dev server did not open its port in 60s: see {log_path}")
    return TemporalServer(
        f"127.0.0.1:{port}", f"http://127.0.0.1:{ui_port}", db_file, proc, command
    )


def stop_process(proc: subprocess.Popen[bytes], grace: float = 10) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds. A process that leads its own group
    (`start_new_session=True`, as the Temporal dev server) is signalled with its whole group,
    and whatever of the group is left once it has exited is killed too."""
    if proc.poll() is not None:
        return  # exited and reaped: its pid may be another process's by now
    own_group = False
    with contextlib.suppress(ProcessLookupError):
        own_group = os.getpgid(proc.pid) == proc.pid

    def signal_all(sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            if own_group:
                os.killpg(proc.pid, sig)  # the group id lives while any member does
            elif proc.poll() is None:
                proc.send_signal(sig)

    signal_all(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        signal_all(signal.SIGKILL)
        proc.wait()
    if own_group:
        signal_all(signal.SIGKILL)  # nothing of the group outlives its leader


@pytest.fixture(scope="session")
def temporal_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TemporalServer]:
    server = start_temporal(tmp_path_factory.mktemp("temporal"))
    try:
        yield server
    finally:
        stop_process(server.process)


async def wait_for_namespace(client: Client) -> None:
    from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest

    async def ready() -> bool:
        try:
            await client.workflow_service.describe_namespace(
                DescribeNamespaceRequest(namespace=client.namespace)
            )
            return True
        except Exception:
            return False

    await eventually(ready, timeout=30, what="the Temporal namespace")


class ApiServer:
    """The real app under uvicorn on a free port, in this event loop."""

    def __init__(self, settings: Settings, app: Any = None) -> None:
        self.port = free_port()
        self.settings = settings
        self.server = uvicorn.Server(
            uvicorn.Config(
                app or create_app(settings),
                host="127.0.0.1",
                port=self.port,
                log_level="warning",
                lifespan="on",
                # Longer than any pause between a test's requests: with uvicorn's 5 s, a pooled
                # connection the server closes just as the client reuses it is a ReadError (seen
                # under load in the 50-completion race), which no service change can prevent.
                timeout_keep_alive=60,
            )
        )
        self.task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.task = asyncio.create_task(self.server.serve())

        async def started() -> bool:
            if self.task is not None and self.task.done():
                self.task.result()
            return self.server.started

        await eventually(started, timeout=20, what="uvicorn to start")

    async def stop(self) -> None:
        self.server.should_exit = True
        if self.task is not None:
            await self.task


@dataclass
class Stack:
    """One partnerflow deployment under test: its own database and task queue."""

    db: str
    settings: Settings
    client: Client
    api: ApiServer
    fast_api: ApiServer  # same store and worker, short policy durations (SLA tests)
    http: httpx.AsyncClient
    fast_http: httpx.AsyncClient
    sessions: Any

    def token(
        self, sub: str, roles: list[str], partner_id: str | None = None, ttl: int = 3600
    ) -> str:
        return mint_token(
            self.settings.jwt_secret, sub=sub, roles=roles, partner_id=partner_id, ttl_seconds=ttl
        )

    def auth(self, sub: str, roles: list[str], partner_id: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(sub, roles, partner_id)}"}


# Every xdist worker's stacks, the API and worker processes tests start, and any other test run
# on the machine share the PostgreSQL server's max_connections (100 by default). With the
# service's pools of 20 (+20 overflow) per engine, two workers and the scale-out test's four
# processes ran out of slots ("too many clients"); the tests' traffic needs a few each.
TEST_DB_POOL_SIZE = 5

FAST_POLICY = Policy(
    po_review_sla="PT4S",
    cert_validity="PT30S",
    recert_window="PT10S",
    payout_sla="PT4S",
    invite_ttl="PT4S",
)


# Webhook retries and give-up thresholds short enough for a test to watch (tests/test_webhooks.py).
FAST_WEBHOOKS = {
    "poll_interval_seconds": 0.1,
    "timeout_seconds": 5.0,
    "base_backoff_seconds": 0.2,
    "max_backoff_seconds": 1.0,
    "disable_after_failures": 6,
    "claim_lease_seconds": 30.0,
}


async def load_reference_data(http: httpx.AsyncClient, admin: dict[str, str]) -> None:
    partners = {
        "p-acme": {
            "name": "Acme Cloud",
            "kind": "solution_provider",
            "tier": "core",
            "region": "east-china",
            "business_info_certified": True,
        },
        "p-bright": {
            "name": "Bright Data",
            "kind": "solution_provider",
            "tier": "leading",
            "region": "north-china",
        },
        "p-cobalt": {"name": "Cobalt Soft", "kind": "software", "region": "south-china"},
    }
    for pid, body in partners.items():
        r = await http.put(f"/v1/admin/partners/{pid}", json=body, headers=admin)
        assert r.status_code == 200, r.text
    r = await http.put(
        "/v1/admin/offerings",
        headers=admin,
        json=[
            {"code": "ecs", "name": "Elastic Compute"},
            {"code": "rds", "name": "Relational DB"},
            {"code": "oss", "name": "Object Storage"},
        ],
    )
    assert r.status_code == 200, r.text
    r = await http.put(
        "/v1/admin/routing-rules",
        headers=admin,
        json=[
            {"partner_id": "p-acme", "pdm": "pdm-li", "psm": "psm-zhao"},
            {"region": "north-china", "pdm": "pdm-wang", "psm": "psm-qian"},
            {"region": "north-china", "industry": "finance", "pdm": "pdm-sun"},
        ],
    )
    assert r.status_code == 200, r.text


@asynccontextmanager
async def running_stack(
    kind: str, temporal_server: TemporalServer, db_dir: Path, pg: PostgresDatabases | None
) -> AsyncIterator[Stack]:
    """The whole service on a fresh database of `kind`: a worker on its own task queue, two
    uvicorn APIs, the reference data loaded."""
    url = new_database_url(kind, db_dir, pg)
    upgrade(url)
    settings = Settings(
        database_url=url,
        temporal_address=temporal_server.address,
        task_queue=f"pf-test-{uuid.uuid4().hex[:8]}",
        rate_limit={"requests_per_second": 10_000, "burst": 10_000},
        update_timeout_seconds=20,
        webhooks=FAST_WEBHOOKS,
        database_pool_size=TEST_DB_POOL_SIZE,
    )
    client = await connect(settings)
    await wait_for_namespace(client)
    api = ApiServer(settings)
    fast_api = ApiServer(settings.model_copy(update={"policy": FAST_POLICY}))
    engine = create_engine(url, pool_size=TEST_DB_POOL_SIZE)
    try:
        async with running_worker(settings, client):
            await api.start()
            try:
                await fast_api.start()
                try:
                    async with (
                        httpx.AsyncClient(base_url=api.url, timeout=30) as http,
                        httpx.AsyncClient(base_url=fast_api.url, timeout=30) as fast_http,
                    ):
                        s = Stack(
                            kind,
                            settings,
                            client,
                            api,
                            fast_api,
                            http,
                            fast_http,
                            session_factory(engine),
                        )
                        await load_reference_data(http, s.auth("ops-1", ["ops_admin"]))
                        yield s
                finally:
                    await fast_api.stop()
            finally:
                await api.stop()
    finally:
        await engine.dispose()


class StackPool:
    """At most one stack per database kind for the whole session, built on first use.

    pytest keeps one instance of a parametrized fixture at a time: a session-scoped `stack`
    switching from sqlite to postgresql is torn down and, switching back, built again. In one
    process the suite's order groups the tests by kind, but an xdist worker runs the tests it is
    sent in the order they come (whole files of both kinds with `--dist loadfile`), and would
    rebuild a stack at every switch. The pool keeps both alive, so `stack` only hands out the
    kind asked for.
    """

    def __init__(
        self,
        temporal_server: TemporalServer,
        tmp_path_factory: pytest.TempPathFactory,
        pg: PostgresDatabases,
    ) -> None:
        self.temporal_server = temporal_server
        self.tmp_path_factory = tmp_path_factory
        self.pg = pg
        self.stacks: dict[str, Stack] = {}
        self.running = contextlib.AsyncExitStack()

    async def get(self, kind: str) -> Stack:
        if kind not in self.stacks:
            self.stacks[kind] = await self.running.enter_async_context(
                running_stack(
                    kind,
                    self.temporal_server,
                    self.tmp_path_factory.mktemp("db"),
                    self.pg if kind == "postgresql" else None,
                )
            )
        return self.stacks[kind]


@pytest.fixture(scope="session")
async def stack_pool(
    temporal_server: TemporalServer,
    tmp_path_factory: pytest.TempPathFactory,
    postgres_databases: PostgresDatabases,  # dropped after the stacks on it are stopped
) -> AsyncIterator[StackPool]:
    pool = StackPool(temporal_server, tmp_path_factory, postgres_databases)
    async with pool.running:
        yield pool


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
async def stack(request: pytest.FixtureRequest, stack_pool: StackPool) -> Stack:
    """The whole service on each database: every end-to-end test runs on SQLite and PostgreSQL."""
    return await stack_pool.get(request.param)
