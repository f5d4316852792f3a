"""The access log names the workflow a request is about only when a path parameter really is a
workflow id (issue 12, finding 6: `PUT /v1/admin/partners/p-acme` was logged with
`"workflow_id": "p-acme"`). Generated over the app's route table: every path parameter of every
route must be classified in `api.middleware`, so a new route cannot log a wrong kind of id."""

from __future__ import annotations

import re

from api.main import create_app
from api.middleware import OTHER_ID_PARAMS, TASK_ID_PARAM, WORKFLOW_ID_PARAMS, _subject
from config import Settings
from tests.conftest import Stack
from tests.test_observability import JsonLines, access_log  # noqa: F401  (fixture)


def path_params() -> dict[str, set[str]]:
    spec = create_app(Settings()).openapi()
    found: dict[str, set[str]] = {}
    for template in spec["paths"]:
        for name in re.findall(r"{(\w+)}", template):
            found.setdefault(name, set()).add(template)
    return found


def test_every_path_parameter_is_classified_for_the_access_log() -> None:
    params = path_params()
    assert "partner_id" in params and "po_id" in params and "task_id" in params
    known = WORKFLOW_ID_PARAMS | OTHER_ID_PARAMS | {TASK_ID_PARAM}
    unknown = {name: sorted(t) for name, t in params.items() if name not in known}
    assert not unknown, f"classify these path parameters in api/middleware.py: {unknown}"
    for name in params:
        subject = _subject({name: "x-1.2"})
        if name in OTHER_ID_PARAMS:
            assert subject == {}, name
        elif name == TASK_ID_PARAM:
            assert subject == {"task_id": "x-1.2", "workflow_id": "x-1"}
        else:
            assert subject == {"workflow_id": "x-1.2"}, name


async def test_admin_partner_route_logs_no_workflow_id(
    stack: Stack,
    access_log: JsonLines,  # noqa: F811
) -> None:
    admin = stack.auth("ops-1", ["ops_admin"])
    r = await stack.http.put(
        "/v1/admin/partners/p-acme",
        json={
            "name": "Acme Cloud",
            "kind": "solution_provider",
            "tier": "core",
            "region": "east-china",
            "business_info_certified": True,
        },
        headers={**admin, "X-Request-ID": "admin-put-acme"},
    )
    assert r.status_code == 200, r.text
    (line,) = [e for e in access_log.lines if e.get("request_id") == "admin-put-acme"]
    assert line["path"] == "/v1/admin/partners/p-acme"
    assert "workflow_id" not in line and "task_id" not in line
