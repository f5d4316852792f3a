"""Customer invitation (R-INV-6): a registration link, valid `customer_link_ttl`, that associates
the customer who registers through it with the partner.

One workflow per link (`cinv-<id>`). The link is the invitation's id plus a token the API drew
at random; whoever holds it registers as the customer, identified by their own account (role
`account`). Registration associates that account with the partner through the same atomic
activity as an accepted invitation (one partner per account); it ends the workflow, as does the
link's expiry. Ending the association later is a dissociation (`workflows.dissociation`).
"""

from __future__ import annotations

import hmac
from datetime import datetime
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from domain.errors import refuse
    from domain.invitations import (
        AssociationRequest,
        CustomerInvitationInput,
        CustomerInvitationStatus,
        CustomerInvitationView,
        RegisterCustomer,
        link_not_open,
    )
    from domain.policy import add_duration
    from domain.principal import Role
    from domain.projection import AuditEntry, Notification, ProcessRecord
    from domain.tasks import check_fresh
    from domain.values import utc_text
    from workflows.accounts import associate
    from workflows.human_task import Pending, ProcessWorkflow

S = CustomerInvitationStatus


def registration_path(invitation_id: str) -> str:
    return f"/v1/customer-invitations/{invitation_id}/register"


@workflow.defn(name="CustomerInvitation")
class CustomerInvitation(ProcessWorkflow):
    process = "customer_invitation"
    task_kinds = {}  # the customer acts through `register`

    @workflow.init
    def __init__(self, inp: CustomerInvitationInput) -> None:
        super().__init__()
        self.inp = inp
        self.status = S.sent
        self.expires_at = add_duration(self.created_at, inp.policy.customer_link_ttl)
        self.customer_account_id: str | None = None
        self.registered_at: datetime | None = None

    @workflow.run
    async def run(self, inp: CustomerInvitationInput) -> dict[str, Any]:
        await self.commit(
            audit=[
                AuditEntry(
                    actor=inp.invited_by,
                    action="link_sent",
                    comment=inp.message,
                    details={"email": inp.email, "expires_at": self._expiry()},
                )
            ],
            notifications=[
                Notification(
                    recipient=inp.email,
                    subject=f"[partnerflow] {inp.partner_id} invites you to register",
                    body=(
                        f"Register with partner {inp.partner_id} before {self._expiry()}: "
                        f"POST {registration_path(self.process_id)} with the token {inp.token}."
                        + (f"\nTheir message: {inp.message}" if inp.message else "")
                    ),
                )
            ],
        )
        await self.serve_until(lambda: self.status is not S.sent)
        return await self.finish()

    @workflow.update
    async def register(self, cmd: RegisterCustomer) -> dict[str, Any]:
        return await self.enqueue(cmd)

    @register.validator
    def _validate_register(self, cmd: RegisterCustomer) -> None:
        check_fresh(cmd, workflow.now())
        self._check_register(cmd)

    async def handle(self, pending: Pending) -> None:
        cmd = pending.command
        if not isinstance(cmd, RegisterCustomer):  # pragma: no cover - only `register` enqueues
            refuse("PF.BAD_REQUEST", f"unknown command {type(cmd).__name__}")
        self._check_register(cmd)
        result = await associate(
            AssociationRequest(
                account_id=cmd.actor.sub,
                partner_id=self.inp.partner_id,
                rules="customer",
                process_id=self.process_id,
            )
        )
        self.status = S.registered
        self.customer_account_id = cmd.actor.sub
        self.registered_at = workflow.now()
        await self.commit(
            audit=[
                AuditEntry(
                    actor=cmd.actor.sub,
                    action="registered",
                    details={
                        "account_id": cmd.actor.sub,
                        "newly_associated": result.newly_associated,
                    },
                )
            ],
            notifications=[
                Notification(
                    recipient=result.account.email or self.inp.email,
                    subject=f"[partnerflow] you are now a customer of {self.inp.partner_id}",
                    body=f"Account {cmd.actor.sub} is associated with partner "
                    f"{self.inp.partner_id}.",
                ),
                self._partner_notice(f"{self.inp.email} registered as your customer"),
            ],
        )
        self.resolve(pending)

    def process_deadline(self) -> datetime | None:
        return self.expires_at if self.status is S.sent else None

    async def on_process_deadline(self) -> None:
        self.status = S.expired
        await self.commit(
            audit=[
                AuditEntry(
                    actor="system",
                    action="link_expired",
                    details={"ttl": self.inp.policy.customer_link_ttl},
                )
            ],
            notifications=[
                self._partner_notice(f"the registration link for {self.inp.email} expired")
            ],
        )

    def _check_register(self, cmd: RegisterCustomer) -> None:
        if not cmd.actor.has(Role.account):
            refuse("PF.FORBIDDEN", "a customer registers with a personal account (role account)")
        if not hmac.compare_digest(cmd.token.encode(), self.inp.token.encode()):
            refuse("PF.LINK_TOKEN_INVALID", "this is not the token of this registration link")
        refusal = link_not_open(self.process_id, self.status, self.expires_at, workflow.now())
        if refusal is not None:
            refusal.raise_in_workflow()

    def _expiry(self) -> str:
        return f"{utc_text(self.expires_at, '%Y-%m-%d %H:%M:%S')}"

    def _partner_notice(self, what: str) -> Notification:
        return Notification(
            recipient=self.inp.invited_by,
            subject=f"[partnerflow] {what}",
            body=f"Customer invitation {self.process_id} of partner {self.inp.partner_id} is "
            f"now {self.status.value}.",
        )

    def view(self) -> dict[str, Any]:
        return CustomerInvitationView(
            id=self.process_id,
            partner_id=self.inp.partner_id,
            email=self.inp.email,
            customer_name=self.inp.customer_name,
            message=self.inp.message,
            status=self.status,
            expires_at=self.expires_at,
            registration_path=registration_path(self.process_id),
            token=self.inp.token,
            customer_account_id=self.customer_account_id,
            registered_at=self.registered_at,
            invited_by=self.inp.invited_by,
            created_at=self.created_at,
            updated_at=self.updated_at,
        ).model_dump(mode="json")

    def record(self, now: datetime) -> ProcessRecord:
        return ProcessRecord(
            id=self.process_id,
            process=self.process,
            partner_id=self.inp.partner_id,
            status=self.status.value,
            submitted_by=self.inp.invited_by,
            match_key=self.customer_account_id,
            version=self.version,
            created_at=self.created_at,
            updated_at=now,
            view=self.view(),
        )

    def describe(self) -> str:
        if self.status is S.sent:
            return (
                f"waiting for {self.inp.email} to register through the link of "
                f"{self.inp.partner_id} until {self._expiry()}"
            )
        if self.status is S.registered:
            return f"registered: account {self.customer_account_id} is a customer; nothing waits"
        return "the registration link expired; nothing waits"
