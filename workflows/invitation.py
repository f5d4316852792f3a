"""Association invitation: a partner invites a personal account, which accepts within the TTL.

Rules R-INV-1 … R-INV-5. One workflow per invitation (`inv-<id>`); it ends accepted, revoked or
expired, and a new invitation to the same account is a new workflow (the old one keeps its
final state).

Eligibility (R-INV-2) is checked twice, on purpose:
- at send, by the API, read-only, before anything starts: a refused invitation never becomes a
  process (no workflow, no read-model row, no email), and the partner admin hears the refusal
  synchronously with its own code;
- at acceptance, here (R-INV-5), by the association activity, in the same conditional UPDATE that
  associates the account: seven days is long enough for the facts to change, and it is the one
  moment where two partners can race for the same account.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from domain.errors import refuse
    from domain.invitations import (
        AcceptInvitation,
        AssociationInvitationInput,
        AssociationRequest,
        InvitationStatus,
        InvitationView,
        RevokeInvitation,
        invitation_not_pending,
    )
    from domain.policy import add_duration
    from domain.principal import Principal, Role
    from domain.projection import AuditEntry, Notification, ProcessRecord
    from domain.tasks import check_fresh
    from domain.values import utc_text
    from workflows.accounts import associate
    from workflows.human_task import Pending, ProcessWorkflow

S = InvitationStatus


@workflow.defn(name="AssociationInvitation")
class AssociationInvitation(ProcessWorkflow):
    process = "invitation"
    task_kinds = {}  # nobody but the invitee acts, through `accept`

    @workflow.init
    def __init__(self, inp: AssociationInvitationInput) -> None:
        super().__init__()
        self.inp = inp
        self.status = S.pending
        self.expires_at = add_duration(self.created_at, inp.policy.invite_ttl)
        self.accepted_at: datetime | None = None
        self.revoked_by: str | None = None
        self.revoke_reason: str | None = None

    @workflow.run
    async def run(self, inp: AssociationInvitationInput) -> dict[str, Any]:
        await self.commit(
            audit=[
                AuditEntry(
                    actor=inp.invited_by,
                    action="invited",
                    comment=inp.message,
                    details={"account_id": inp.account_id, "expires_at": self._expiry()},
                )
            ],
            notifications=[
                self._invitee_notice(
                    f"{inp.partner_id} invites you to associate your account",
                    f"Partner {inp.partner_id} invites account {inp.account_id} to associate "
                    f"with it. Accept before {self._expiry()} with "
                    f"POST /v1/invitations/{self.process_id}/accept."
                    + (f"\nTheir message: {inp.message}" if inp.message else ""),
                )
            ],
        )
        await self.serve_until(lambda: self.status is not S.pending)
        return await self.finish()

    # --- Updates ------------------------------------------------------------------------------

    @workflow.update
    async def accept(self, cmd: AcceptInvitation) -> dict[str, Any]:
        return await self.enqueue(cmd)

    @accept.validator
    def _validate_accept(self, cmd: AcceptInvitation) -> None:
        check_fresh(cmd, workflow.now())
        self._check_accept(cmd.actor)

    @workflow.update
    async def revoke(self, cmd: RevokeInvitation) -> dict[str, Any]:
        return await self.enqueue(cmd)

    @revoke.validator
    def _validate_revoke(self, cmd: RevokeInvitation) -> None:
        check_fresh(cmd, workflow.now())
        self._check_revoke(cmd.actor)

    # --- the main loop's command handling -----------------------------------------------------

    async def handle(self, pending: Pending) -> None:
        cmd = pending.command
        if isinstance(cmd, AcceptInvitation):
            await self._accept(pending, cmd)
        elif isinstance(cmd, RevokeInvitation):
            await self._revoke(pending, cmd)
        else:  # pragma: no cover - only the Updates above enqueue
            refuse("PF.BAD_REQUEST", f"unknown command {type(cmd).__name__}")

    async def _accept(self, pending: Pending, cmd: AcceptInvitation) -> None:
        self._check_accept(cmd.actor)
        # R-INV-5 and the one association per account, in one statement. A refusal leaves the
        # invitation pending: the invitee may fix what was missing and accept within the TTL.
        result = await associate(
            AssociationRequest(
                account_id=self.inp.account_id,
                partner_id=self.inp.partner_id,
                rules="invitation",
                process_id=self.process_id,
            )
        )
        # From here the account is associated: the acceptance stands even if the TTL ran out
        # while the activity ran (it was made in time), and no other command runs meanwhile.
        self.status = S.accepted
        self.accepted_at = workflow.now()
        await self.commit(
            audit=[
                AuditEntry(
                    actor=cmd.actor.sub,
                    action="accepted",
                    details={
                        "account_id": self.inp.account_id,
                        "newly_associated": result.newly_associated,
                    },
                )
            ],
            notifications=[
                self._partner_notice(f"account {self.inp.account_id} accepted your invitation"),
                self._invitee_notice(
                    f"your account is now associated with {self.inp.partner_id}",
                    f"Account {self.inp.account_id} is associated with partner "
                    f"{self.inp.partner_id}.",
                ),
            ],
        )
        self.resolve(pending)

    async def _revoke(self, pending: Pending, cmd: RevokeInvitation) -> None:
        self._check_revoke(cmd.actor)
        self.status = S.revoked
        self.revoked_by = cmd.actor.sub
        self.revoke_reason = cmd.reason
        await self.commit(
            audit=[AuditEntry(actor=cmd.actor.sub, action="revoked", comment=cmd.reason)],
            notifications=[
                self._invitee_notice(
                    f"the invitation from {self.inp.partner_id} was withdrawn",
                    f"Partner {self.inp.partner_id} withdrew invitation {self.process_id}.",
                )
            ],
        )
        self.resolve(pending)

    # --- R-INV-3: the TTL ---------------------------------------------------------------------

    def process_deadline(self) -> datetime | None:
        return self.expires_at if self.status is S.pending else None

    async def on_process_deadline(self) -> None:
        self.status = S.expired
        await self.commit(
            audit=[AuditEntry(actor="system", action="expired", details={"ttl": self._ttl()})],
            notifications=[
                self._partner_notice(
                    f"your invitation to {self.inp.account_id} expired; you may invite again"
                ),
                self._invitee_notice(
                    f"the invitation from {self.inp.partner_id} has expired",
                    f"Invitation {self.process_id} was not accepted within {self._ttl()}.",
                ),
            ],
        )

    # --- checks, shared by validators (before history) and the main loop -------------------

    def _check_pending(self) -> None:
        refusal = invitation_not_pending(
            self.process_id, self.status, self.expires_at, workflow.now()
        )
        if refusal is not None:
            refusal.raise_in_workflow()

    def _check_accept(self, actor: Principal) -> None:
        if not actor.has(Role.account) or actor.sub != self.inp.account_id:
            refuse("PF.NOT_INVITEE", "only the invited account may accept this invitation")
        self._check_pending()

    def _check_revoke(self, actor: Principal) -> None:
        if actor.partner_id != self.inp.partner_id or not actor.has(Role.partner_admin):
            refuse("PF.NOT_OWNER", "only an admin of the inviting partner may revoke (R-INV-4)")
        self._check_pending()

    # --- views --------------------------------------------------------------------------------

    def _ttl(self) -> str:
        return self.inp.policy.invite_ttl

    def _expiry(self) -> str:
        return f"{utc_text(self.expires_at, '%Y-%m-%d %H:%M:%S')}"

    def _invitee_notice(self, subject: str, body: str) -> Notification:
        return Notification(
            recipient=self.inp.account_email or self.inp.account_id,
            subject=f"[partnerflow] {subject}",
            body=body,
        )

    def _partner_notice(self, what: str) -> Notification:
        return Notification(
            recipient=self.inp.invited_by,
            subject=f"[partnerflow] {what}",
            body=f"Invitation {self.process_id} of partner {self.inp.partner_id} to account "
            f"{self.inp.account_id} is now {self.status.value}.",
        )

    def view(self) -> dict[str, Any]:
        return InvitationView(
            id=self.process_id,
            partner_id=self.inp.partner_id,
            account_id=self.inp.account_id,
            status=self.status,
            message=self.inp.message,
            expires_at=self.expires_at,
            invited_by=self.inp.invited_by,
            accepted_at=self.accepted_at,
            revoked_by=self.revoked_by,
            revoke_reason=self.revoke_reason,
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
            match_key=self.inp.account_id,
            version=self.version,
            created_at=self.created_at,
            updated_at=now,
            view=self.view(),
        )

    def describe(self) -> str:
        if self.status is S.pending:
            return (
                f"waiting for account {self.inp.account_id} to accept the invitation of "
                f"{self.inp.partner_id} until {self._expiry()}"
            )
        return f"{self.status.value}; nothing waits"
