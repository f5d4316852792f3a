"""The read model's one writer, and the look-ups activities make against it and reference data."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from prometheus_client import Counter
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from domain.opportunity import (
    FINAL_STATUSES,
    DuplicateQuery,
    OpportunityStatus,
    RouteRequest,
    RouteResult,
)
from domain.projection import Transition
from domain.summaries import process_addressee, process_summary, search_text
from store.claims import release_closed
from store.events import append_events
from store.models import (
    AuditEvent,
    Offering,
    OutboxMessage,
    Partner,
    ProcessRow,
    RoutingRule,
    TaskRow,
)


def _insert(session: AsyncSession, model: Any) -> Any:
    """The dialect's INSERT (for ON CONFLICT) on the model's Core table: the writer passes
    column values itself, so the ORM's per-value coercion (a third of a transition's Python
    time in the issue 11 profile) buys nothing."""
    table = model.__table__
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


READ_MODEL_CONFLICTS = Counter(
    "partnerflow_read_model_conflicts",
    "Read-model writes refused because the row belongs to another workflow run (R-X-6)",
    ["process"],
)


class ReadModelConflict(Exception):
    """A transition from a run that does not own the process row (another run reused the id).

    Raised, never swallowed: the activity fails with the non-retryable ApplicationError
    PF.READ_MODEL_CONFLICT and `partnerflow_read_model_conflicts` counts it."""

    def __init__(self, process_id: str, process: str, owner: str, writer: str) -> None:
        super().__init__(
            f"{process} {process_id} belongs to run {owner}; a write from run {writer} is refused"
        )
        self.process_id = process_id
        self.process = process
        self.owner = owner
        self.writer = writer


def notification_key(process_id: str, version: int, position: int) -> str:
    return f"{process_id}:{version}:{position}"


async def apply_transition(session: AsyncSession, t: Transition) -> None:
    """Write one transition: its events, process row, tasks, audit rows, outbox rows. Idempotent.
    A transition that closes its process also gives back the claims its new status releases
    (`store.claims.release_closed`), in the same transaction.

    Rows move only forward (`version`), audit rows and outbox rows are keyed by the transition's
    version, so a retried or replayed activity leaves the store as one run would. A row belongs
    to the run that first wrote it (`origin_run_id`, kept across continue-as-new): a transition
    of another run raises `ReadModelConflict` (counted) and writes nothing; the caller's
    transaction is rolled back.
    """
    rec = t.record
    # first: the events compare this transition with the rows it is about to replace (and, on
    # SQLite, this takes the write lock before any read: see store.events)
    await append_events(session, t)
    partner_name = None
    if rec.partner_id is not None:
        partner_name = (
            await session.exec(select(Partner.name).where(Partner.id == rec.partner_id))
        ).first()
    summary = process_summary(rec.process, rec.view, partner_name)
    row = {
        "id": rec.id,
        "process": rec.process,
        "partner_id": rec.partner_id,
        "status": rec.status,
        "submitted_by": rec.submitted_by,
        "match_key": rec.match_key,
        "version": rec.version,
        "created_at": rec.created_at,
        "updated_at": rec.updated_at,
        "view": rec.view,
        "summary": summary,
        "addressee": process_addressee(rec.process, rec.view),
        "search_text": search_text(rec.process, rec.view, summary),
        "origin_run_id": t.origin_run_id,
    }
    stmt = _insert(session, ProcessRow).values(**row)
    owned = sa.or_(
        col(ProcessRow.origin_run_id).is_(None),
        stmt.excluded.origin_run_id.is_(None),
        col(ProcessRow.origin_run_id) == stmt.excluded.origin_run_id,
    )
    set_ = {k: stmt.excluded[k] for k in row if k not in ("id", "created_at", "origin_run_id")}
    # a row written before runs were recorded is adopted by the run that writes it next
    set_["origin_run_id"] = sa.func.coalesce(
        col(ProcessRow.origin_run_id), stmt.excluded.origin_run_id
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["id"],
        set_=set_,
        where=sa.and_(col(ProcessRow.version) <= stmt.excluded.version, owned),
    )
    await session.exec(stmt)
    if t.origin_run_id is not None:
        owner = (
            await session.exec(select(ProcessRow.origin_run_id).where(ProcessRow.id == rec.id))
        ).first()
        if owner is not None and owner != t.origin_run_id:
            READ_MODEL_CONFLICTS.labels(process=rec.process).inc()
            raise ReadModelConflict(rec.id, rec.process, owner, t.origin_run_id)
    # a process that closes gives back its exclusive claims with the same commit
    await release_closed(session, process=rec.process, process_id=rec.id, status=rec.status)

    for task in t.tasks:
        task_row = {
            "id": task.id,
            "kind": task.kind,
            "process": task.process,
            "process_id": task.process_id,
            "partner_id": task.partner_id,
            "assignee": task.assignee,
            "candidate_role": task.candidate_role,
            "assignee_partner_id": task.assignee_partner_id,
            "escalate_to_role": task.escalate_to_role if task.escalated else None,
            "status": task.status,
            "escalated": task.escalated,
            "claimed_by": task.claimed_by,
            "outcome": task.outcome,
            "created_at": task.created_at,
            "due_at": task.due_at,
            "version": rec.version,
            "body": task.model_dump(mode="json"),
        }
        tstmt = _insert(session, TaskRow).values(**task_row)
        tstmt = tstmt.on_conflict_do_update(
            index_elements=["id"],
            set_={k: tstmt.excluded[k] for k in task_row if k not in ("id", "created_at")},
            where=col(TaskRow.version) <= tstmt.excluded.version,
        )
        await session.exec(tstmt)

    # one multi-row INSERT each for the audit and outbox rows (in position order)
    if t.audit:
        audit_rows = [
            {
                "subject_id": rec.id,
                "version": rec.version,
                "position": position,
                "at": rec.updated_at,
                "actor": entry.actor,
                "action": entry.action,
                "comment": entry.comment,
                "task_id": entry.task_id,
                "details": entry.details,
            }
            for position, entry in enumerate(t.audit)
        ]
        astmt = _insert(session, AuditEvent).values(audit_rows)
        await session.exec(astmt.on_conflict_do_nothing())

    if t.notifications:
        outbox_rows = [
            {
                "event_key": notification_key(rec.id, rec.version, position),
                "recipient": note.recipient,
                "subject": note.subject,
                "body": note.body,
                "status": "pending",
                "attempts": 0,
                "created_at": rec.updated_at,
                "next_attempt_at": rec.updated_at,
            }
            for position, note in enumerate(t.notifications)
        ]
        ostmt = _insert(session, OutboxMessage).values(outbox_rows)
        await session.exec(ostmt.on_conflict_do_nothing(index_elements=["event_key"]))


# --- look-ups for the PO review ---------------------------------------------------------------

_APPROVED = (OpportunityStatus.approved, OpportunityStatus.won, OpportunityStatus.delivered)
_NOT_LIVE = tuple(s.value for s in FINAL_STATUSES if s is not OpportunityStatus.delivered)


async def find_duplicate(session: AsyncSession, q: DuplicateQuery) -> str | None:
    """R-PO-4: the earliest open or approved PO of another partner for the same customer/project."""
    stmt = (
        select(ProcessRow.id)
        .where(ProcessRow.process == "opportunity")
        .where(ProcessRow.match_key == q.match_key)
        .where(ProcessRow.partner_id != q.partner_id)
        .where(ProcessRow.id != q.po_id)
        .order_by(col(ProcessRow.created_at), col(ProcessRow.id))
        .limit(1)
    )
    if q.approved_only:
        stmt = stmt.where(col(ProcessRow.status).in_([s.value for s in _APPROVED]))
    else:
        stmt = stmt.where(col(ProcessRow.status).not_in(_NOT_LIVE))
    return (await session.exec(stmt)).first()


def _specificity(rule: RoutingRule) -> tuple[int, int]:
    # partner beats region beats industry; then the earlier rule in the table wins
    weight = (
        4 * (rule.partner_id is not None)
        + 2 * (rule.region is not None)
        + (rule.industry is not None)
    )
    return (weight, -rule.position)


def best_rule(rules: Sequence[RoutingRule], req: RouteRequest) -> RoutingRule | None:
    """R-PO-2: the most specific rule whose every set field matches the PO."""
    matching = [
        r
        for r in rules
        if (r.partner_id is None or r.partner_id == req.partner_id)
        and (r.region is None or r.region == req.region)
        and (r.industry is None or r.industry == req.industry)
    ]
    return max(matching, key=_specificity, default=None)


async def route(session: AsyncSession, req: RouteRequest) -> RouteResult:
    rules = (
        await session.exec(
            select(RoutingRule).where(
                sa.or_(
                    col(RoutingRule.partner_id).is_(None),
                    col(RoutingRule.partner_id) == req.partner_id,
                )
            )
        )
    ).all()
    rule = best_rule(rules, req)
    known: set[str] = set()
    if req.offerings:
        known = set(
            (
                await session.exec(
                    select(Offering.code).where(col(Offering.code).in_(req.offerings))
                )
            ).all()
        )
    return RouteResult(
        pdm=rule.pdm if rule else None,
        psm=rule.psm if rule else None,
        offering_unmatched=not known,  # R-PO-8: none of its offerings is in the catalogue
    )
