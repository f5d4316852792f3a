"""Event types (DESIGN §3 `event`) and the patterns a webhook subscription lists.

A type is `<process>.<status>` (`opportunity.approved`), `<process>.updated` (the public view
changed, the status did not), or `task.opened` / `task.completed` / `task.cancelled` /
`task.escalated` / `task.reassigned`.
A subscription's `event_types` holds exact types and wildcards: `*` (everything),
`<process>.*` (`incentive.*`, `task.*`). Nothing else: a pattern that can match no event is
refused rather than silently delivering nothing.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from domain.certification import CertificationStatus
from domain.incentives import IncentiveStatus
from domain.invitations import CustomerInvitationStatus, DissociationStatus, InvitationStatus
from domain.opportunity import OpportunityStatus
from domain.resellers import ApplicationStatus
from domain.tasks import TaskStatus

# Each process (a workflow's `process`) and the statuses its view reports.
# tests/test_events.py checks this covers the workflow registry.
PROCESS_STATUSES: dict[str, type[StrEnum]] = {
    "opportunity": OpportunityStatus,
    "certification": CertificationStatus,
    "incentive": IncentiveStatus,
    "invitation": InvitationStatus,
    "customer_invitation": CustomerInvitationStatus,
    "dissociation": DissociationStatus,
    "reseller_application": ApplicationStatus,
}
UPDATED = "updated"
TASK_TYPES = frozenset(
    {"task.opened", "task.escalated", "task.reassigned"}
    | {f"task.{s}" for s in TaskStatus if s is not TaskStatus.open}
)


def all_event_types() -> frozenset[str]:
    """Every type an event can have."""
    types = set(TASK_TYPES)
    for process, statuses in PROCESS_STATUSES.items():
        types |= {f"{process}.{s}" for s in statuses} | {f"{process}.{UPDATED}"}
    return frozenset(types)


def unknown_patterns(patterns: list[str]) -> list[str]:
    """The patterns that name no event type (for PF.VALIDATION_FAILED's details)."""
    known = all_event_types()
    prefixes = {t.split(".", 1)[0] for t in known}
    bad = []
    for pattern in patterns:
        if pattern == "*" or pattern in known:
            continue
        head, _, tail = pattern.partition(".")
        if tail == "*" and head in prefixes:
            continue
        bad.append(pattern)
    return bad


def matches(patterns: list[str], event_type: str) -> bool:
    """Whether a subscription's `event_types` select `event_type`."""
    head = event_type.split(".", 1)[0]
    return any(p in ("*", event_type, f"{head}.*") for p in patterns)


# --- what an event's `data` may carry ----------------------------------------------------------

# A key named like a credential never leaves in an event (nor a list or read): whoever holds a
# registration link's token registers through it.
_SECRET_KEY = ("token", "secret", "password", "credential")


def is_secret_key(key: str) -> bool:
    low = key.lower()
    return any(part in low for part in _SECRET_KEY)


def without_secret_keys(view: dict[str, Any]) -> dict[str, Any]:
    """`view` without its top-level credential-named keys (`is_secret_key`)."""
    return {k: v for k, v in view.items() if not is_secret_key(k)}


# The task's public shape (api.routes.tasks.TaskPublic without the list's `summary`): what a
# `task.*` event carries. Never the raw body (reminder and SLA moments, escalation role, data).
TASK_EVENT_FIELDS: tuple[str, ...] = (
    "id",
    "kind",
    "process",
    "process_id",
    "partner_id",
    "assignee",
    "candidate_role",
    "status",
    "created_at",
    "due_at",
    "escalated",
    "claimed_by",
    "outcome",
    "comment",
    "completed_by",
)


def public_task_data(task: dict[str, Any]) -> dict[str, Any]:
    """A task (HumanTask as JSON, or a stored event's data) in its public shape."""
    return {k: task.get(k) for k in TASK_EVENT_FIELDS}
