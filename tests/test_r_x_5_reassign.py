"""R-X-5 for every process: a task is never reassigned to the person who submitted its item.

Enumerates the workflow registry (`workflows.ALL_WORKFLOWS`), not a hand-picked list: every
process workflow is a `ProcessWorkflow`, and its `check_reassign_target` (what the
`reassign_task` validator and the main loop run) refuses the submitter with
PF.ASSIGNEE_NOT_ELIGIBLE, including processes that add refusals of their own (the incentive's
approver, qualifier and partner users, tests/test_incentives.py TestFourEyes).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from temporalio.exceptions import ApplicationError

from domain.principal import Principal, Role
from domain.tasks import HumanTask, ReassignTask
from workflows import ALL_WORKFLOWS
from workflows.human_task import ProcessWorkflow


def held_task(kind: str) -> HumanTask:
    """An open task of `kind` held by reviewer-1, on an item u-acme-1 of p-acme submitted."""
    return HumanTask(
        id="x.1",
        kind=kind,
        process="x",
        process_id="x",
        partner_id="p-acme",
        assignee="reviewer-1",
        created_at=datetime.now(UTC),
        submitted_by="u-acme-1",
    )


@pytest.mark.parametrize("workflow_class", ALL_WORKFLOWS, ids=lambda c: c.__name__)
def test_r_x_5_reassigning_to_the_submitter_is_refused_in_every_process(
    workflow_class: type,
) -> None:
    assert issubclass(workflow_class, ProcessWorkflow)
    # The check is pure: it needs the task, not a running workflow.
    process = object.__new__(workflow_class)
    task = held_task("any")
    lead = Principal(sub="lead-1", roles=[Role.ops_admin])
    with pytest.raises(ApplicationError) as refused:
        process.check_reassign_target(
            task, ReassignTask(actor=lead, task_id=task.id, assignee="u-acme-1")
        )
    assert refused.value.type == "PF.ASSIGNEE_NOT_ELIGIBLE"


def test_reassigning_a_task_to_its_holder_is_refused_in_every_process_and_kind() -> None:
    """The attack's finding: a review reassigned to the PDM who held it answered 200 and wrote
    `task_reassigned {"from": "pdm-li", "to": "pdm-li"}`. For every task kind of every process
    in the registry, the `reassign_task` validator refuses it with PF.TASK_ALREADY_ASSIGNED."""
    checked = []
    for workflow_class in ALL_WORKFLOWS:
        assert issubclass(workflow_class, ProcessWorkflow)
        process = object.__new__(workflow_class)
        for kind_name, kind in workflow_class.task_kinds.items():
            task = held_task(kind_name)
            process.tasks = {task.id: task}
            lead = Principal(sub="lead-1", roles=sorted(kind.reassign_roles))
            cmd = ReassignTask(actor=lead, task_id=task.id, assignee="reviewer-1")
            with pytest.raises(ApplicationError) as refused:
                process.check_reassign(cmd)
            assert refused.value.type == "PF.TASK_ALREADY_ASSIGNED", (kind_name, refused.value)
            checked.append(kind_name)
    # among them the task kinds of DESIGN §3
    assert {"po.dispatch", "po.review", "cert.review", "inc.payout", "res.review"} <= set(checked)
