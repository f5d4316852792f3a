"""Across processes: a capability label certified through the certification API makes its
partner eligible for a capability-label incentive (R-INC-1, R-CERT-1, R-CERT-2)."""

from __future__ import annotations

from tests.conftest import Stack
from tests.test_certification import PASSING, cert_body
from tests.test_incentives import new_partner


async def test_r_inc_1_r_cert_2_label_certified_over_the_api_is_eligible(stack: Stack) -> None:
    p = await new_partner(stack, "service", tier=None)
    expert = stack.auth("expert-he", ["cert_reviewer"])
    r = await stack.http.post(
        "/v1/certifications", json=cert_body(kind="capability_label", level=1), headers=p.admin
    )
    assert r.status_code == 201, r.text
    cert = r.json()
    application = {
        "source": "capability_label",
        "certification_id": cert["id"],
        "amount": "20000.00",
    }
    # not yet certified: refused
    r = await stack.http.post("/v1/incentives", json=application, headers=p.admin)
    assert r.status_code == 409, r.text
    assert r.json()["error_code"] == "PF.LABEL_NOT_CERTIFIED_THIS_YEAR"
    r = await stack.http.post(
        f"/v1/tasks/{cert['open_task_id']}/complete",
        json={"outcome": "decide", "data": {"items": PASSING}},
        headers=expert,
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "passed"
    r = await stack.http.post("/v1/incentives", json=application, headers=p.admin)
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "in_review"
