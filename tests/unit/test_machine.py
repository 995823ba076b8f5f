"""The declaration compiler: what it refuses, and the tables it builds."""

from __future__ import annotations

import copy
import itertools
import pickle
from typing import Any

import attrs
import pytest

from modfsm.engine import LIFECYCLE, DeclarationError, EventType, HookReturnError, State
from modfsm.engine.kernel.compiler import (
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
from modfsm.engine.model.lifecycle import LifecycleState
from modfsm.engine.runtime.modifier import Modifier

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
    import modfsm.engine.kernel.compiler
    import modfsm.engine.kernel.declaration

    for name in modfsm.engine.kernel.declaration.__all__:
        declared = getattr(modfsm.engine.kernel.declaration, name)
        assert getattr(modfsm.engine.kernel.compiler, name) is declared
        assert name in modfsm.engine.kernel.compiler.__all__


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
        ({"dest": "="}, r"reflexive dest, is not supported"),
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

    from modfsm.engine import Event, EventType

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
    switch.state.calls["press"](switch, None, None)
    switch.state.calls["press"](switch, None, None)
    assert flips == ["off", "on"]
    assert switch.state.name == "off"


def test_restoring_a_state_of_a_machine_not_compiled_here_names_it_and_the_fix() -> None:
    from modfsm.engine.kernel.compiler import _restore_state

    with pytest.raises(DeclarationError) as caught:
        _restore_state("no-such-machine", "started")
    error = caught.value
    assert str(error) == (
        "cannot restore state 'started' of machine 'no-such-machine': no such machine or "
        "state is compiled in this process. To fix, import the module that declares it first."
    )
    assert (error.declaration, error.where, error.__cause__) == ("no-such-machine", "states", None)
    assert error.__suppress_context__
    with pytest.raises(DeclarationError, match=r"cannot restore state 'limbo'"):
        _restore_state("modifier-lifecycle", "limbo")


_ROWS_KEYS = "['before', 'conditions', 'dest', 'source', 'trigger', 'unless']"
_STARTED_BATCH_START = LIFECYCLE.transitions[row_index("started", "batch_start")]


def _refusal(name: str = "bad", **changes: Any) -> DeclarationError:
    """The error compiling LIFECYCLE with ``changes`` raises, under ``name``."""
    with pytest.raises(DeclarationError) as caught:
        compile_machine(attrs.evolve(LIFECYCLE, name=name, **changes), state_attr="_lc")
    assert caught.value.declaration == name
    return caught.value


@pytest.mark.parametrize(
    ("changes", "where", "message"),
    [
        (lambda: {"transitions": with_row(0, after="on_update")}, "transitions[0].after",
         "the compiler does not support 'after' (hooks after the state change would leave the "
         f"state changed when they raise; list them in 'before'). To fix, use only {_ROWS_KEYS}."),
        (lambda: {"transitions": with_row(0, prepare="on_update")}, "transitions[0].prepare",
         "the compiler does not support 'prepare' (per-row prepare callbacks; declare a trigger "
         f"prelude instead). To fix, use only {_ROWS_KEYS}."),
        (lambda: {"transitions": with_row(0, on_exception="on_update")},
         "transitions[0].on_exception",
         "the compiler does not support 'on_exception' (exception callbacks; hooks' exceptions "
         f"always propagate). To fix, use only {_ROWS_KEYS}."),
        (lambda: {"transitions": with_row(0, timeout=3)}, "transitions[0].timeout",
         "the compiler does not support 'timeout' (not part of the supported row format). "
         f"To fix, use only {_ROWS_KEYS}."),
        (lambda: {"transitions": (["x"], *LIFECYCLE.transitions[1:])}, "transitions[0]",
         "expected a dict, got list. To fix, write rows as dicts."),
        (lambda: {"transitions": with_row(0, source="*")}, "transitions[0].source",
         "wildcard '*' is not supported. To fix, list the source states explicitly."),
        (lambda: {"transitions": with_row(0, source="=")}, "transitions[0].source",
         "wildcard '=' is not supported. To fix, list the source states explicitly."),
        (lambda: {"transitions": with_row(0, source=[])}, "transitions[0].source",
         "no source state. To fix, name the source state(s)."),
        (lambda: {"transitions": with_row(0, source="limbo")}, "transitions[0].source",
         "'limbo' is not a declared state. To fix, name a declared state."),
        (lambda: {"transitions": with_row(0, dest="=")}, "transitions[0].dest",
         "'=' is not a declared state ('=', transitions' reflexive dest, is not supported). "
         "To fix, name a declared state, or None to stay."),
        (lambda: {"transitions": with_row(0, dest="limbo")}, "transitions[0].dest",
         "'limbo' is not a declared state. To fix, name a declared state, or None to stay."),
        (lambda: {"transitions": with_row(0, dest=3)}, "transitions[0].dest",
         "3 is not a declared state. To fix, name a declared state, or None to stay."),
        (lambda: {"transitions": with_row(0, trigger="explode")}, "transitions[0].trigger",
         "'explode' is not a declared trigger. To fix, declare it in triggers."),
        (lambda: {"transitions": with_row(0, conditions=["should_start", "should_end"])},
         "transitions[0]",
         "guards [('should_start', True), ('should_end', True)] combine 2 guards. To fix, use "
         "at most one guard per row (split the state instead)."),
        (lambda: {"transitions": with_row(0, conditions="is_ready")}, "transitions[0]",
         "'is_ready' is not a declared guard. To fix, declare it in guards."),
        (lambda: {"transitions": with_row(0, unless="is_ready", conditions=[])}, "transitions[0]",
         "'is_ready' is not a declared guard. To fix, declare it in guards."),
        (lambda: {"transitions": with_row(0, conditions=5)}, "transitions[0].conditions",
         "expected a name or a list of names, got 5. To fix, refer to guards and hooks by their "
         "method names (callables are not supported)."),
        (lambda: {"transitions": with_row(0, source=5)}, "transitions[0].source",
         "expected a name or a list of names, got 5. To fix, refer to guards and hooks by their "
         "method names (callables are not supported)."),
        (lambda: {"transitions": with_row(0, unless=5)}, "transitions[0].unless",
         "expected a name or a list of names, got 5. To fix, refer to guards and hooks by their "
         "method names (callables are not supported)."),
        (lambda: {"transitions": with_row(0, before=["on_start", 5])}, "transitions[0].before",
         "expected a name or a list of names, got ['on_start', 5]. To fix, refer to guards and "
         "hooks by their method names (callables are not supported)."),
        (lambda: {"transitions": with_row(0, before="on_launch")}, "transitions[0].before",
         "'on_launch' is not a declared hook. To fix, declare it in hooks."),
        (lambda: {"transitions": with_row(0, before="on_initialize")}, "transitions[0].before",
         "'on_initialize' is a gate or event-less hook. To fix, call gate hooks only as trigger "
         "preludes."),
        (lambda: {"hooks": (*LIFECYCLE.hooks, HookSpec("on_boot", takes_event=False)),
                  "transitions": with_row(0, before="on_boot")},
         "transitions[0].before",
         "'on_boot' is a gate or event-less hook. To fix, call gate hooks only as trigger "
         "preludes."),
        (lambda: {"transitions": without_row(row_index("initialized", "batch_start", "unless"))},
         "transitions[2]",
         "cell (initialized, batch_start) has one guarded row, so some guard outcome has no row. "
         "To fix, add the row for the opposite guard outcome."),
        (lambda: {"transitions": with_row(row_index("initialized", "batch_start", "unless"),
                                          unless="should_end")},
         "transitions[3]",
         "cell (initialized, batch_start) rows guarded by ('should_start', True) and "
         "('should_end', False) are not one guard and its negation. To fix, guard two rows of a "
         "cell by the same guard, one with conditions and one with unless."),
        (lambda: {"transitions": (*LIFECYCLE.transitions, *[_STARTED_BATCH_START] * 2)},
         "cell (started, batch_start)",
         "has 3 rows; the compiler supports 1 or 2. To fix, split the state so each cell needs "
         "at most one guard."),
        (lambda: {"transitions": without_row(row_index("ended", "other_event"))},
         "cell (ended, other_event)",
         "has neither rows nor a rejection. To fix, declare what the trigger does in this state, "
         "reject it or ignore it."),
        (lambda: {"rejections": (*LIFECYCLE.rejections,
                                 Rejection("R9", ("ended",), ("other_event",), "x", "y"))},
         "rejections[R9]",
         "(ended, other_event) is already covered. To fix, cover each (state, trigger) by rows, "
         "one rejection or one ignore rule."),
        (lambda: {"rejections": (*LIFECYCLE.rejections,
                                 Rejection("R9", ("limbo",), ("other_event",), "x", "y"))},
         "rejections[R9]",
         "('limbo', 'other_event') is not a declared cell. To fix, name declared states and "
         "triggers."),
        (lambda: {"ignored": (Ignored(("ended",), ("explode",), "x"),)}, "ignored[0]",
         "('ended', 'explode') is not a declared cell. To fix, name declared states and "
         "triggers."),
        (lambda: {"states": (*LIFECYCLE.states, LIFECYCLE.states[0])}, "states",
         "'created' is declared twice. To fix, declare each name once."),
        (lambda: {"flags": ("initialized", "initialized")}, "flags",
         "'initialized' is declared twice. To fix, declare each name once."),
        (lambda: {"guards": ("not valid",)}, "guards",
         "'not valid' is not a valid identifier. To fix, use a method-like name."),
        (lambda: {"hooks": (*LIFECYCLE.hooks, LIFECYCLE.hooks[0])}, "hooks",
         "'on_initialize' is declared twice. To fix, declare each name once."),
        (lambda: {"triggers": (*LIFECYCLE.triggers, LIFECYCLE.triggers[0])}, "triggers",
         "'initialize' is declared twice. To fix, declare each name once."),
        (lambda: {"initial": "nowhere"}, "initial",
         "'nowhere' is not a declared state. To fix, name a state."),
        (lambda: {"states": (StateSpec("created", {"initialized": False}),
                             *LIFECYCLE.states[1:])},
         "states[created].flags",
         "defines ['initialized'], expected ['ended', 'finalized', 'initialized', 'started']. "
         "To fix, give every state a value for every declared flag."),
        (lambda: {"triggers": (TriggerSpec("initialize", "initialize", "on_boot"),
                               *LIFECYCLE.triggers[1:])},
         "triggers[initialize].prelude",
         "'on_boot' is not a declared hook. To fix, declare it in hooks."),
        (lambda: {"triggers": (TriggerSpec("initialize", "initialize", None),
                               *LIFECYCLE.triggers[1:-1],
                               TriggerSpec("finalize", "finalize", "on_boot"))},
         "triggers[finalize].prelude",  # checked after a trigger without a prelude
         "'on_boot' is not a declared hook. To fix, declare it in hooks."),
        (lambda: {"hooks": (*LIFECYCLE.hooks, HookSpec("on_boot", takes_event=False)),
                  "triggers": (TriggerSpec("initialize", "initialize", "on_boot"),
                               *LIFECYCLE.triggers[1:])},
         "triggers[initialize].prelude",
         "'on_boot' has gate=False and takes_event=False. To fix, use a gate prelude called as "
         "hook(state=state, **kwargs), or a notify prelude called as "
         "hook(state, event, **kwargs)."),
        (lambda: {"event_triggers": {**LIFECYCLE.event_triggers, "extra": "other"}},
         "event_triggers['extra']",
         "'other' is not a declared trigger. To fix, route each event to a declared trigger."),
        (lambda: {"event_triggers": {k: v for k, v in LIFECYCLE.event_triggers.items()
                                     if k is not EventType.OPTIM_PRE_STEP}},
         "event_triggers",
         "EventType OPTIM_PRE_STEP is routed to no trigger, so dispatching it would fail at run "
         "time. To fix, route every EventType member to a trigger (for example "
         "EventType.OPTIM_PRE_STEP to the trigger that handles other events; reject that "
         "trigger in the states where the event must not arrive)."),
        (lambda: {"event_triggers": {k: v for k, v in LIFECYCLE.event_triggers.items()
                                     if k not in (EventType.BATCH_START, EventType.BATCH_END)}},
         "event_triggers",
         "EventType BATCH_START, BATCH_END are routed to no trigger, so dispatching them would "
         "fail at run time. To fix, route every EventType member to a trigger (for example "
         "EventType.BATCH_START to the trigger that handles other events; reject that "
         "trigger in the states where the event must not arrive)."),
    ],
)  # fmt: skip
def test_every_refusal_names_the_declaration_the_place_and_the_fix_exactly(
    changes: Any, where: str, message: str
) -> None:
    name = next(_names)
    error = _refusal(name, **changes())
    assert (error.where, str(error)) == (where, f"declaration {name!r}, {where}: {message}")


def test_a_refused_declaration_leaves_its_name_free() -> None:
    from modfsm.engine.kernel.compiler import _COMPILED

    _refusal("refused-twice", initial="nowhere")
    _refusal("refused-twice", initial="nowhere")  # not "already compiled"
    assert "refused-twice" not in _COMPILED


def test_a_taken_name_error_names_the_declaration_and_the_fix() -> None:
    other = attrs.evolve(LIFECYCLE, rejections=LIFECYCLE.rejections[:-1])
    error = _refusal("modifier-lifecycle", rejections=other.rejections)
    assert (error.where, str(error)) == (
        "name",
        "another declaration named 'modifier-lifecycle' is already compiled. To fix, give each "
        "declaration a unique name (attrs.evolve(decl, name=...)).",
    )


def test_a_gate_returning_a_non_bool_names_the_class_the_hook_the_value_and_the_fix() -> None:
    from tests.doubles import RecordingModifier

    mod = RecordingModifier(returns={"on_finalize": "yes"})
    mod.initialize(State())
    with pytest.raises(HookReturnError) as caught:
        mod.finalize(State())
    error = caught.value
    assert str(error) == (
        "RecordingModifier.on_finalize returned 'yes', expected True or False; the state is "
        "unchanged. To fix, end on_finalize with 'return True' (or 'return False' to leave "
        "the lifecycle where it was)."
    )
    assert (error.modifier, error.hook, error.value) == (mod, "on_finalize", "yes")
    assert error.modifier is mod


def test_unrouted_members_are_reported_per_enum_in_name_order() -> None:
    import enum

    class Color(enum.Enum):
        RED = 1
        BLUE = 2

    routed = {**LIFECYCLE.event_triggers, Color.RED: "other_event"}
    error = _refusal(next(_names), event_triggers=routed)
    assert error.where == "event_triggers"
    assert "Color BLUE is routed to no trigger, so dispatching it would fail" in str(error)


def test_a_row_without_dest_is_refused_with_the_fix() -> None:
    rows = [dict(row) for row in LIFECYCLE.transitions]
    del rows[0]["dest"]
    name = next(_names)
    error = _refusal(name, transitions=tuple(rows))
    assert (error.where, str(error)) == (
        "transitions[0].dest",
        f"declaration {name!r}, transitions[0].dest: missing. To fix, give a state, or None to "
        "stay.",
    )


def test_every_plan_names_its_own_cell_rejected_and_ignored_ones_too() -> None:
    from modfsm.engine.runtime.stage import _COMPILED as STAGE

    for compiled in (Modifier.__compiled_lifecycle__, STAGE):
        kinds = {(p.rejection is not None, p.ignored is not None) for p in compiled.plans.values()}
        assert (True, False) in kinds
        hooks = {hook.name: hook for hook in compiled.declaration.hooks}
        for (state, trigger), plan in compiled.plans.items():
            assert (plan.state, plan.trigger) == (state, trigger)
            assert plan.gate is (plan.prelude is not None and hooks[plan.prelude].gate)
    assert any(plan.ignored is not None for plan in STAGE.plans.values())
    assert Modifier.__compiled_lifecycle__.plans[("started", "finalize")].gate is True  # one row


def test_a_rejection_names_the_call_the_state_what_is_allowed_and_the_fix() -> None:
    from modfsm.engine import Event, IllegalTransitionError
    from tests.doubles import RecordingModifier

    mod = RecordingModifier(start=0)
    mod.initialize(State())
    with pytest.raises(IllegalTransitionError) as again:
        mod.initialize(State())  # not routed: no event type in the call's name
    assert str(again.value) == (
        "initialize is not allowed on RecordingModifier(group=None, index=None): it is "
        "'started' (already initialized). Allowed from 'started': update_event, finalize. "
        "To fix, initialize each modifier once; build a new instance to run it again. [rule R1]"
    )
    assert Modifier.__compiled_lifecycle__.allowed["started"] == ("update_event", "finalize")
    mod.finalize(State())
    with pytest.raises(IllegalTransitionError) as late:
        mod.update_event(State(), Event(EventType.BATCH_END))  # routed: the type is named
    assert str(late.value).startswith(
        "update_event(BATCH_END) is not allowed on RecordingModifier(group=None, index=None): "
        "it is 'finalized_started' (already finalized). Allowed from 'finalized_started': "
        "nothing (it accepts no further calls). To fix,"
    )
    assert Modifier.__compiled_lifecycle__.allowed["finalized_started"] == ()


def test_a_rejecting_cell_does_not_need_an_event_with_a_type() -> None:
    from modfsm.engine import IllegalTransitionError

    compiled = compile_machine(
        Declaration(
            name=next(_names),
            flags=("on",),
            states=(StateSpec("off", {"on": False}), StateSpec("on", {"on": True})),
            initial="off",
            guards=(),
            hooks=(),
            triggers=(TriggerSpec("press", "press"), TriggerSpec("release", "release")),
            event_triggers={"press": "press", "release": "release"},
            transitions=(
                {"trigger": "press", "source": "off", "dest": "on"},
                {"trigger": "release", "source": "on", "dest": "off"},
            ),
            rejections=(
                Rejection("T1", ("on",), ("press",), "pressed", "release it."),
                Rejection("T2", ("off",), ("release",), "released", "press it."),
            ),
        ),
        state_attr="state",
    )
    with pytest.raises(IllegalTransitionError, match=r"^release is not allowed on object: it is "):
        compiled.initial.calls["release"](object(), None, None)


def test_hooks_after_a_gate_prelude_get_the_calls_keyword_arguments() -> None:
    seen: list[tuple[str, dict[str, Any]]] = []

    class Keen(Modifier):
        def on_initialize(self, state: State, **kwargs: Any) -> bool:
            seen.append(("on_initialize", kwargs))
            return True

        def on_start(self, state: State, event: Any, **kwargs: Any) -> None:
            seen.append(("on_start", kwargs))

    Keen(start=0).initialize(State(), marker=7)  # the gated initialize cell starts it
    assert seen == [("on_initialize", {"marker": 7}), ("on_start", {"marker": 7})]


def test_every_event_hook_gets_the_calls_state_and_keyword_arguments() -> None:
    from modfsm.engine import Event

    seen: list[tuple[str, bool, dict[str, Any]]] = []
    call_state = State()

    class Witness(Modifier):
        def on_initialize(self, state: State, **kwargs: Any) -> bool:
            return True

        def on_event(self, state: State, event: Any, **kwargs: Any) -> None:
            seen.append(("on_event", state is call_state, kwargs))

        def on_start(self, state: State, event: Any, **kwargs: Any) -> None:
            seen.append(("on_start", state is call_state, kwargs))

        def on_update(self, state: State, event: Any, **kwargs: Any) -> None:
            seen.append(("on_update", state is call_state, kwargs))

        def on_end(self, state: State, event: Any, **kwargs: Any) -> None:
            seen.append(("on_end", state is call_state, kwargs))

    mod = Witness(start=1, end=3)
    mod.initialize(call_state)
    mod.update_event(call_state, Event(EventType.BATCH_START, global_step=1), k=1)  # guarded cell
    mod.update_event(call_state, Event(EventType.LOSS_CALCULATED, global_step=1), k=2)  # unguarded
    mod.update_event(call_state, Event(EventType.BATCH_END, global_step=2), k=3)  # guard False
    mod.update_event(call_state, Event(EventType.BATCH_END, global_step=3), k=4)  # guard True
    assert seen == [
        ("on_event", True, {"k": 1}), ("on_start", True, {"k": 1}), ("on_update", True, {"k": 1}),
        ("on_event", True, {"k": 2}), ("on_update", True, {"k": 2}),
        ("on_event", True, {"k": 3}), ("on_update", True, {"k": 3}),
        ("on_event", True, {"k": 4}), ("on_end", True, {"k": 4}), ("on_update", True, {"k": 4}),
    ]  # fmt: skip


def test_a_guard_without_a_prelude_is_asked_about_the_calls_event() -> None:
    compiled = compile_machine(
        Declaration(
            name=next(_names),
            flags=("on",),
            states=(StateSpec("off", {"on": False}), StateSpec("on", {"on": True})),
            initial="off",
            guards=("ready",),
            hooks=(),
            triggers=(TriggerSpec("press", "press"),),
            event_triggers={},
            transitions=(
                {"trigger": "press", "source": "off", "dest": "on", "conditions": "ready"},
                {"trigger": "press", "source": "off", "dest": None, "unless": "ready"},
                {"trigger": "press", "source": "on", "dest": None},
            ),
            rejections=(),
        ),
        state_attr="state",
    )
    asked: list[Any] = []

    class Switch:
        state = compiled.initial

        def ready(self, event: Any) -> bool:
            asked.append(event)
            return bool(event == "go")

    switch = Switch()
    switch.state.calls["press"](switch, None, "wait")
    assert switch.state.name == "off"
    switch.state.calls["press"](switch, None, "go")
    assert (switch.state.name, asked) == ("on", ["wait", "go"])
