"""The one error envelope: {"error_code", "error_msg", "details"} for every error, 4xx and 5xx.

Routes raise `ApiError`; Temporal refusals (typed ApplicationErrors) are translated by
`temporal_errors`; everything else is turned into the envelope by the handlers below.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from temporalio.api.errordetails.v1 import MultiOperationExecutionFailure, WorkflowNotReadyFailure
from temporalio.client import WorkflowUpdateFailedError, WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from domain.errors import STATUS_BY_CODE, status_for

log = logging.getLogger("partnerflow.api")


class ErrorEnvelope(BaseModel):
    error_code: str
    error_msg: str
    details: Any = None


class ApiError(Exception):
    def __init__(
        self, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
    ) -> None:
        assert code in STATUS_BY_CODE, f"unregistered error code {code}"
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers

    @property
    def status_code(self) -> int:
        return status_for(self.code)


def envelope(
    code: str,
    message: str,
    details: Any = None,
    status: int | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        status_code=status or status_for(code),
        content=ErrorEnvelope(error_code=code, error_msg=message, details=details).model_dump(
            mode="json"
        ),
        headers=headers,
    )


def _from_application_error(err: ApplicationError) -> ApiError:
    code = err.type or "PF.INTERNAL"
    if code not in STATUS_BY_CODE:
        log.error("workflow failed with an untyped error: %s", err)
        return ApiError("PF.INTERNAL", "the process failed unexpectedly")
    details = err.details[0] if err.details else None
    return ApiError(code, err.message, details)


@contextmanager
def temporal_errors(what: str) -> Iterator[None]:
    """Translate what Temporal says into the error envelope's codes."""
    try:
        yield
    except WorkflowUpdateFailedError as exc:
        cause: BaseException | None = exc.cause
        while cause is not None and not isinstance(cause, ApplicationError):
            cause = cause.__cause__
        if isinstance(cause, ApplicationError):
            raise _from_application_error(cause) from exc
        raise ApiError("PF.INTERNAL", f"{what} failed") from exc
    except WorkflowAlreadyStartedError as exc:
        raise ApiError("PF.ALREADY_EXISTS", f"{what}: it has already been started") from exc
    except (WorkflowUpdateRPCTimeoutOrCancelledError, TimeoutError) as exc:
        raise ApiError(
            "PF.WORKER_UNAVAILABLE",
            f"{what}: no worker answered in time; nothing was recorded, retry later",
            headers={"Retry-After": "5"},
        ) from exc
    except RPCError as exc:
        text = exc.message.lower()
        if exc.status is RPCStatusCode.NOT_FOUND and "completed" in text:
            raise ApiError("PF.PROCESS_CLOSED", f"{what}: the process is closed") from exc
        if exc.status is RPCStatusCode.NOT_FOUND:
            raise ApiError("PF.NOT_FOUND", f"{what}: no such process") from exc
        if exc.status in RETRYABLE_RPC_STATUSES:
            raise ApiError(
                "PF.UNAVAILABLE", f"{what}: Temporal is unavailable", headers={"Retry-After": "5"}
            ) from exc
        if workflow_not_ready(exc):
            raise ApiError(
                "PF.UNAVAILABLE",
                f"{what}: the process is not ready (its workflow task failed or timed out on a "
                "busy worker and is being retried); retry later",
                headers={"Retry-After": "5"},
            ) from exc
        raise


# Temporal's "not now" answers: the same request may succeed later.
RETRYABLE_RPC_STATUSES = frozenset(
    {
        RPCStatusCode.UNAVAILABLE,
        RPCStatusCode.DEADLINE_EXCEEDED,
        RPCStatusCode.RESOURCE_EXHAUSTED,
    }
)


def workflow_not_ready(exc: RPCError) -> bool:
    """Whether Temporal refused an Update (or update-with-start) because the execution's
    workflow task keeps failing or timing out (server: WorkflowNotReady, FAILED_PRECONDITION,
    "Workflow Task in failed state", from the third attempt on). Retryable: once a worker
    completes the task the same request goes through.

    A plain Update carries `WorkflowNotReadyFailure` in its status details; update-with-start
    carries it inside `MultiOperationExecutionFailure`, which the SDK re-raises with the outer
    status only, so the message is the fallback there.
    """
    if exc.status is not RPCStatusCode.FAILED_PRECONDITION:
        return False
    for detail in exc.grpc_status.details:
        if detail.Is(WorkflowNotReadyFailure.DESCRIPTOR):
            return True
        multi = MultiOperationExecutionFailure()
        if detail.Unpack(multi) and any(
            d.Is(WorkflowNotReadyFailure.DESCRIPTOR) for st in multi.statuses for d in st.details
        ):
            return True
    return "workflow task in failed state" in exc.message.lower()


# fastapi.routing: the detail of its HTTPException when reading the JSON body fails otherwise
# than with a syntax error
FASTAPI_BODY_PARSE_ERROR = "There was an error parsing the body"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return envelope(exc.code, exc.message, exc.details, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg"), "type": e.get("type")}
            for e in exc.errors()
        ]
        if any(e["type"] == "json_invalid" for e in errors):
            return envelope("PF.MALFORMED_JSON", "the request body is not valid JSON", errors)
        return envelope("PF.VALIDATION_FAILED", "the request is not valid", errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {
            404: "PF.NOT_FOUND",
            405: "PF.METHOD_NOT_ALLOWED",
            401: "PF.UNAUTHENTICATED",
            403: "PF.FORBIDDEN",
            413: "PF.PAYLOAD_TOO_LARGE",
        }.get(exc.status_code, "PF.BAD_REQUEST")
        if exc.status_code == 400 and exc.detail == FASTAPI_BODY_PARSE_ERROR:
            # FastAPI's answer to a body json.loads could not read (bad UTF-8, too deep): the
            # same code as a JSON syntax error
            return envelope(
                "PF.MALFORMED_JSON", "the request body is not valid JSON", {"reason": exc.detail}
            )
        message = "no such route" if exc.status_code == 404 else str(exc.detail)
        return envelope(
            code, message, status=exc.status_code, headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    @app.exception_handler(PoolTimeoutError)
    async def _store_down(_: Request, exc: Exception) -> JSONResponse:
        log.warning("store unavailable: %s", type(exc).__name__)
        return envelope(
            "PF.STORE_UNAVAILABLE",
            "the database is unavailable; retry later",
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, asyncio.CancelledError):  # pragma: no cover
            raise exc
        log.exception("unhandled error")
        return envelope("PF.INTERNAL", "internal error; it has been logged")
