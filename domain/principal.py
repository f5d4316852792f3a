"""Who is acting: taken from the JWT by the API and handed to workflows with every command."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field


class Role(StrEnum):
    partner_admin = "partner_admin"
    partner_member = "partner_member"
    pdm = "pdm"
    dispatcher = "dispatcher"
    cert_reviewer = "cert_reviewer"
    cert_ops = "cert_ops"
    incentive_reviewer = "incentive_reviewer"
    finance = "finance"
    finance_lead = "finance_lead"
    distributor = "distributor"
    ops_admin = "ops_admin"
    account = "account"


PARTNER_ROLES = frozenset({Role.partner_admin, Role.partner_member})
# A distributor's reviewers are its partner's users (R-RES-1, R-X-8), not staff.
STAFF_ROLES = frozenset(set(Role) - PARTNER_ROLES - {Role.account, Role.distributor})


class Principal(BaseModel):
    sub: str = Field(min_length=1, max_length=128)
    roles: list[Role] = Field(default_factory=list)
    partner_id: str | None = None

    def has(self, *roles: Role | str) -> bool:
        return any(role in self.roles for role in roles)

    @property
    def is_partner_user(self) -> bool:
        return self.partner_id is not None and self.has(*PARTNER_ROLES)

    @property
    def is_staff(self) -> bool:
        """R-X-8: staff tokens carry no `partner_id`; one that does is its partner's, whatever
        roles it names."""
        return self.partner_id is None and self.has(*STAFF_ROLES)
