"""The OpenAPI document serves client generators: camelCase operation ids (`submitOpportunity`),
unique, a tag on every operation, every error declared with the envelope; and a client generated
by openapi-python-client from the served document drives the README's PO walkthrough."""

from __future__ import annotations

import asyncio
import importlib
import re
import sys
import uuid
from pathlib import Path
from typing import Any

from api.main import create_app
from config import Settings
from tests.conftest import Stack, eventually
from tests.helpers import ALL_PASS, po_body

OPERATION_ID = re.compile(r"^[a-z][a-zA-Z0-9]*$")
ENVELOPE = {"$ref": "#/components/schemas/ErrorEnvelope"}


def operations() -> list[tuple[str, str, dict[str, Any]]]:
    paths = create_app(Settings()).openapi()["paths"]
    return [(method, path, op) for path, ops in paths.items() for method, op in ops.items()]


def test_every_operation_has_a_camel_case_unique_id_and_a_tag() -> None:
    ops = operations()
    assert len(ops) > 50
    ids = [op["operationId"] for _, _, op in ops]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    for method, path, op in ops:
        assert OPERATION_ID.match(op["operationId"]), (method, path, op["operationId"])
        assert op.get("tags"), (method, path)
    named = {(m, p): op["operationId"] for m, p, op in ops}
    assert named["post", "/v1/opportunities"] == "submitOpportunity"
    assert named["get", "/v1/opportunities"] == "listOpportunities"
    assert named["get", "/v1/tasks"] == "listTasks"
    assert named["post", "/v1/tasks/{task_id}/claim"] == "claimTask"


def test_r_x_2_every_operation_declares_its_errors_with_the_envelope() -> None:
    schema = create_app(Settings()).openapi()
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    for method, path, op in operations():
        declared = {int(code) for code in op["responses"] if code.startswith(("4", "5"))}
        required = (
            {400, 401, 403, 404, 409, 413, 422, 429, 503} if path.startswith("/v1/") else {429}
        )
        assert required <= declared, (method, path, required - declared)
        for code, response in op["responses"].items():
            if code.startswith(("4", "5")):
                content = response["content"]["application/json"]["schema"]
                assert content == ENVELOPE, (method, path, code)


def test_model_titles_are_unique_for_generators() -> None:
    schemas = create_app(Settings()).openapi()["components"]["schemas"]
    titles = [s.get("title", key) for key, s in schemas.items()]
    assert len(titles) == len(set(titles)), sorted(t for t in titles if titles.count(t) > 1)


async def test_generated_client_drives_the_readme_po_walkthrough(
    stack: Stack, tmp_path: Path
) -> None:
    package = f"pf_client_{stack.db}_{uuid.uuid4().hex[:6]}"
    # The served document (the API runs in this event loop, so it is fetched here, then the
    # generator runs as a subprocess on the file: no network).
    served = await stack.http.get("/openapi.json")
    assert served.status_code == 200
    (tmp_path / "openapi.json").write_bytes(served.content)
    (tmp_path / "generator.yaml").write_text("post_hooks: []\n")  # no formatter runs
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "openapi-python-client"),
        "generate",
        "--path",
        str(tmp_path / "openapi.json"),
        "--meta",
        "none",
        "--output-path",
        str(tmp_path / package),
        "--config",
        str(tmp_path / "generator.yaml"),
        "--fail-on-warning",
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(proc.communicate(), timeout=300)
    assert proc.returncode == 0, output.decode()
    sys.path.insert(0, str(tmp_path))
    try:
        client_mod = importlib.import_module(f"{package}.client")
        submit_opportunity = importlib.import_module(
            f"{package}.api.opportunities.submit_opportunity"
        )
        get_opportunity = importlib.import_module(f"{package}.api.opportunities.get_opportunity")
        list_opportunities = importlib.import_module(
            f"{package}.api.opportunities.list_opportunities"
        )
        list_tasks = importlib.import_module(f"{package}.api.tasks.list_tasks")
        complete_task = importlib.import_module(f"{package}.api.tasks.complete_task")
        models = importlib.import_module(f"{package}.models")
    finally:
        sys.path.remove(str(tmp_path))

    def client(sub: str, roles: list[str], partner_id: str | None = None) -> Any:
        token = stack.token(sub, roles, partner_id)
        return client_mod.AuthenticatedClient(base_url=stack.api.url, token=token)

    partner = client("u-acme-1", ["partner_admin"], "p-acme")
    pdm = client("pdm-li", ["pdm"])
    body = po_body(customer_name=f"Hangzhou Lakeside Logistics {uuid.uuid4().hex[:6]}")
    # 1. the partner submits a PO
    answer = await submit_opportunity.asyncio_detailed(
        client=partner, body=models.OpportunityCreate.from_dict(body)
    )
    assert answer.status_code == 201, answer.content
    po = answer.parsed
    assert isinstance(po, models.OpportunityView) and po.assignee == "pdm-li"
    # 2. the PDM finds it in the inbox
    page = await list_tasks.asyncio(client=pdm, assignee="me", process_id=po.id)
    assert isinstance(page, models.TaskPage) and len(page.items) == 1
    task = page.items[0]
    assert task.kind == "po.review" and task.summary.startswith("Acme Cloud: PO Hangzhou")
    # 3. approves it with the review criteria, under an Idempotency-Key
    completion = models.Completion(
        outcome="approve", data=models.CompletionData.from_dict({"criteria": ALL_PASS})
    )
    decided = await complete_task.asyncio_detailed(
        client=pdm, task_id=task.id, body=completion, idempotency_key=f"walk-{po.id}"
    )
    assert decided.status_code == 200, decided.content
    # a refusal comes back typed, as the envelope
    again = await complete_task.asyncio(client=pdm, task_id=task.id, body=completion)
    assert isinstance(again, models.ErrorEnvelope) and again.error_code == "PF.TASK_NOT_OPEN"

    # 4. the partner reads its PO approved, singly and in its list
    async def approved() -> Any:
        view = await get_opportunity.asyncio(client=partner, po_id=po.id)
        return view if view.status == models.OpportunityStatus.APPROVED else None

    await eventually(approved, what="the PO approved")
    listed = await list_opportunities.asyncio(
        client=partner, q=body["customer_name"], status=models.OpportunityStatus.APPROVED
    )
    assert [item.id for item in listed.items] == [po.id]
