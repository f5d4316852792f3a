"""Incentives (R-INC-*): apply, read, resubmit, payment request, invoice list, invoice, history.

Eligibility (R-INC-1 … R-INC-4) is decided here, before the workflow starts, so every refusal is
synchronous and leaves nothing behind: facts from the store, pure rules from the domain, then
atomic claims (`store.incentives`) that are given back if the start fails.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import Depends
from fastapi.responses import HTMLResponse
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client

from api.auth import CurrentUser, require_partner_user
from api.deps import Processes, SessionsDep
from api.errors import ApiError
from api.frame import command_router
from api.processes import load_partner_item
from api.routes.opportunities import History, read_history
from config import Settings
from domain.incentives import (
    FINAL_STATUSES,
    IncentiveCreate,
    IncentiveInput,
    IncentiveResubmission,
    IncentiveSource,
    IncentiveView,
    InvoiceList,
    InvoiceSubmission,
    RequestPayment,
    ResubmitIncentive,
    SourceFacts,
    SubmitInvoice,
    cap_of,
    cap_refusal,
    eligibility_refusal,
    month_of,
    source_key,
)
from domain.principal import Principal, Role
from store.claims import CLAIM_SCOPES, claimed_within, workflow_is_running
from store.incentives import (
    PERSON_SCOPE,
    SOURCE_SCOPE,
    HolderIsLive,
    application_of,
    incentive_status,
    person_holder,
    person_key,
    release_claims,
    source_facts,
    take,
    take_month_slot,
)
from store.models import Partner, ProcessRow
from workflows.incentive import IncentiveApplication

router = command_router(prefix="/v1/incentives", tags=["incentives"])


def submission_time() -> datetime:
    """When an application is made: its calendar month (R-INC-4) and year (R-INC-1). A
    dependency, so tests can stand on either side of a month boundary."""
    return datetime.now(UTC)


SubmissionTime = Annotated[datetime, Depends(submission_time)]


async def load_incentive(
    sessions: async_sessionmaker[AsyncSession], inc_id: str, principal: Principal
) -> ProcessRow:
    return await load_partner_item(
        sessions, process="incentive", item_id=inc_id, noun="incentive", principal=principal
    )


@router.post("", status_code=201, response_model=IncentiveView)
async def apply_for_incentive(
    body: IncentiveCreate, principal: CurrentUser, processes: Processes, at: SubmissionTime
) -> IncentiveView:
    """R-INC-1 … R-INC-4: apply from a delivered opportunity (the solution provider's main
    account), a capability label certified this year, or Funding Head; the amount within the
    program's cap; at most `incentive_apps_per_month` a month. Each refusal has its own code."""
    partner_id = require_partner_user(principal)
    sessions, temporal, settings = processes.sessions, processes.temporal, processes.settings
    inc_id = await processes.new_id("inc")
    async with sessions() as session:
        partner = await session.get(Partner, partner_id)
        if partner is None:
            raise ApiError("PF.PARTNER_NOT_REGISTERED", f"partner {partner_id} is not registered")
        facts = await source_facts(session, partner=partner, app=body, at=at)
    decision = cap_of(body, facts, settings.policy)
    refusal = eligibility_refusal(
        body,
        facts,
        partner_id=partner_id,
        main_account=principal.has(Role.partner_admin),
        at=at,
    ) or cap_refusal(body.amount, decision)
    if refusal is not None:
        raise ApiError(refusal.code, refusal.message, refusal.details)
    assert decision.cap is not None
    month = month_of(at)
    await _take_claims(
        sessions=sessions,
        temporal=temporal,
        settings=settings,
        app=body,
        partner_id=partner_id,
        inc_id=inc_id,
        month=month,
    )
    try:
        return await processes.start(
            IncentiveApplication.run,
            IncentiveInput(
                incentive_id=inc_id,
                partner_id=partner_id,
                submitted_by=principal.sub,
                application=body,
                cap=decision.cap,
                program=decision.program,
                applied_month=month,
                source_details=_source_details(facts),
                policy=settings.policy,
            ),
            workflow_id=inc_id,
            process="incentive",
            partner_id=partner_id,
            summary=f"Incentive ({body.source.value} {body.source_ref}) from {partner_id}, "
            f"{body.amount} CNY",
            view=IncentiveView,
        )
    except Exception:
        if not await _may_have_started(temporal, inc_id):
            await release_claims(sessions, owners=_claim_owners(partner_id, inc_id))
        raise


