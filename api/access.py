"""R-X-8 tenant isolation: the one place that decides what a principal may see and do.

Every route that reads, lists, or acts on a process or a task asks this module, never a role
check of its own. The rule (DESIGN R-X-8, §3):

- A caller whose token carries `partner_id` is *partner-scoped*: it sees and acts on its own
  partner's items only, whatever roles its token names (acting still needs the right role:
  owner actions a partner user's, decisions the task's — and R-X-5 refuses deciding on one's own
  partner's item). A distributor's users (any role) also see the
  resellers' applications addressed to their partner (`view.distributor_id`) and the
  `res.review` tasks offered to it (`assignee_partner_id`) — nothing else. Staff roles on a
  partner-scoped token count for nothing (a token `{"roles": ["ops_admin"], "partner_id": …}`
  is not an operator).
- Staff tokens carry no `partner_id`. A staff caller sees a process if one of its roles reads
  that kind of process (`PROCESS_READERS`), and the tasks assigned to it, offered to one of its
  roles, or escalated to one of its roles; `ops_admin` sees every task.
- A personal account (`account`) sees the invitations and dissociation requests addressed to it
  (`view.account_id == sub`).

Refusals are 403 `PF.FORBIDDEN` (the item exists but is not the caller's to see or touch);
404s for missing items come from the loaders before this module is asked.

The same decisions come in two shapes that must agree: predicates on a loaded row
(`may_see_process`, `may_see_task`) for single reads and actions, and SQL clauses
(`process_filter`, `task_filter`) for lists and the inbox.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlmodel import col

from api.errors import ApiError
from domain.principal import PARTNER_ROLES, Principal, Role
from store.models import ProcessRow, TaskRow

# A partner-scoped caller's roles that make it one of its partner's users (sees its items).
PARTNER_USER_ROLES = frozenset(PARTNER_ROLES | {Role.distributor})

# Staff roles that read each kind of process (single read, history, list).
PROCESS_READERS: dict[str, frozenset[Role]] = {
    "opportunity": frozenset(
        {Role.pdm, Role.dispatcher, Role.incentive_reviewer, Role.finance_lead, Role.ops_admin}
    ),
    "certification": frozenset(
        {Role.cert_reviewer, Role.cert_ops, Role.pdm, Role.incentive_reviewer, Role.ops_admin}
    ),
    "incentive": frozenset(
        {Role.incentive_reviewer, Role.finance, Role.finance_lead, Role.ops_admin}
    ),
    "invitation": frozenset({Role.ops_admin}),
    "customer_invitation": frozenset({Role.ops_admin}),
    "dissociation": frozenset({Role.ops_admin}),
    "reseller_application": frozenset({Role.ops_admin}),
}

# Processes addressed to a personal account through `view.account_id`.
ACCOUNT_PROCESSES = frozenset({"invitation", "dissociation"})

# Processes a distributor's users see when addressed to their partner through the view's key.
ADDRESSED_PROCESSES: dict[str, str] = {"reseller_application": "distributor_id"}


def is_partner_scoped(principal: Principal) -> bool:
    """R-X-8: a token with `partner_id` is bound to that partner, whatever its roles."""
    return principal.partner_id is not None


def effective_roles(principal: Principal) -> frozenset[Role]:
    """The roles that count: a partner-scoped token's staff roles count for nothing; a staff
    token's partner roles neither (a partner role needs a partner)."""
    roles = frozenset(principal.roles)
    if is_partner_scoped(principal):
        return roles & (PARTNER_USER_ROLES | {Role.account})
    return roles - PARTNER_USER_ROLES


def sees_own_partner(principal: Principal) -> bool:
    """A partner-scoped token sees its own partner's items whatever its roles (R-X-8), except a
    personal account's (`account` only), which sees what is addressed to it."""
    return is_partner_scoped(principal) and bool(set(principal.roles) - {Role.account})


