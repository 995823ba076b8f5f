"""The declaration compiler: what it refuses, and the tables it builds."""

from __future__ import annotations

import copy
import itertools
import pickle
from typing import Any

import attrs
import pytest

from engine import LIFECYCLE, DeclarationError, EventType, State
from engine.lifecycle import LifecycleState
from engine.machine import (
    Branch,
    CompiledMachine,
    Declaration,
    HookSpec,
    Ignored,
    Plan,
    Rejection,
    StateSpec,
    TriggerSpec,
    compile_machine,
)
from engine.modifier import Modifier

_names = (f"mutant-{n}" for n in itertools.count())


def compile_variant(**changes: Any) -> CompiledMachine:
    return compile_machine(attrs.evolve(LIFECYCLE, name=next(_names), **changes), state_attr="_lc")


def with_row(index: int, **row_changes: Any) -> tuple[dict[str, Any], ...]:
    rows = [dict(row) for row in LIFECYCLE.transitions]
    rows[index].update(row_changes)
    return tuple(rows)


def without_row(index: int) -> tuple[dict[str, Any], ...]:
    return tuple(dict(row) for i, row in enumerate(LIFECYCLE.transitions) if i != index)


def row_index(source: str, trigger: str, key: str | None = None) -> int:
    for i, row in enumerate(LIFECYCLE.transitions):
        if row["source"] == source and row["trigger"] == trigger and (key is None or key in row):
            return i
    raise LookupError((source, trigger, key))


def test_the_declaration_types_keep_their_engine_machine_import_path() -> None:
    import engine.declaration
    import engine.machine

    for name in engine.declaration.__all__:
        assert getattr(engine.machine, name) is getattr(engine.declaration, name)
        assert name in engine.machine.__all__


def test_the_lifecycle_compiles_and_is_cached_by_declaration() -> None:
    first = compile_machine(LIFECYCLE, state_attr="_lc")
    assert compile_machine(LIFECYCLE, state_attr="_lc") is first
    assert Modifier.__compiled_lifecycle__ is first
    assert list(first.states) == [s.value for s in LifecycleState]


def test_a_different_declaration_under_a_taken_name_is_refused() -> None:
    clash = attrs.evolve(LIFECYCLE, flags=LIFECYCLE.flags)  # equal: fine
    assert compile_machine(clash, state_attr="_lc").declaration == LIFECYCLE
    other = attrs.evolve(LIFECYCLE, rejections=LIFECYCLE.rejections[:-1])
    with pytest.raises(DeclarationError, match="already compiled"):
        compile_machine(other, state_attr="_lc")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("after", "on_update", r"does not support 'after' \(hooks after the state change"),
        ("prepare", "on_update", r"does not support 'prepare'"),
        ("timeout", 3, r"does not support 'timeout' \(not part of the supported row format\)"),
    ],
)
def test_unsupported_row_keys_are_refused(key: str, value: Any, message: str) -> None:
    with pytest.raises(DeclarationError, match=message) as caught:
        compile_variant(transitions=with_row(0, **{key: value}))
    assert caught.value.where == f"transitions[0].{key}"
    assert "To fix," in str(caught.value)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"source": "*"}, r"wildcard '\*' is not supported"),
        ({"source": "limbo"}, r"'limbo' is not a declared state"),
        ({"dest": "="}, r"'=' \(reflexive\) is not supported"),
        ({"dest": "limbo"}, r"'limbo' is not a declared state"),
        ({"trigger": "explode"}, r"'explode' is not a declared trigger"),
        ({"conditions": ["should_start", "should_end"]}, r"combine 2 guards"),
        ({"conditions": "is_ready"}, r"'is_ready' is not a declared guard"),
        ({"conditions": lambda *_: True}, r"callables are not supported"),
        ({"before": "on_launch"}, r"'on_launch' is not a declared hook"),
        ({"before": "on_initialize"}, r"'on_initialize' is a gate or event-less hook"),
    ],
)
def test_inconsistent_rows_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(DeclarationError, match=message):
        compile_variant(transitions=with_row(0, **changes))