async def _take_claims(
    *,
    sessions: async_sessionmaker[AsyncSession],
    temporal: Client,
    settings: Settings,
    app: IncentiveCreate,
    partner_id: str,
    inc_id: str,
    month: str,
) -> None:
    """The claims that make R-INC-3 and R-INC-4 hold under concurrent submissions; on a refusal
    the claims already taken are given back."""
    live = _liveness(sessions, temporal, grace=2 * settings.update_timeout_seconds + 10)
    try:
        holder = await take(
            sessions, scope=SOURCE_SCOPE, key=source_key(app), owner_id=inc_id, holder_is_live=live
        )
        if holder is not None and app.source is IncentiveSource.funding_head:
            raise ApiError(
                "PF.FUNDING_HEAD_PROJECT_CLAIMED",
                f"project {app.project!r} is already claimed for Funding Head by another "
                "application; one project, one person (R-INC-3)",
                {"existing_id": application_of(holder)},
            )
        if holder is not None:
            raise ApiError(
                "PF.INCENTIVE_EXISTS",
                f"{app.source.value} {app.source_ref} already has an incentive application",
                {"existing_id": application_of(holder)},
            )
        person = person_key(app)
        if person is not None:
            holder = await take(
                sessions,
                scope=PERSON_SCOPE,
                key=person,
                owner_id=person_holder(partner_id, inc_id),
                holder_is_live=live,
            )
            if holder is not None and holder.rsplit("|", 1)[0] != partner_id:
                raise ApiError(
                    "PF.FUNDING_HEAD_OTHER_PATH",
                    f"{app.person!r} has applied for Funding Head through another partner; one "
                    "person, one path (R-INC-3)",
                )
        limit = settings.policy.incentive_apps_per_month
        if not await take_month_slot(
            sessions,
            partner_id=partner_id,
            month=month,
            limit=limit,
            owner_id=inc_id,
            holder_is_live=live,
        ):
            raise ApiError(
                "PF.MONTHLY_LIMIT_REACHED",
                f"this partner has made its {limit} incentive applications for {month} "
                "(R-INC-4); apply again next month",
                {"month": month, "limit": limit},
            )
    except Exception:
        await release_claims(sessions, owners=_claim_owners(partner_id, inc_id))
        raise


def _liveness(
    sessions: async_sessionmaker[AsyncSession], temporal: Client, *, grace: float
) -> HolderIsLive:
    async def live(scope: str, key: str, holder: str) -> bool:
        inc_id = application_of(holder)
        status = await incentive_status(sessions, inc_id)
        if status is not None:
            # A rejected application frees its source; it still counts in its month (R-INC-4)
            # and still binds its person to its path (R-INC-3): `CLAIM_SCOPES[...].released_at`.
            return status not in CLAIM_SCOPES[scope].released_at
        # Not recorded yet: starting now (the claim is fresh), running, or a failed start.
        if await claimed_within(
            sessions, scope=scope, key=key, holder=holder, grace=timedelta(seconds=grace)
        ):
            return True
        return await workflow_is_running(temporal, inc_id)

    return live


async def _may_have_started(temporal: Client, inc_id: str) -> bool:
    try:
        return await workflow_is_running(temporal, inc_id)
    except Exception:
        return True  # cannot tell: keep the claims; they go stale if it never started


def _claim_owners(partner_id: str, inc_id: str) -> list[str]:
    return [inc_id, person_holder(partner_id, inc_id)]


def _source_details(facts: SourceFacts) -> dict[str, Any]:
    """What the reviewer and the invoice list show about the source."""
    if facts.opportunity is not None:
        return {
            "customer_name": facts.opportunity.customer_name,
            "project_name": facts.opportunity.project_name,
        }
    if facts.certification is not None:
        return facts.certification.model_dump(
            mode="json", include={"subject", "level", "passed_at", "valid_until"}
        )
    return {}


@router.get("/{inc_id}", response_model=IncentiveView)
async def get_incentive(inc_id: str, principal: CurrentUser, sessions: SessionsDep) -> Any:
    row = await load_incentive(sessions, inc_id, principal)
    return row.view


CLOSED = frozenset(s.value for s in FINAL_STATUSES)


@router.post("/{inc_id}/resubmit", response_model=IncentiveView)
async def resubmit_incentive(
    inc_id: str, body: IncentiveResubmission, principal: CurrentUser, processes: Processes
) -> IncentiveView:
    """R-INC-5: after a return, the (possibly changed) amount goes back to the same reviewer."""
    return await processes.partner_update(
        process="incentive",
        noun="incentive",
        item_id=inc_id,
        principal=principal,
        update=IncentiveApplication.resubmit,
        arg=ResubmitIncentive(actor=principal, amount=body.amount, comment=body.comment),
        view=IncentiveView,
        closed=CLOSED,
    )


