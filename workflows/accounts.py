"""The account activities as the invitation and dissociation workflows call them.

An activity's business refusal reaches a workflow wrapped in an ActivityError; here it becomes
the refusal itself again (same PF code, message and details), so `serve_until` hands it back to
the caller of the Update, and nothing else about the process changes.
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.accounts import AccountActivities
    from domain.errors import STATUS_BY_CODE
    from domain.invitations import (
        AssociationRequest,
        AssociationResult,
        DissociationRequest,
        DissociationResult,
    )
    from workflows.human_task import STORE_RETRY, STORE_TIMEOUT


async def associate(req: AssociationRequest) -> AssociationResult:
    try:
        return await workflow.execute_activity_method(
            AccountActivities.associate_account,
            req,
            start_to_close_timeout=STORE_TIMEOUT,
            retry_policy=STORE_RETRY,
        )
    except ActivityError as exc:
        cause = exc.cause
        if isinstance(cause, ApplicationError) and cause.type in STATUS_BY_CODE:
            raise ApplicationError(
                cause.message, *cause.details, type=cause.type, non_retryable=True
            ) from None
        raise


async def dissociate(req: DissociationRequest) -> DissociationResult:
    return await workflow.execute_activity_method(
        AccountActivities.dissociate_account,
        req,
        start_to_close_timeout=STORE_TIMEOUT,
        retry_policy=STORE_RETRY,
    )