def sees_addressed(principal: Principal) -> bool:
    """R-X-8: whether the caller sees the processes addressed to its partner
    (`ADDRESSED_PROCESSES`, e.g. a reseller's application to its distributor): every user of
    that partner does, as it sees its own partner's items, whatever its roles; deciding on them
    still takes the task's role (`distributor` for `res.review`)."""
    return sees_own_partner(principal)


def has_role(principal: Principal, *roles: Role) -> bool:
    """Whether one of `roles` counts for this caller (see `effective_roles`)."""
    return bool(effective_roles(principal) & set(roles))


def require_role(principal: Principal, *roles: Role) -> None:
    """403 `PF.FORBIDDEN` unless one of `roles` counts for the caller. Staff roles count only on
    staff tokens (no `partner_id`), so `require_role(p, Role.ops_admin)` refuses a partner's
    token that names `ops_admin` (R-X-8)."""
    if not has_role(principal, *roles):
        raise ApiError("PF.FORBIDDEN", f"this needs one of the roles: {', '.join(sorted(roles))}")


# --- processes ----------------------------------------------------------------------------------


def may_see_process(
    principal: Principal, *, process: str, partner_id: str | None, view: dict[str, Any]
) -> bool:
    """R-X-8: whether the caller may read a process of kind `process` owned by `partner_id`
    whose public view is `view` (single read, history, comments, and every list)."""
    roles = effective_roles(principal)
    if (
        Role.account in roles
        and process in ACCOUNT_PROCESSES
        and view.get("account_id") == principal.sub
    ):
        return True
    if is_partner_scoped(principal):
        if partner_id == principal.partner_id and sees_own_partner(principal):
            return True
        key = ADDRESSED_PROCESSES.get(process)
        return (
            key is not None and sees_addressed(principal) and view.get(key) == principal.partner_id
        )
    return bool(roles & PROCESS_READERS.get(process, frozenset()))


def may_act_as_owner(principal: Principal, *, partner_id: str | None) -> bool:
    """Whether the caller may act on an item as its owner (cancel, resubmit, defense, payment
    request, invoice, revoke, …): a user (partner_admin, partner_member) of the owning partner."""
    return (
        is_partner_scoped(principal)
        and partner_id == principal.partner_id
        and bool(effective_roles(principal) & PARTNER_ROLES)
    )


def check_may_see(principal: Principal, row: ProcessRow, noun: str) -> ProcessRow:
    """`row` if the caller may see it, else 403 `PF.FORBIDDEN` (R-X-8)."""
    if not may_see_process(
        principal, process=row.process, partner_id=row.partner_id, view=row.view
    ):
        raise ApiError("PF.FORBIDDEN", f"this {noun} is not yours to see")
    return row


def check_owner_action(principal: Principal, row: ProcessRow, noun: str) -> ProcessRow:
    """`row` if the caller may act on it as its owner, else 403 `PF.FORBIDDEN` (R-X-8)."""
    check_may_see(principal, row, noun)
    if not may_act_as_owner(principal, partner_id=row.partner_id):
        raise ApiError(
            "PF.FORBIDDEN",
            f"only the users (partner_admin, partner_member) of this {noun}'s partner may do this",
        )
    return row


def process_filter(principal: Principal, process: str | None = None) -> Any:
    """The SQL form of `may_see_process` over `ProcessRow`, for lists: a WHERE clause that keeps
    exactly the rows the caller may see (of kind `process`, or of every kind)."""
    kinds = [process] if process is not None else sorted(PROCESS_READERS)
    roles = effective_roles(principal)
    clauses: list[Any] = []
    if Role.account in roles:
        for kind in sorted(ACCOUNT_PROCESSES & set(kinds)):
            clauses.append(
                sa.and_(
                    col(ProcessRow.process) == kind,
                    col(ProcessRow.view)["account_id"].as_string() == principal.sub,
                )
            )
    if is_partner_scoped(principal):
        if sees_own_partner(principal):
            clauses.append(
                sa.and_(
                    col(ProcessRow.partner_id) == principal.partner_id,
                    col(ProcessRow.process).in_(kinds),
                )
            )
        if sees_addressed(principal):
            for kind, key in ADDRESSED_PROCESSES.items():
                if kind in kinds:
                    clauses.append(
                        sa.and_(
                            col(ProcessRow.process) == kind,
                            col(ProcessRow.view)[key].as_string() == principal.partner_id,
                        )
                    )
    else:
        readable = [k for k in kinds if roles & PROCESS_READERS.get(k, frozenset())]
        if readable:
            clauses.append(col(ProcessRow.process).in_(readable))
    return sa.or_(*clauses) if clauses else sa.false()


