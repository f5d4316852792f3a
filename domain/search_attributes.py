"""Custom search attributes ops filter on in the Temporal UI; registered when the server starts."""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

PARTNER_ID = SearchAttributeKey.for_keyword("PartnerId")
PROCESS_KIND = SearchAttributeKey.for_keyword("ProcessKind")
STAGE = SearchAttributeKey.for_keyword("Stage")
ASSIGNEE = SearchAttributeKey.for_keyword("Assignee")
DUE_AT = SearchAttributeKey.for_datetime("DueAt")
