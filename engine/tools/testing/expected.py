"""What the declared lifecycle says a call must do, and whether a recorded call did it.

The expectation is read off the modifier class's compiled lifecycle
(``type(modifier).__compiled_lifecycle__.plans``: one :class:`~modfsm.engine.kernel.compiler.Plan`
per state and trigger, compiled from the declaration in :mod:`modfsm.engine.model.lifecycle`),
so it is never a second copy of the table. Given the state a call starts in,
the trigger and what the gate prelude and the guard answered, :func:`expect`
gives the hooks and guards that must run, in order, the state after the call,
and the error it must raise. :func:`check_call` compares a recorded
:class:`~modfsm.engine.tools.testing.spy.LifecycleCall` with it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from modfsm.engine.kernel.compiler import CompiledMachine
from modfsm.engine.kernel.errors import HookReturnError, IllegalTransitionError
from modfsm.engine.model.events import Event
from modfsm.engine.tools.testing.scenario import describe_event
from modfsm.engine.tools.testing.spy import HookCall, LifecycleCall

__all__ = ["Expectation", "check_call", "expect", "trigger_of"]


@attrs.frozen
class Expectation:
    """What one call must do.

    Attributes:
        hooks: the hooks and guards that run, in order (prelude, guard, row hooks).
        after: the state after the call.
        raises: the error the call raises (None: it returns).
        rule: the rejection rule, for a rejected call.
    """

    hooks: tuple[str, ...]
    after: str
    raises: type[BaseException] | None = None
    rule: str | None = None


def trigger_of(machine: CompiledMachine, call: str, event: Event | None) -> str:
    """The trigger a public call maps to (``update_event`` routes by the event's type)."""
    if call == "update_event":
        assert event is not None, "update_event carries an event"
        return machine.declaration.event_triggers[event.type_]
    return call


def expect(
    machine: CompiledMachine, state: str, trigger: str, answer: Callable[[str], Any]
) -> Expectation:
    """What ``trigger`` does in ``state``; ``answer(name)`` is what a gate or guard returned."""
    plan = machine.plans[(state, trigger)]
    if plan.rejection is not None:
        return Expectation((), state, IllegalTransitionError, plan.rejection.rule)
    if plan.ignored is not None:
        return Expectation((), state)
    hooks: list[str] = []
    if plan.prelude is not None:
        hooks.append(plan.prelude)
        if plan.gate:
            result = answer(plan.prelude)
            if result is False:
                return Expectation(tuple(hooks), state)
            if result is not True:
                return Expectation(tuple(hooks), state, HookReturnError)
    branch = plan.when_true
    if plan.guard is not None:
        hooks.append(plan.guard)
        if not answer(plan.guard):
            branch = plan.when_false
    assert branch is not None  # a plan that is neither rejected nor ignored has a branch
    hooks.extend(branch.hooks)
    return Expectation(tuple(hooks), branch.dest or state)


def _first_results(hooks: tuple[HookCall, ...]) -> dict[str, Any]:
    """What each hook or guard returned the first time it ran in the call."""
    first: dict[str, Any] = {}
    for hook in hooks:
        first.setdefault(hook.name, hook.result)
    return first


def _show(names: tuple[str, ...], results: dict[str, Any], answering: frozenset[str]) -> str:
    """Hook names, with what each guard and gate answered: ``on_event, should_start -> False``."""
    shown = [f"{name} -> {results.get(name)!r}" if name in answering else name for name in names]
    return ", ".join(shown) if shown else "nothing"


def check_call(machine: CompiledMachine, recorded: LifecycleCall) -> list[str]:
    """How ``recorded`` departs from the declared lifecycle (empty: it does not).

    Checks the hooks and guards that ran (names, in order), that each received the
    call's event, the error raised, and the state after the call.
    """
    declaration = machine.declaration
    answering = frozenset(declaration.guards) | {h.name for h in declaration.hooks if h.gate}
    takes_event = {hook.name: hook.takes_event for hook in declaration.hooks}
    takes_event |= dict.fromkeys(declaration.guards, True)
    problems: list[str] = []
    for hook in recorded.hooks:
        if hook.raised is not None:
            problems.append(f"{hook.name} raised {hook.raised}")
    trigger = trigger_of(machine, recorded.call, recorded.event)
    results = _first_results(recorded.hooks)
    expected = expect(machine, recorded.before, trigger, results.get)
    names = tuple(hook.name for hook in recorded.hooks)
    if names != expected.hooks:
        problems.append(
            f"expected the hooks {_show(expected.hooks, results, answering)}; "
            f"they were {_show(names, results, answering)}"
        )
    for hook in recorded.hooks:
        if takes_event.get(hook.name, False) and hook.event != recorded.event:
            problems.append(
                f"{hook.name} received the event {describe_event(hook.event)}, "
                f"not the call's {describe_event(recorded.event)}"
            )
    if not any(hook.raised for hook in recorded.hooks):
        raised = recorded.raised
        if expected.raises is None and raised is not None:
            problems.append(f"it raised {type(raised).__name__}: {raised}")
        elif expected.raises is not None and not isinstance(raised, expected.raises):
            problems.append(
                f"expected it to raise {expected.raises.__name__}"
                + (f" (rule {expected.rule})" if expected.rule else "")
                + (f"; it raised {type(raised).__name__}" if raised is not None else "")
            )
        if recorded.after != expected.after:
            problems.append(f"it left the modifier {recorded.after!r}, not {expected.after!r}")
    return problems
