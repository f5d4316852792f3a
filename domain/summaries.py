"""One line per process for lists and the inbox (who, what, how much), and what a list searches.

Computed from a process's public view (`ProcessRecord.view`) by the read-model writer at every
transition, so workflows stay untouched and old histories replay unchanged. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

# process name (ProcessRow.process) -> the URL segment of its resource (/v1/<resource>)
RESOURCE_OF_PROCESS: dict[str, str] = {
    "opportunity": "opportunities",
    "certification": "certifications",
    "incentive": "incentives",
    "invitation": "invitations",
    "customer_invitation": "customer-invitations",
    "dissociation": "dissociations",
    "reseller_application": "reseller-applications",
}

View = Mapping[str, Any]


def _s(view: View, key: str) -> str:
    value = view.get(key)
    return "" if value is None else str(value)


def _amount(view: View) -> str:
    amount = view.get("amount_approved") or view.get("amount")
    return f", {amount} CNY" if amount is not None else ""


def _opportunity(view: View) -> str:
    return f"PO {_s(view, 'customer_name')} / {_s(view, 'project_name')}{_amount(view)}"


def _certification(view: View) -> str:
    level = f" level {view['level']}" if view.get("level") is not None else ""
    return f"{_s(view, 'kind')} certification {_s(view, 'subject')}{level}"


def _incentive(view: View) -> str:
    about = view.get("project") or view.get("person") or view.get("opportunity_id") or ""
    about = about or view.get("certification_id") or ""
    return f"incentive ({_s(view, 'source')}) {about}{_amount(view)}".replace(" ,", ",")


def _invitation(view: View) -> str:
    return f"invitation of account {_s(view, 'account_id')}"


def _customer_invitation(view: View) -> str:
    customer = view.get("customer_name")
    email = _s(view, "email")
    return (
        f"registration link for {customer} <{email}>"
        if customer
        else f"registration link for {email}"
    )


def _dissociation(view: View) -> str:
    return f"dissociation of account {_s(view, 'account_id')}: {_s(view, 'reason')}"


def _reseller_application(view: View) -> str:
    return f"cooperation application to distributor {_s(view, 'distributor_id')}"


_WHAT: dict[str, Callable[[View], str]] = {
    "opportunity": _opportunity,
    "certification": _certification,
    "incentive": _incentive,
    "invitation": _invitation,
    "customer_invitation": _customer_invitation,
    "dissociation": _dissociation,
    "reseller_application": _reseller_application,
}

SUMMARY_MAX = 500


def process_summary(process: str, view: View, partner_name: str | None = None) -> str:
    """One line on a process: "<partner name or id>: <what>, <amount> CNY".

    E.g. `Acme Cloud: PO Foo Ltd / Bar, 1200.00 CNY`. Amounts are the view's decimal strings
    (CNY); an incentive shows its approved amount once there is one. At most 500 characters.
    """
    who = partner_name or _s(view, "partner_id")
    describe = _WHAT.get(process)
    what = describe(view) if describe is not None else f"{process} {_s(view, 'id')}"
    line = f"{who}: {what}" if who else what
    return " ".join(line.split())[:SUMMARY_MAX]


def process_addressee(process: str, view: View) -> str | None:
    """Who a process is addressed to besides its owner partner (R-X-8, list visibility): the
    invited account (invitation), the customer's account (dissociation), the distributor
    partner (reseller_application); else None."""
    if process in ("invitation", "dissociation"):
        return _s(view, "account_id") or None
    if process == "reseller_application":
        return _s(view, "distributor_id") or None
    return None


# View fields a list's `q` searches besides the summary (ids, names, e-mails, subjects).
_SEARCHED = (
    "id",
    "partner_id",
    "customer_name",
    "project_name",
    "subject",
    "person",
    "project",
    "account_id",
    "email",
    "distributor_id",
    "invoice_number",
    "message",
    "reason",
    "opportunity_id",
)


def search_text(process: str, view: View, summary: str) -> str:
    """The lower-cased text a list's `q` filter matches (case-insensitive substring): the summary
    and the view's naming fields. At most 2000 characters."""
    parts = [summary, *(_s(view, key) for key in _SEARCHED if view.get(key))]
    return " | ".join(parts).lower()[:2000]
