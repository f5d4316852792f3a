"""Issue 11 part 3: every command a process accepts is declared once, with its check and apply.

Generated from the workflow registry (`workflows.ALL_WORKFLOWS`, what the worker registers):
a new `@workflow.update` without a registered `@command(...)` (check and apply), a validator
that re-implements a check instead of delegating to it, or a `handle()` ladder fails here.
The validator is what refuses a command before anything reaches history (DESIGN "Temporal
usage": an Update with a validator; R-X-2: a specific error), and the main loop re-runs the
same registered check before `apply`.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Callable
from typing import Any

import pytest
from temporalio import workflow

from workflows import ALL_WORKFLOWS
from workflows.human_task import ProcessWorkflow


def _updates(cls: type) -> dict[str, Any]:
    updates = workflow._Definition.must_from_class(cls).updates
    return {str(name): update for name, update in updates.items()}


def _body(fn: Callable[..., Any]) -> str:
    """The statements of `fn` as source, its docstring left out."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    func = tree.body[0]
    assert isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef)
    body = func.body
    if (
        body
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    ):
        body = body[1:]
    return "\n".join(ast.unparse(statement) for statement in body)


CASES = [
    pytest.param(cls, name, id=f"{cls.__name__}.{name}")
    for cls in ALL_WORKFLOWS
    for name in sorted(_updates(cls))
]


def test_registry_lists_process_workflows() -> None:
    assert ALL_WORKFLOWS, "the worker registers no workflow"
    for cls in ALL_WORKFLOWS:
        assert issubclass(cls, ProcessWorkflow), cls


@pytest.mark.parametrize(("cls", "name"), CASES)
def test_every_update_maps_to_a_registered_command(cls: type[ProcessWorkflow], name: str) -> None:
    """Every Update either waits for a state (`waiting_updates`, no argument) or takes one
    command whose type is registered with a check and an apply the class has; its handler is
    `return await self.enqueue(cmd)` and its validator `self.validate(cmd)`, nothing more."""
    update = _updates(cls)[name]
    if name in cls.waiting_updates:
        assert update.arg_types == [], f"{name} waits for a state; it takes no command"
        return
    assert len(update.arg_types) == 1, f"{cls.__name__}.{name} takes exactly one command"
    (command_type,) = update.arg_types
    spec = cls.commands.get(command_type)
    assert spec is not None, (
        f"{cls.__name__}.{name} takes {command_type.__name__}, which no @command(...) registers"
    )
    apply = getattr(cls, spec.apply)
    assert inspect.iscoroutinefunction(apply), f"apply {spec.apply} must be async"
    for check in filter(None, (spec.check, spec.recheck)):
        fn = getattr(cls, check, None)
        assert callable(fn) and not inspect.iscoroutinefunction(fn), (
            f"check {check} of {command_type.__name__} must be a plain (pure) method"
        )
    assert update.validator is not None, f"{cls.__name__}.{name} has no validator"
    assert _body(update.validator) == "self.validate(cmd)", (
        f"{cls.__name__}.{name}'s validator must delegate to the registered check"
    )
    assert _body(update.fn) == "return await self.enqueue(cmd)", (
        f"{cls.__name__}.{name} must only enqueue its command"
    )


@pytest.mark.parametrize("cls", ALL_WORKFLOWS, ids=lambda c: c.__name__)
def test_every_registered_command_has_an_update(cls: type[ProcessWorkflow]) -> None:
    """No orphan: every registered command type is what some Update of the class takes."""
    taken = {t for u in _updates(cls).values() for t in u.arg_types}
    orphans = sorted(t.__name__ for t in cls.commands if t not in taken)
    assert not orphans, f"{cls.__name__} registers commands no Update takes: {orphans}"


@pytest.mark.parametrize("cls", [*ALL_WORKFLOWS, ProcessWorkflow], ids=lambda c: c.__name__)
def test_no_workflow_dispatches_by_hand(cls: type) -> None:
    """The registry is the only dispatch: no class (nor the base) defines a `handle` ladder."""
    assert not hasattr(cls, "handle"), f"{cls.__name__} defines handle(); register commands"
    assert not hasattr(cls, "handle_shared") and not hasattr(cls, "handle_reassign")


@pytest.mark.parametrize("cls", ALL_WORKFLOWS, ids=lambda c: c.__name__)
def test_every_outcome_of_every_task_kind_has_its_completion(cls: type[ProcessWorkflow]) -> None:
    """`complete_task` dispatches by (task kind, outcome) to a `@completes` method, no ladder:
    every outcome a task of the process may be completed with has one, and nothing else is
    registered."""
    wanted = {(k.name, o) for k in cls.task_kinds.values() for o in k.outcomes}
    missing = sorted(
        f"{kind}/{outcome}"
        for kind, outcome in wanted
        if (kind, outcome) not in cls.completions and (kind, None) not in cls.completions
    )
    assert not missing, f"{cls.__name__}: nothing completes {missing}"
    kinds = {k.name for k in cls.task_kinds.values()}
    stray = sorted(
        f"{kind}/{outcome}"
        for kind, outcome in cls.completions
        if (kind, outcome) not in wanted and not (outcome is None and kind in kinds)
    )
    assert not stray, f"{cls.__name__}: completions for no such kind or outcome: {stray}"
    for name in set(cls.completions.values()):
        assert inspect.iscoroutinefunction(getattr(cls, name)), name
