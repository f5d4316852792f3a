"""Business refusals, one code each, shared by workflows (as ApplicationError types) and the API.

A workflow refuses with `refuse(code, message)`; the API maps the error's type back to the HTTP
status below, so a reviewer hears the same code from a validator as from a route.
"""

from __future__ import annotations

from typing import Any, NoReturn

from temporalio.exceptions import ApplicationError

# code -> HTTP status. Every code a caller can receive is listed here, and only here.
STATUS_BY_CODE: dict[str, int] = {
    # generic
    "PF.BAD_REQUEST": 400,
    "PF.MALFORMED_JSON": 400,
    "PF.UNAUTHENTICATED": 401,
    "PF.FORBIDDEN": 403,
    "PF.NOT_FOUND": 404,
    "PF.METHOD_NOT_ALLOWED": 405,
    "PF.CONFLICT": 409,
    "PF.PAYLOAD_TOO_LARGE": 413,
    "PF.VALIDATION_FAILED": 422,
    "PF.IDEMPOTENCY_KEY_REUSED": 422,
    "PF.IDEMPOTENCY_KEY_IN_FLIGHT": 409,
    "PF.READ_MODEL_CONFLICT": 500,
    "PF.RATE_LIMITED": 429,
    "PF.INTERNAL": 500,
    "PF.UNAVAILABLE": 503,
    "PF.WORKER_UNAVAILABLE": 503,
    "PF.OUTCOME_PENDING": 503,
    "PF.STORE_UNAVAILABLE": 503,
    # reference data
    "PF.PARTNER_NOT_REGISTERED": 403,
    # processes and tasks
    "PF.PROCESS_CLOSED": 409,
    "PF.ALREADY_EXISTS": 409,
    "PF.TASK_NOT_FOUND": 404,
    "PF.TASK_NOT_OPEN": 409,
    "PF.NOT_ASSIGNEE": 403,
    "PF.SELF_DECISION": 403,
    "PF.INVALID_OUTCOME": 422,
    "PF.COMMENT_REQUIRED": 422,
    "PF.INVALID_DATA": 422,
    "PF.WRONG_STATE": 409,
    "PF.NOT_OWNER": 403,
    "PF.REQUEST_EXPIRED": 503,
    # claims on tasks offered to a role (POST /v1/tasks/{id}/claim, /unclaim)
    "PF.TASK_CLAIMED": 409,
    "PF.TASK_ALREADY_ASSIGNED": 409,  # reassigned to the person who holds it already
    "PF.TASK_NOT_CLAIMED": 409,
    "PF.TASK_NOT_CLAIMABLE": 409,  # the process saw it after the API stopped waiting: retry
    # opportunities
    "PF.OPPORTUNITY_EXISTS": 409,
    "PF.DUPLICATE_OF_APPROVED": 409,
    "PF.CRITERIA_NOT_MET": 422,
    "PF.INVALID_STAGE": 409,
    # incentives (R-INC-*)
    "PF.INCENTIVE_SOURCE_NOT_FOUND": 404,
    "PF.INCENTIVE_SOURCE_NOT_OWNED": 403,
    "PF.PARTNER_KIND_NOT_ELIGIBLE": 403,
    "PF.MAIN_ACCOUNT_REQUIRED": 403,
    "PF.OPPORTUNITY_NOT_DELIVERED": 409,
    "PF.LABEL_NOT_CERTIFIED_THIS_YEAR": 409,
    "PF.LABEL_LEVEL_NOT_ELIGIBLE": 409,  # R-INC-1: an application cites a level-1 label
    "PF.NO_INCENTIVE_CAP": 422,
    "PF.INCENTIVE_OVER_CAP": 422,
    "PF.INCENTIVE_EXISTS": 409,
    "PF.FUNDING_HEAD_PROJECT_CLAIMED": 409,
    "PF.FUNDING_HEAD_OTHER_PATH": 409,
    "PF.MONTHLY_LIMIT_REACHED": 409,
    "PF.AMOUNT_ABOVE_REQUESTED": 422,
    "PF.BUSINESS_INFO_NOT_CERTIFIED": 409,
    "PF.LABEL_NO_LONGER_CERTIFIED": 409,
    "PF.INVOICE_LIST_NOT_ISSUED": 404,
    "PF.RECEIVED_AT_INVALID": 422,  # R-INC-8: in the future, or before the invoice was submitted
    # R-X-5: approver, qualifier and payer of one incentive are three people
    "PF.SEPARATION_OF_DUTIES": 403,
    # R-X-5: a task is reassigned only to someone who may act on it
    "PF.ASSIGNEE_NOT_ELIGIBLE": 422,
    # an outcome names someone the service does not know in that capacity (store.directory)
    "PF.PERSON_UNKNOWN": 422,
    # association invitations, customer invitations, dissociations (R-INV-*)
    "PF.ACCOUNT_NOT_FOUND": 422,
    "PF.ACCOUNT_ENTERPRISE_VERIFIED": 422,
    "PF.ACCOUNT_NOT_REAL_NAME_VERIFIED": 422,
    "PF.ACCOUNT_ASSOCIATED_ELSEWHERE": 409,
    "PF.ACCOUNT_ALREADY_ASSOCIATED": 409,
    "PF.ACCOUNT_NOT_ASSOCIATED": 409,
    "PF.INVITATION_PENDING": 409,
    "PF.INVITATION_EXPIRED": 409,
    "PF.INVITATION_REVOKED": 409,
    "PF.INVITATION_ACCEPTED": 409,
    "PF.NOT_INVITEE": 403,
    "PF.LINK_TOKEN_INVALID": 403,
    "PF.LINK_EXPIRED": 409,
    "PF.LINK_USED": 409,
    "PF.DISSOCIATION_PENDING": 409,
    "PF.DISSOCIATION_ANSWERED": 409,
    "PF.DISSOCIATION_LAPSED": 409,  # R-INV-6: unanswered within dissociation_answer_ttl
    "PF.NOT_CUSTOMER": 403,
    # reseller cooperation applications (R-RES-1)
    "PF.NOT_A_RESELLER": 403,
    "PF.DISTRIBUTOR_NOT_FOUND": 422,
    "PF.APPLICATION_EXISTS": 409,
    # certifications
    "PF.CERTIFICATION_EXISTS": 409,
    "PF.KIND_NOT_ELIGIBLE": 403,
    "PF.IMPROVEMENT_NOTE_REQUIRED": 422,
    # a valid request the certificate's dates refuse for now: 409 like WRONG_STATE, not 422
    "PF.RECERT_WINDOW_NOT_OPEN": 409,
    "PF.DEFENSE_PERIOD_OVER": 409,
    "PF.DEFENSE_ALREADY_USED": 409,
    # webhooks (issue 13)
    "PF.WEBHOOK_URL_REFUSED": 422,
    "PF.WEBHOOK_SUBSCRIPTION_NOT_FOUND": 404,
}


def status_for(code: str) -> int:
    return STATUS_BY_CODE.get(code, 400 if code.startswith("PF.") else 500)


def refuse(code: str, message: str, **details: Any) -> NoReturn:
    """Raise the business refusal `code`: non-retryable, so it never loops a workflow task."""
    assert code in STATUS_BY_CODE, f"unregistered error code {code}"
    raise ApplicationError(message, details or None, type=code, non_retryable=True)
