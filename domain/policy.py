"""Process policy: durations, caps and limits, carried in each workflow's input.

Durations are ISO 8601 strings (P5D, P12M, PT10S); months are calendar months, so
31 Jan + P1M = 28/29 Feb. Pure code: safe to import from workflows.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

import isodate
from pydantic import AfterValidator, BaseModel, Field

from domain.incentive_caps import IncentiveCaps


def _parse(text: str) -> timedelta | isodate.Duration:
    try:
        value = isodate.parse_duration(text)
    except (isodate.ISO8601Error, ValueError) as exc:
        raise ValueError(f"not an ISO 8601 duration: {text!r}") from exc
    probe = datetime(2000, 1, 1)
    if probe + value <= probe:
        raise ValueError(f"duration must be positive: {text!r}")
    return value


def _validate_duration(text: str) -> str:
    _parse(text)
    return text


IsoDuration = Annotated[str, AfterValidator(_validate_duration)]


def add_duration(moment: datetime, duration: str) -> datetime:
    """`moment` plus an ISO 8601 duration, calendar-aware (P1M from 31 Jan is end of February)."""
    result: datetime = moment + _parse(duration)
    return result


def subtract_duration(moment: datetime, duration: str) -> datetime:
    result: datetime = moment - _parse(duration)
    return result


def halfway(start: datetime, end: datetime) -> datetime:
    return start + (end - start) / 2


class Policy(BaseModel):
    """Defaults are DESIGN §1's; every one is configurable (PARTNERFLOW_POLICY__...)."""

    po_review_sla: IsoDuration = "P5D"
    cert_validity: IsoDuration = "P12M"
    recert_window: IsoDuration = "P60D"
    # R-CERT-8 (our choice): reminders this long before a certificate expires.
    cert_reminders: list[IsoDuration] = Field(default=["P30D", "P7D"], max_length=10)
    # R-CERT-3 (our choice): how long after a failed review the partner may request a defense.
    cert_defense_period: IsoDuration = "P30D"
    payout_sla: IsoDuration = "P15D"
    # R-INC-8 (our choice): finance checks a submitted invoice within this, from its submission;
    # a reminder at half, escalation to the finance lead on breach.
    invoice_check_sla: IsoDuration = "P5D"
    invite_ttl: IsoDuration = "P7D"
    customer_link_ttl: IsoDuration = "P30D"  # R-INV-6 (our choice)
    # R-INV-6 (our choice): an unanswered dissociation request lapses after this.
    dissociation_answer_ttl: IsoDuration = "P7D"
    # R-PO-3: the unified PSM contact a dispatched PO gets when the dispatcher names no PSM.
    unmatched_psm: str = Field(default="psm-unified", min_length=1, max_length=128)
    # R-PO-10 (our choice): the criteria every PO review outcome records, pass or fail each.
    po_review_criteria: list[str] = Field(
        default=["customer_real", "project_real", "partner_role", "offering"],
        min_length=1,
        max_length=20,
    )
    incentive_apps_per_month: int = Field(default=5, ge=1)
    incentive_caps: IncentiveCaps = Field(default_factory=IncentiveCaps)  # R-INC-2
