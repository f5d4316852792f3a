"""Schemathesis against the app's own OpenAPI, served as `make run` serves it (uvicorn and a
worker process): no 5xx, every error in the envelope, every documented response matching its
schema (issue 8). Deep JSON and very long strings are refused with 422, never a 500."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error, response_schema_conformance

from api.auth import mint_token
from store.migrate import upgrade
from tests.conftest import ARTIFACTS, TemporalServer, free_port, stop_process

ROOT = Path(__file__).resolve().parent.parent
SECRET = "fuzzing-secret-that-is-long-enough-for-hs256!"
EXAMPLES_PER_OPERATION = 12


def token(sub: str, roles: list[str], partner_id: str | None = None) -> str:
    return mint_token(SECRET, sub=sub, roles=roles, partner_id=partner_id)


# the identity a portal or reviewer would use on each family of routes
PARTNER = {"Authorization": f"Bearer {token('u-fuzz', ['partner_admin'], 'p-fuzz')}"}
STAFF = {
    "Authorization": "Bearer "
    + token(
        "staff-fuzz",
        [
            "pdm",
            "dispatcher",
            "cert_reviewer",
            "cert_ops",
            "incentive_reviewer",
            "finance",
            "finance_lead",
        ],
    )
}
ADMIN = {"Authorization": f"Bearer {token('ops-fuzz', ['ops_admin'])}"}
ACCOUNT = {"Authorization": f"Bearer {token('acct-fuzz', ['account'])}"}


def identity_for(path: str) -> dict[str, str]:
    if path.startswith("/v1/admin"):
        return ADMIN
    if path.startswith("/v1/tasks"):
        return STAFF
    if "/accept" in path or "/register" in path or "/answer" in path:
        return ACCOUNT
    return PARTNER


@pytest.fixture(scope="module")
def served_api(
    temporal_server: TemporalServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    data = tmp_path_factory.mktemp("fuzz")
    url = f"sqlite:///{data / 'pf.db'}"
    upgrade(url)
    port = free_port()
    env = {
        **os.environ,
        "PARTNERFLOW_DATABASE_URL": url,
        "PARTNERFLOW_TEMPORAL_ADDRESS": temporal_server.address,
        "PARTNERFLOW_TASK_QUEUE": f"pf-fuzz-{uuid.uuid4().hex[:8]}",
        "PARTNERFLOW_JWT_SECRET": SECRET,
        "PARTNERFLOW_WORKER_METRICS_PORT": "0",
        "PARTNERFLOW_RATE_LIMIT__REQUESTS_PER_SECOND": "100000",
        "PARTNERFLOW_RATE_LIMIT__BURST": "100000",
    }
    ARTIFACTS.mkdir(exist_ok=True)
    logs = [open(ARTIFACTS / f"fuzz-{name}.log", "wb") for name in ("worker", "api")]
    worker = subprocess.Popen(
        [sys.executable, "worker.py"], cwd=ROOT, env=env, stdout=logs[0], stderr=subprocess.STDOUT
    )
    api = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "api.main:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
        stdout=logs[1],
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:  # bounded wait for readiness, not for state
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the API did not become ready in 60 s"
            assert api.poll() is None and worker.poll() is None, "a process died; see logs"
            time.sleep(0.2)
        for pid, kind in (("p-fuzz", "solution_provider"), ("p-fuzz-svc", "service")):
            r = httpx.put(
                f"{base}/v1/admin/partners/{pid}",
                headers=ADMIN,
                json={"name": pid, "kind": kind, "region": "east-china"},
            )
            assert r.status_code == 200, r.text
        yield base
    finally:
        stop_process(api)
        stop_process(worker)
        for log in logs:
            log.close()


def assert_envelope_or_ok(response: Any) -> None:
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error_code", "error_msg", "details"}, body
        assert body["error_code"].startswith("PF."), body


def test_schemathesis_no_5xx_every_error_in_the_envelope(served_api: str) -> None:
    schema = schemathesis.openapi.from_url(f"{served_api}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 20  # every process's routes are in the spec
    failures: list[str] = []
    seen: dict[int, int] = {}
    for operation in operations:
        if operation.path == "/metrics":
            continue

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def exercise(case: schemathesis.Case[Any]) -> None:
            response = case.call(
                base_url=served_api, headers=identity_for(case.operation.path), timeout=30
            )
            case.validate_response(
                response, checks=[not_a_server_error, response_schema_conformance]
            )
            assert_envelope_or_ok(response)
            seen[response.status_code] = seen.get(response.status_code, 0) + 1

        try:
            exercise()
        except Exception as exc:
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}"[:2000])
    assert not failures, "\n\n".join(failures)
    # the fuzzing reached past validation and auth: some requests succeeded, some were refused
    assert any(code < 300 for code in seen) and any(400 <= code < 500 for code in seen), seen
    print("responses by status:", dict(sorted(seen.items())))


@given(depth=st.integers(min_value=200, max_value=2000))
@settings(max_examples=5, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_deep_json_is_refused_not_crashed(served_api: str, depth: int) -> None:
    body = "[" * depth + "]" * depth
    r = httpx.post(
        f"{served_api}/v1/opportunities",
        content=body.encode(),
        headers={**PARTNER, "Content-Type": "application/json"},
        timeout=30,
    )
    assert r.status_code in (400, 422), r.text
    assert_envelope_or_ok(r)


@pytest.mark.parametrize("field", ["customer_name", "project_name", "region"])
def test_very_long_strings_are_422(served_api: str, field: str) -> None:
    body = {
        "customer_name": "c",
        "project_name": "p",
        "amount": "1.00",
        "expected_close_date": "2027-01-01",
        field: "x" * 100_000,
    }
    r = httpx.post(f"{served_api}/v1/opportunities", json=body, headers=PARTNER, timeout=30)
    assert r.status_code == 422, r.text
    assert any(field in e["loc"] for e in r.json()["details"])
    assert json.dumps(r.json())  # the envelope is JSON all the way down
