"""What a workflow hands the read model at each transition, written in one transaction.

Idempotent by construction: the process row and task rows are upserts guarded by `version`,
audit rows and notifications carry keys derived from (process id, version), so an activity
retried after a crash writes nothing twice.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from domain.tasks import HumanTask
from domain.values import UtcDateTime


class ProcessRecord(BaseModel):
    id: str
    process: str
    partner_id: str | None
    status: str
    submitted_by: str | None = None
    match_key: str | None = None
    version: int
    created_at: UtcDateTime
    updated_at: UtcDateTime
    view: dict[str, Any]


class AuditEntry(BaseModel):
    actor: str
    action: str
    comment: str | None = None
    task_id: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)


class Notification(BaseModel):
    recipient: str
    subject: str
    body: str


class Transition(BaseModel):
    record: ProcessRecord
    tasks: list[HumanTask] = Field(default_factory=list)
    audit: list[AuditEntry] = Field(default_factory=list)
    notifications: list[Notification] = Field(default_factory=list)
    # The workflow's first run id (the same across continue-as-new): the read model refuses a
    # write from another run under the same id (PF.READ_MODEL_CONFLICT). None in activity inputs
    # recorded before it existed: such writes are not checked.
    origin_run_id: str | None = None
