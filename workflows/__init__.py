"""Deterministic orchestration only: a module per process, plus the shared human-task primitive.

`workflows.ALL_WORKFLOWS` (in `registry.py`) is loaded on first use only: the workflow sandbox
re-imports this package for every new workflow run, so it must stay cheap to import.
"""


def __getattr__(name: str) -> list[type]:
    if name == "ALL_WORKFLOWS":
        from workflows.registry import ALL_WORKFLOWS

        return ALL_WORKFLOWS
    raise AttributeError(f"module 'workflows' has no attribute {name!r}")
