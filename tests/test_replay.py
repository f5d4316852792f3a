"""Determinism: committed histories replay against the current workflow code.

A change to a workflow with running executions must keep these green (use `workflow.patched`).
To record a new history, run this file with PARTNERFLOW_RECORD_HISTORIES=1 and commit the file
it writes under tests/histories/. Files are named `<label>__<workflow id>.json`: replay needs the
original workflow id (task ids are derived from it).
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from tests.changed_workflow import ChangedWithoutPatch
from tests.conftest import Stack
from tests.helpers import ALL_PASS, Actors, complete, submit
from worker import workflow_runner
from workflows import ALL_WORKFLOWS
from workflows.human_task import LOCAL_STORE_PATCH

HISTORIES = Path(__file__).parent / "histories"


def replayer(workflows: list[type] | None = None) -> Replayer:
    return Replayer(
        workflows=workflows or ALL_WORKFLOWS,
        data_converter=pydantic_data_converter,
        workflow_runner=workflow_runner(),
    )


def committed() -> list[Path]:
    return sorted(HISTORIES.glob("*__*.json"))


def load(path: Path) -> WorkflowHistory:
    workflow_id = path.stem.split("__", 1)[1]
    return WorkflowHistory.from_json(workflow_id, path.read_text())


def test_histories_are_committed() -> None:
    labels = {p.stem.split("__")[0] for p in committed()}
    assert "opportunity_review_full" in labels, labels
    # recorded after R-X-6's exact ids: activity inputs carry `origin_run_id`, update ids name
    # the caller (a copy of test_full_po_history_replays' recording under its own label)
    assert "opportunity_review_exact_ids" in labels, labels
    # recorded by tests/test_invitations.py and tests/test_resellers.py (`check_replay`)
    assert {
        "invitation_accepted",
        "invitation_expired",
        "customer_invitation_registered",
        "dissociation_accepted",
        "reseller_application_approved",
    } <= labels, labels
    # the same PO journey recorded after issue 11: its store work runs as local activities
    assert "opportunity_review_local" in labels, labels
    # recorded by tests/test_incentives.py (test_r_inc_full_history_replays)
    assert "incentive_application_full" in labels, labels
    # recorded by tests/test_certification.py (test_full_certification_history_replays): the
    # run that continues-as-new at a recertification, and the run it hands over to
    assert {"certification_cycle", "certification_next"} <= labels, labels
    # rules round 2 (issue 14), each recorded by the test named after its rules:
    # tests/test_incentives.py test_r_inc_8_r_inc_9_r_x_5_history_replays,
    # tests/test_po_round2.py test_r_po_3_r_po_4_r_po_7_r_po_9_r_po_10_history_replays,
    # tests/test_invitations.py test_r_inv_6_unanswered_dissociation_lapses_and_both_are_told
    assert {
        "incentive_invoice_clock_four_eyes",
        "opportunity_rules_round2",
        "dissociation_lapsed",
        # tests/test_certification.py TestClarification (R-CERT-3)
        "certification_clarification",
        # tests/test_claims.py test_r_po_4_open_claim_follows_history_replays (R-PO-4 with
        # R-PO-7 / R-PO-9: the open-PO claim moves, patch po-open-claim-follows)
        "opportunity_open_claim_follows",
    } <= labels, labels


@pytest.mark.parametrize("path", committed(), ids=lambda p: p.stem.split("__")[0])
async def test_committed_history_replays_on_current_code(path: Path) -> None:
    await replayer().replay_workflow(load(path))


STORE_ACTIVITIES = {"apply_transition", "assess_opportunity", "find_approved_duplicate"}


def _history_events(path: Path) -> list[dict[str, object]]:
    events: list[dict[str, object]] = json.loads(path.read_text())["events"]
    return events


def test_local_store_history_runs_store_work_locally() -> None:
    """The PO history recorded after issue 11 has the `store-local-activities` patch marker and
    its routing look-up, duplicate checks and transition commits as local-activity markers,
    with no regular activity scheduled for them; the history recorded before has them as
    regular activities. Both replay (test_committed_history_replays_on_current_code)."""
    [new] = [p for p in committed() if p.stem.startswith("opportunity_review_local__")]
    [old] = [p for p in committed() if p.stem.startswith("opportunity_review_full__")]

    def scheduled(events: list[dict[str, object]]) -> set[str]:
        return {
            str(e["activityTaskScheduledEventAttributes"]["activityType"]["name"])  # type: ignore[index]
            for e in events
            if e["eventType"] == "EVENT_TYPE_ACTIVITY_TASK_SCHEDULED"
        }

    def markers(events: list[dict[str, object]]) -> list[str]:
        return [
            str(e["markerRecordedEventAttributes"]["markerName"])  # type: ignore[index]
            for e in events
            if e["eventType"] == "EVENT_TYPE_MARKER_RECORDED"
        ]

    new_events, old_events = _history_events(new), _history_events(old)
    assert not scheduled(new_events) & STORE_ACTIVITIES
    patches = [
        json.loads(base64.b64decode(payload["data"]))["id"]
        for e in new_events
        if e["eventType"] == "EVENT_TYPE_MARKER_RECORDED"
        and e["markerRecordedEventAttributes"]["markerName"] == "core_patch"  # type: ignore[index]
        for payload in e["markerRecordedEventAttributes"]["details"]["patch-data"]["payloads"]  # type: ignore[index]
    ]
    assert patches == [LOCAL_STORE_PATCH]
    # submit (route + commit), dispatch, return, resubmit (look-up + commit), approve
    # (duplicate check + commit), won, delivered: at least ten local store calls
    assert markers(new_events).count("core_local_activity") >= 10
    assert STORE_ACTIVITIES <= scheduled(old_events)
    assert "core_local_activity" not in markers(old_events)


async def test_replay_catches_an_unpatched_change() -> None:
    path = next(p for p in committed() if p.stem.startswith("opportunity_review_full__"))
    history = load(path)
    result = await replayer([ChangedWithoutPatch]).replay_workflow(
        history, raise_on_replay_failure=False
    )
    assert result.replay_failure is not None
    assert "nondetermin" in str(result.replay_failure).lower()


async def test_full_po_history_replays(stack: Stack) -> None:
    """A PO through every step (dispatch, return, resubmit, approve, won, delivered), replayed."""
    if stack.db != "sqlite":
        pytest.skip("one recording is enough; the workflow code does not depend on the store")
    a = Actors(stack)
    po = await submit(stack.http, a.cobalt, region="nowhere")
    await complete(
        stack.http, a.dispatcher, po["open_task_id"], "dispatch", data={"pdm": "pdm-wang"}
    )
    view = (await stack.http.get(f"/v1/opportunities/{po['id']}", headers=a.cobalt)).json()
    await complete(
        stack.http,
        a.pdm_wang,
        view["open_task_id"],
        "return",
        comment="more info",
        data={"criteria": ALL_PASS},  # R-PO-10: on every outcome
    )
    body = {
        k: view[k]
        for k in (
            "customer_name",
            "project_name",
            "offerings",
            "amount",
            "region",
            "industry",
            "expected_close_date",
        )
    }
    r = await stack.http.post(f"/v1/opportunities/{po['id']}/resubmit", json=body, headers=a.cobalt)
    await complete(
        stack.http, a.pdm_wang, r.json()["open_task_id"], "approve", data={"criteria": ALL_PASS}
    )
    for stage in ("won", "delivered"):
        r = await stack.http.patch(
            f"/v1/opportunities/{po['id']}", json={"stage": stage}, headers=a.cobalt
        )
        assert r.status_code == 200, r.text
    handle = stack.client.get_workflow_handle(po["id"])
    assert (await handle.result())["status"] == "delivered"
    history = await handle.fetch_history()
    await replayer().replay_workflow(history)
    await replayer().replay_workflow(WorkflowHistory.from_json(po["id"], history.to_json()))
    if os.environ.get("PARTNERFLOW_RECORD_HISTORIES") == "1":
        HISTORIES.mkdir(exist_ok=True)
        # "opportunity_review_full" is the recording from before local activities: kept as it is
        for old in HISTORIES.glob("opportunity_review_local__*.json"):
            old.unlink()
        (HISTORIES / f"opportunity_review_local__{po['id']}.json").write_text(history.to_json())