def test_a_row_without_dest_is_refused() -> None:
    rows = [dict(row) for row in LIFECYCLE.transitions]
    del rows[0]["dest"]
    with pytest.raises(DeclarationError, match=r"transitions\[0\].dest: missing"):
        compile_variant(transitions=tuple(rows))


def test_a_guarded_row_without_its_negation_is_refused() -> None:
    index = row_index("initialized", "batch_start", "unless")
    with pytest.raises(DeclarationError, match="some guard outcome has no row"):
        compile_variant(transitions=without_row(index))


def test_two_rows_on_different_guards_are_refused() -> None:
    index = row_index("initialized", "batch_start", "unless")
    with pytest.raises(DeclarationError, match="not one guard and its negation"):
        compile_variant(transitions=with_row(index, unless="should_end"))


def test_three_rows_in_a_cell_are_refused() -> None:
    extra = dict(LIFECYCLE.transitions[row_index("started", "batch_start")])
    with pytest.raises(DeclarationError, match=r"has 3 rows; the compiler supports 1 or 2"):
        compile_variant(transitions=(*LIFECYCLE.transitions, extra, extra))


def test_a_cell_with_neither_rows_nor_rejection_is_refused() -> None:
    index = row_index("ended", "other_event")
    with pytest.raises(DeclarationError, match=r"cell \(ended, other_event\): has neither rows"):
        compile_variant(transitions=without_row(index))


def test_a_cell_with_rows_and_a_rejection_is_refused() -> None:
    overlap = Rejection("R9", ("ended",), ("other_event",), "x", "y")
    with pytest.raises(DeclarationError, match=r"\(ended, other_event\) is already covered"):
        compile_variant(rejections=(*LIFECYCLE.rejections, overlap))


def test_a_cell_covered_by_a_rejection_and_an_ignore_rule_is_refused() -> None:
    rejected = next(r for r in LIFECYCLE.rejections if r.rule == "R5")
    twice = Ignored(rejected.states[:1], ("finalize",), "tolerated")
    with pytest.raises(DeclarationError, match=r"ignored\[0\]: .*is already covered") as caught:
        compile_variant(ignored=(twice,))
    assert caught.value.where == "ignored[0]"


def test_a_declaration_that_routes_no_trigger_for_some_event_type_is_refused() -> None:
    routed = {k: v for k, v in LIFECYCLE.event_triggers.items()
              if k not in (EventType.OPTIM_PRE_STEP, EventType.OPTIM_POST_STEP)}  # fmt: skip
    pattern = r"EventType OPTIM_PRE_STEP, OPTIM_POST_STEP are routed to no trigger"
    with pytest.raises(DeclarationError, match=pattern) as caught:
        compile_variant(event_triggers=routed)
    assert caught.value.where == "event_triggers"
    assert "To fix, route every EventType member to a trigger" in str(caught.value)
    unrouted = attrs.evolve(LIFECYCLE, name=next(_names), event_triggers=routed)
    with pytest.raises(DeclarationError, match=pattern):  # refused when the class is defined

        class Partial(Modifier):
            __lifecycle__ = unrouted

            def on_initialize(self, state: State, **kwargs: Any) -> bool:
                return True


def test_vocabulary_errors_are_refused() -> None:
    with pytest.raises(DeclarationError, match=r"'created' is declared twice"):
        compile_variant(states=(*LIFECYCLE.states, LIFECYCLE.states[0]))
    with pytest.raises(DeclarationError, match=r"initial: 'nowhere' is not a declared state"):
        compile_variant(initial="nowhere")
    with pytest.raises(DeclarationError, match=r"give every state a value for every declared flag"):
        compile_variant(
            states=(StateSpec("created", {"initialized": False}), *LIFECYCLE.states[1:])
        )
    with pytest.raises(DeclarationError, match=r"'on_boot' is not a declared hook"):
        compile_variant(triggers=(TriggerSpec("initialize", "initialize", "on_boot"),
                                  *LIFECYCLE.triggers[1:]))  # fmt: skip
    with pytest.raises(DeclarationError, match=r"'other' is not a declared trigger"):
        compile_variant(event_triggers={**LIFECYCLE.event_triggers, "extra": "other"})


