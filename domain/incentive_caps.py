"""R-INC-2: the reference maximum of one incentive application (CNY), per partner program.

A table, not code: the defaults are DESIGN §1's and every entry is configurable through the
policy (PARTNERFLOW_POLICY__INCENTIVE_CAPS__<PROGRAM> as a JSON object). Its own module because
`domain.policy` carries it and `domain.incentives` reads it. Pure code: safe in workflows.
"""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel, Field

from domain.values import Money, PositiveMoney

Cap = PositiveMoney

# A service partner's cap names one capability label (its subject) or every label of a level.
ANY_LABEL_OF_LEVEL = "level-{level}"


def _cny(amount: str) -> Decimal:
    return Decimal(amount)


class IncentiveCaps(BaseModel):
    """Each program's caps, keyed by what sets the cap within it."""

    solution_provider: dict[str, Cap] = Field(
        default_factory=lambda: {"core": _cny("300000.00"), "leading": _cny("100000.00")},
        description="by the partner's tier",
    )
    distributor: dict[str, Cap] = Field(
        default_factory=lambda: {
            "region-1": _cny("300000.00"),
            "region-2": _cny("300000.00"),
            "region-3": _cny("200000.00"),
        },
        description="by the partner's region",
    )
    software: dict[str, Cap] = Field(
        default_factory=lambda: {
            "cloud_software": _cny("50000.00"),
            "advanced_cloud_software": _cny("80000.00"),
        },
        description="by the cloud software certification the partner holds (the highest cap)",
    )
    service: dict[str, Cap] = Field(
        # The documentation names the table but no figure: 50,000 for a level-2 label and
        # 20,000 for a level-1 label are ours.
        default_factory=lambda: {"level-2": _cny("50000.00"), "level-1": _cny("20000.00")},
        description="by capability label: its subject, else 'level-<n>'; the largest entry "
        "among the partner's valid level-2 labels, else the cited level-1 label's",
    )


class HeldLabel(BaseModel):
    """A capability label the partner holds (valid now): its subject and level (1 or 2)."""

    subject: str | None = None
    level: int | None = None


class CapFacts(BaseModel):
    """What sets an application's cap: the partner's program and, where it matters, its
    certifications (software) or the capability label the application is for (service)."""

    kind: str
    tier: str | None = None
    region: str | None = None
    certifications: list[str] = Field(default_factory=list)
    label_subject: str | None = None
    label_level: int | None = None
    # a service partner's valid capability labels (R-INC-2: its level-2 labels set the cap)
    labels: list[HeldLabel] = Field(default_factory=list)


class CapDecision(BaseModel):
    cap: Money | None
    program: str  # e.g. "solution_provider/core", for the caller and the reviewer


def cap_for(caps: IncentiveCaps, facts: CapFacts) -> CapDecision:
    """The reference maximum for one application, or `cap=None` when the table has none."""
    table: dict[str, Decimal] = getattr(caps, facts.kind, None) or {}
    keys: list[str]
    if facts.kind == "solution_provider":
        keys = [facts.tier] if facts.tier else []
    elif facts.kind == "distributor":
        keys = [facts.region] if facts.region else []
    elif facts.kind == "software":
        held = [c for c in facts.certifications if c in table]
        keys = sorted(held, key=lambda c: table[c], reverse=True)[:1]
    elif facts.kind == "service":
        return _service_cap(table, facts)
    else:
        keys = []
    for key in keys:
        if key in table:
            return CapDecision(cap=table[key], program=f"{facts.kind}/{key}")
    return CapDecision(cap=None, program=f"{facts.kind}/{keys[0] if keys else '-'}")


def _label_entry(
    table: dict[str, Decimal], subject: str | None, level: int | None
) -> tuple[str, Decimal] | None:
    """A label's entry: its subject's, else its level's ('level-<n>')."""
    keys = [subject, ANY_LABEL_OF_LEVEL.format(level=level) if level is not None else None]
    for key in keys:
        if key and key in table:
            return key, table[key]
    return None


def _largest(table: dict[str, Decimal], labels: list[HeldLabel]) -> CapDecision | None:
    entries = [e for label in labels if (e := _label_entry(table, label.subject, label.level))]
    if not entries:
        return None
    key, cap = max(entries, key=lambda e: e[1])
    return CapDecision(cap=cap, program=f"service/{key}")


def _service_cap(table: dict[str, Decimal], facts: CapFacts) -> CapDecision:
    """R-INC-2 for service partners, paid by their level-2 labels: the largest configured entry
    among the partner's valid level-2 labels; else the cited level-1 label's entry (a
    capability-label application); else, for Funding Head, the largest among its valid level-1
    labels. None of these: `cap=None` (PF.NO_INCENTIVE_CAP)."""
    by_level_2 = _largest(table, [lab for lab in facts.labels if lab.level == 2])
    if by_level_2 is not None:
        return by_level_2
    if facts.label_level is not None:  # the label the application cites
        cited = _label_entry(table, facts.label_subject, facts.label_level)
        if cited is not None:
            return CapDecision(cap=cited[1], program=f"service/{cited[0]}")
        return CapDecision(cap=None, program=f"service/{facts.label_subject or '-'}")
    by_level_1 = _largest(table, [lab for lab in facts.labels if lab.level == 1])
    return by_level_1 or CapDecision(cap=None, program="service/-")
