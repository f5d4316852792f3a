"""The raw ceiling: a workflow that does nothing but wait for one Update, and its worker.

Run as its own process (`python -m bench.raw_workflow ADDRESS NAMESPACE TASK_QUEUE`) so it does
not share a GIL with the bench's client, as the service's worker does not either.
"""

from __future__ import annotations

import asyncio
import sys

from temporalio import workflow
from temporalio.client import Client
from temporalio.worker import Worker


@workflow.defn(name="BenchTrivial")
class TrivialWorkflow:
    def __init__(self) -> None:
        self.decided: str | None = None

    @workflow.run
    async def run(self) -> str:
        await workflow.wait_condition(lambda: self.decided is not None)
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self.decided or ""

    @workflow.update
    async def decide(self, outcome: str) -> str:
        self.decided = outcome
        return outcome


async def serve(address: str, namespace: str, task_queue: str) -> None:
    client = await Client.connect(address, namespace=namespace)
    async with Worker(client, task_queue=task_queue, workflows=[TrivialWorkflow]):
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], sys.argv[2], sys.argv[3]))