@router.post("/{inc_id}/payment-request", response_model=IncentiveView)
async def request_payment(
    inc_id: str, principal: CurrentUser, processes: Processes
) -> IncentiveView:
    """R-INC-6 / R-INC-7: apply for payment of an approved incentive; refused (409,
    PF.BUSINESS_INFO_NOT_CERTIFIED) until the partner's business information certification is
    complete. The answer carries the invoice list to invoice against."""
    return await processes.partner_update(
        process="incentive",
        noun="incentive",
        item_id=inc_id,
        principal=principal,
        update=IncentiveApplication.request_payment,
        arg=RequestPayment(actor=principal),
        view=IncentiveView,
        closed=CLOSED,
    )


@router.post("/{inc_id}/invoice", response_model=IncentiveView)
async def submit_invoice(
    inc_id: str, body: InvoiceSubmission, principal: CurrentUser, processes: Processes
) -> IncentiveView:
    """R-INC-7 / R-INC-8: the number of the invoice issued against the list (again after finance
    found an invoice unqualified); finance's check task opens."""
    return await processes.partner_update(
        process="incentive",
        noun="incentive",
        item_id=inc_id,
        principal=principal,
        update=IncentiveApplication.submit_invoice,
        arg=SubmitInvoice(actor=principal, invoice_number=body.invoice_number),
        view=IncentiveView,
        closed=CLOSED,
    )


async def _invoice_list(
    sessions: async_sessionmaker[AsyncSession], inc_id: str, principal: Principal
) -> InvoiceList:
    row = await load_incentive(sessions, inc_id, principal)
    issued = row.view.get("invoice_list")
    if issued is None:
        raise ApiError(
            "PF.INVOICE_LIST_NOT_ISSUED",
            f"incentive {inc_id} is {row.status}; its invoice list is issued on the payment "
            "request",
        )
    return InvoiceList.model_validate(issued)


@router.get("/{inc_id}/invoice-list", response_model=InvoiceList)
async def get_invoice_list(inc_id: str, principal: CurrentUser, sessions: SessionsDep) -> Any:
    """R-INC-7: the invoice list's lines and total (amounts are decimal strings)."""
    return await _invoice_list(sessions, inc_id, principal)


@router.get(
    "/{inc_id}/invoice-list.html",
    response_class=HTMLResponse,
    responses={200: {"content": {"text/html": {}}}},
)
async def print_invoice_list(
    inc_id: str, principal: CurrentUser, sessions: SessionsDep
) -> HTMLResponse:
    """R-INC-7: the invoice list as a printable page, mailed with the invoice."""
    return HTMLResponse(render_invoice_list(await _invoice_list(sessions, inc_id, principal)))


@router.get("/{inc_id}/history", response_model=History)
async def incentive_history(inc_id: str, principal: CurrentUser, sessions: SessionsDep) -> Any:
    """R-X-3: every action on the incentive, oldest first."""
    await load_incentive(sessions, inc_id, principal)
    async with sessions() as session:
        return await read_history(session, inc_id)


def render_invoice_list(il: InvoiceList) -> str:
    """A self-contained page that prints on one A4 sheet; every value is escaped."""
    e = html.escape
    rows = "\n".join(
        f"<tr><td>{n}</td><td>{e(line.description)}</td>"
        f'<td class="num">{e(str(line.amount))}</td></tr>'
        for n, line in enumerate(il.lines, start=1)
    )
    invoice = e(il.invoice_number) if il.invoice_number else "&nbsp;" * 24
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Invoice list {e(il.number)}</title>
<style>
  @page {{ size: A4; margin: 18mm; }}
  body {{ font-family: sans-serif; font-size: 11pt; color: #000; }}
  table {{ border-collapse: collapse; width: 100%; margin: 1em 0; }}
  th, td {{ border: 1px solid #444; padding: 4px 8px; text-align: left; }}
  .num {{ text-align: right; white-space: nowrap; }}
  .sign {{ margin-top: 3em; }}
</style>
</head>
<body>
<h1>Invoice list {e(il.number)}</h1>
<p>Incentive <strong>{e(il.incentive_id)}</strong> &middot; partner
<strong>{e(il.partner_name or il.partner_id)}</strong> ({e(il.partner_id)}) &middot; issued
{e(il.issued_at.strftime("%Y-%m-%d"))}</p>
<table>
<thead><tr><th>#</th><th>Description</th><th class="num">Amount ({e(il.currency)})</th></tr></thead>
<tbody>
{rows}
</tbody>
<tfoot><tr><th colspan="2">Total</th><th class="num">{e(str(il.total))}</th></tr></tfoot>
</table>
<p>Issue one invoice for exactly the total above, write its number here and in the partner
center, and mail the invoice together with this printed list.</p>
<p class="sign">Invoice number: <u>{invoice}</u></p>
</body>
</html>
"""