def test_preludes_with_an_unsupported_calling_convention_are_refused() -> None:
    hooks = tuple(
        attrs.evolve(h, takes_event=True) if h.name == "on_initialize" else h
        for h in LIFECYCLE.hooks
    )
    with pytest.raises(
        DeclarationError, match=r"'on_initialize' has gate=True and takes_event=True"
    ):
        compile_variant(hooks=hooks)


def test_plans_are_the_declared_rows() -> None:
    plans = Modifier.__compiled_lifecycle__.plans
    assert plans[("initialized", "batch_start")] == Plan(
        "initialized", "batch_start", prelude="on_event", guard="should_start",
        when_true=Branch(("on_start", "on_update"), "started"), when_false=Branch((), None),
    )  # fmt: skip
    assert plans[("created", "initialize")].gate
    assert plans[("created", "batch_end")].rejection == next(
        r for r in LIFECYCLE.rejections if r.rule == "R3"
    )


def test_each_event_type_dispatches_to_its_trigger_cell() -> None:
    compiled = Modifier.__compiled_lifecycle__
    for table in compiled.states.values():
        for event_type, trigger in LIFECYCLE.event_triggers.items():
            assert table[event_type] is table.calls[trigger]


def test_compiled_states_are_shared_by_copies_and_restored_by_pickle() -> None:
    table = Modifier.__compiled_lifecycle__.states["started"]
    assert copy.copy(table) is table
    assert copy.deepcopy(table) is table
    assert pickle.loads(pickle.dumps(table)) is table
    assert repr(table) == "<state 'started' of 'modifier-lifecycle'>"


def test_a_modifier_can_declare_its_own_lifecycle() -> None:
    # A variant where other events never update inside the window.
    index = row_index("started", "other_event")
    custom = attrs.evolve(LIFECYCLE, name=next(_names), transitions=with_row(index, before=[]))
    calls: list[str] = []

    class Quiet(Modifier):
        __lifecycle__ = custom

        def on_initialize(self, state: State, **kwargs: Any) -> bool:
            return True

        def on_update(self, state: State, event: Any, **kwargs: Any) -> None:
            calls.append(event.type_.value)

    from engine import Event, EventType

    mod = Quiet(start=0)
    mod.initialize(State())
    mod.update_event(State(), Event(EventType.LOSS_CALCULATED))
    mod.update_event(State(), Event(EventType.BATCH_START))
    assert calls == ["batch_start"]
    assert Quiet.__compiled_lifecycle__.declaration is custom


def test_a_minimal_machine_with_a_plain_prelude_free_trigger_compiles() -> None:
    toggle = Declaration(
        name=next(_names),
        flags=("on",),
        states=(StateSpec("off", {"on": False}), StateSpec("on", {"on": True})),
        initial="off",
        guards=(),
        hooks=(HookSpec("flip"),),
        triggers=(TriggerSpec("press", "press"),),
        event_triggers={},
        transitions=(
            {"trigger": "press", "source": "off", "dest": "on", "before": "flip"},
            {"trigger": "press", "source": "on", "dest": "off", "before": "flip"},
        ),
        rejections=(),
    )
    compiled = compile_machine(toggle, state_attr="state")
    flips: list[str] = []

    class Switch:
        state = compiled.initial

        def flip(self, state: Any, event: Any) -> None:
            flips.append(self.state.name)

    switch = Switch()
    switch.state.calls["press"](switch, None, None, {})
    switch.state.calls["press"](switch, None, None, {})
    assert flips == ["off", "on"]
    assert switch.state.name == "off"
