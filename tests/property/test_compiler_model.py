"""The compiler on arbitrary declarations: compiled dispatch == ``transitions`` dispatch.

Hypothesis generates valid declarations of every shape the compiler accepts
(rejections, ignored cells, unguarded rows, guarded pairs with moves on either
branch, no prelude, notify preludes and gate preludes) and random call sequences with
scripted guard outcomes and gate results. The compiled table and
``transitions``' own dispatch of the same declaration must make the same hook
and guard calls, fail the same way and end in the same state.
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from modfsm.engine.kernel.compiler import (
    Declaration,
    HookSpec,
    Ignored,
    Rejection,
    StateSpec,
    TriggerSpec,
    compile_machine,
)
from modfsm.engine.tools.transitions_adapter import TransitionsDriver

GUARDS = ("g0", "g1")
HOOKS = ("h0", "h1", "h2")
TRIGGERS = (
    TriggerSpec("plain", "plain"),
    TriggerSpec("noted", "noted", prelude="note"),
    TriggerSpec("gated", "gated", prelude="gate"),
)
_names = (f"random-machine-{n}" for n in itertools.count())


@st.composite
def declarations(draw: st.DrawFn) -> Declaration:
    states = [f"s{i}" for i in range(draw(st.integers(min_value=1, max_value=4)))]
    dest = st.one_of(st.none(), st.sampled_from(states))
    hooks = st.lists(st.sampled_from(HOOKS), max_size=3)
    rows: list[dict[str, Any]] = []
    rejections: list[Rejection] = []
    ignored: list[Ignored] = []
    for state in states:
        for trigger in TRIGGERS:
            shape = draw(st.sampled_from(["reject", "ignore", "row", "pair"]))
            if shape == "ignore":
                ignored.append(Ignored((state,), (trigger.name,), "nothing to do"))
            elif shape == "reject":
                rejections.append(
                    Rejection(f"R{len(rejections)}", (state,), (trigger.name,), "no", "don't")
                )
            elif shape == "row":
                rows.append({"trigger": trigger.name, "source": state, "dest": draw(dest),
                             "before": draw(hooks)})  # fmt: skip
            else:
                guard = draw(st.sampled_from(GUARDS))
                rows.append({"trigger": trigger.name, "source": state, "dest": draw(dest),
                             "conditions": guard, "before": draw(hooks)})  # fmt: skip
                rows.append({"trigger": trigger.name, "source": state, "dest": draw(dest),
                             "unless": [guard], "before": draw(hooks)})  # fmt: skip
    return Declaration(
        name=next(_names),
        flags=("first",),
        states=tuple(StateSpec(s, {"first": s == "s0"}) for s in states),
        initial="s0",
        guards=GUARDS,
        hooks=(
            *(HookSpec(h) for h in HOOKS),
            HookSpec("note"),
            HookSpec("gate", takes_event=False, gate=True),
        ),
        triggers=TRIGGERS,
        event_triggers={},
        transitions=tuple(draw(st.permutations(rows))),
        rejections=tuple(rejections),
        ignored=tuple(ignored),
    )


class Scripted:
    """An object whose hooks log and whose guards and gate follow a script."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.guards: dict[str, bool] = {}
        self.gate_result: Any = True
        self.current: Any = None

    def __getattr__(self, name: str) -> Any:
        if name in GUARDS:

            def guard(event: Any) -> bool:
                self.log.append(name)
                return self.guards[name]

            return guard
        if name == "gate":

            def gate(state: Any, **kwargs: Any) -> Any:
                self.log.append(name)
                return self.gate_result

            return gate
        if name in (*HOOKS, "note"):
            return lambda state, event, **kwargs: self.log.append(name)
        raise AttributeError(name)


calls = st.lists(
    st.tuples(
        st.sampled_from([t.name for t in TRIGGERS]),
        st.fixed_dictionaries({g: st.booleans() for g in GUARDS}),
        st.sampled_from([True, False, None]),
    ),
    max_size=12,
)


def run(fire: Any, obj: Scripted, trigger: str, guards: dict[str, bool], gate: Any) -> Any:
    obj.guards, obj.gate_result = guards, gate
    before = len(obj.log)
    try:
        fire(trigger)
        error = None
    except RuntimeError:
        error = "illegal"
    except TypeError:
        error = "bad-return"
    return error, obj.log[before:]


@given(declaration=declarations(), sequence=calls)
def test_compiled_dispatch_equals_transitions_dispatch(
    declaration: Declaration, sequence: list[tuple[str, dict[str, bool], Any]]
) -> None:
    compiled = compile_machine(declaration, state_attr="current")
    fast, slow = Scripted(), Scripted()
    fast.current = compiled.initial
    driver = TransitionsDriver(declaration, slow)

    def fire_fast(trigger: str) -> None:
        fast.current.calls[trigger](fast, None, None)

    def fire_slow(trigger: str) -> None:
        driver.fire(trigger, None, None, {})

    for trigger, guards, gate in sequence:
        got = run(fire_fast, fast, trigger, guards, gate)
        want = run(fire_slow, slow, trigger, guards, gate)
        assert got == want, (trigger, guards, gate)
        assert fast.current.name == driver.state