# --- tasks --------------------------------------------------------------------------------------


def may_see_task(principal: Principal, task: TaskRow) -> bool:
    """R-X-8 for one task row: partner-scoped callers see their partner's tasks, and the tasks
    offered to their partner (`assignee_partner_id`) for one of their roles or assigned to them;
    staff see tasks assigned to them, offered to one of their roles (not within a partner), or
    escalated to one of their roles; `ops_admin` (staff) sees all."""
    roles = {str(r) for r in effective_roles(principal)}
    if is_partner_scoped(principal):
        if task.partner_id == principal.partner_id and sees_own_partner(principal):
            return True
        return task.assignee_partner_id == principal.partner_id and (
            task.assignee == principal.sub
            or (task.assignee is None and task.candidate_role in roles)
        )
    if Role.ops_admin in roles:
        return True
    return (
        task.assignee == principal.sub
        or (
            task.assignee is None
            and task.candidate_role in roles
            and task.assignee_partner_id is None
        )
        or (task.escalate_to_role is not None and task.escalate_to_role in roles)
    )


def task_filter(principal: Principal) -> Any:
    """The SQL form of `may_see_task` over `TaskRow` (the inbox)."""
    roles = sorted(str(r) for r in effective_roles(principal))
    if is_partner_scoped(principal):
        clauses: list[Any] = [
            sa.and_(
                col(TaskRow.assignee_partner_id) == principal.partner_id,
                sa.or_(
                    col(TaskRow.assignee) == principal.sub,
                    sa.and_(
                        col(TaskRow.assignee).is_(None), col(TaskRow.candidate_role).in_(roles)
                    ),
                ),
            )
        ]
        if sees_own_partner(principal):
            clauses.append(col(TaskRow.partner_id) == principal.partner_id)
        return sa.or_(*clauses)
    if str(Role.ops_admin) in roles:
        return sa.true()
    return sa.or_(
        col(TaskRow.assignee) == principal.sub,
        sa.and_(
            col(TaskRow.assignee).is_(None),
            col(TaskRow.candidate_role).in_(roles),
            col(TaskRow.assignee_partner_id).is_(None),
        ),
        col(TaskRow.escalate_to_role).in_(roles),
    )


def offered_filter(principal: Principal) -> Any:
    """Unassigned tasks offered to one of the caller's roles (within its partner for a
    partner-scoped caller): the inbox's `assignee=me` adds these to the caller's own."""
    roles = sorted(str(r) for r in effective_roles(principal))
    own_partner: Any = (
        col(TaskRow.assignee_partner_id) == principal.partner_id
        if is_partner_scoped(principal)
        else col(TaskRow.assignee_partner_id).is_(None)
    )
    return sa.and_(
        col(TaskRow.assignee).is_(None), col(TaskRow.candidate_role).in_(roles), own_partner
    )


def check_may_see_task(principal: Principal, task: TaskRow) -> TaskRow:
    """`task` if the caller may see it, else 403 `PF.FORBIDDEN` (R-X-8)."""
    if not may_see_task(principal, task):
        raise ApiError("PF.FORBIDDEN", f"task {task.id} is not yours to see")
    return task


def check_may_reassign(principal: Principal, task: TaskRow) -> TaskRow:
    """Only staff move tasks (the task kind's `reassign_roles` are checked by the workflow);
    a partner-scoped token never does, whatever roles it names (R-X-8). 403 `PF.FORBIDDEN`."""
    if is_partner_scoped(principal):
        raise ApiError("PF.FORBIDDEN", f"task {task.id} is not yours to reassign")
    return task
