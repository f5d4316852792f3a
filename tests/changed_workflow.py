"""A deliberately unpatched change to OpportunityReview, for the replay test to catch.

Its own module: the workflow sandbox re-imports the module a workflow class lives in.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from domain.opportunity import OpportunityReviewInput
    from workflows.opportunity import OpportunityReview


@workflow.defn(name="OpportunityReview")
class ChangedWithoutPatch(OpportunityReview):
    """What a careless change looks like: a new timer before the first activity."""

    @workflow.run
    async def run(self, inp: OpportunityReviewInput) -> dict[str, Any]:
        await workflow.sleep(timedelta(seconds=1))
        return await super().run(inp)
