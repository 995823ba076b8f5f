"""Modifier: the lifecycle paths, rejections, deviations, fields and subclassing."""

from __future__ import annotations

import copy
import pickle
from typing import Any
from unittest import mock

import attrs
import pytest

from modfsm.engine import (
    ConfigError,
    ConfigTypeError,
    DeclarationError,
    Event,
    EventType,
    HookReturnError,
    IllegalTransitionError,
    LifecycleError,
    LifecycleState,
    Modifier,
    ModifierInterface,
    State,
)
from specs.reference import HookFailure, LogEntry, ReferenceModifier
from tests.doubles import (
    FINALIZE,
    INITIALIZE,
    STATE,
    Call,
    NoopModifier,
    RecordingModifier,
    apply,
    flags_of,
    update,
)

S = LifecycleState


def step(modifier: Modifier, index: int, *types: EventType) -> None:
    for type_ in types:
        modifier.update_event(STATE, Event(type_, global_step=index))


def hooks(modifier: RecordingModifier) -> list[tuple[str, float | None]]:
    """The hook calls (guards left out) as (name, index)."""
    return [(e.name, e.current_index) for e in modifier.log if e.name.startswith("on_")]


BS, BE, LOSS = EventType.BATCH_START, EventType.BATCH_END, EventType.LOSS_CALCULATED


def test_window_opens_at_start_and_closes_at_end() -> None:
    mod = RecordingModifier(start=1, end=3)
    mod.initialize(STATE)
    states = []
    for i in range(5):
        step(mod, i, BS, BE)
        states.append(mod.lifecycle_state)
    assert states == [S.INITIALIZED, S.STARTED, S.STARTED, S.ENDED, S.ENDED]
    assert hooks(mod) == [
        ("on_initialize", None),
        ("on_event", 0), ("on_event", 0),
        ("on_event", 1), ("on_start", 1), ("on_update", 1), ("on_event", 1), ("on_update", 1),
        ("on_event", 2), ("on_update", 2), ("on_event", 2), ("on_update", 2),
        ("on_event", 3), ("on_update", 3), ("on_event", 3), ("on_end", 3), ("on_update", 3),
        ("on_event", 4), ("on_event", 4),
    ]  # fmt: skip


@pytest.mark.parametrize("start", [-1, 0, 0.0])
def test_one_shot_start_opens_the_window_at_initialize_without_an_update(start: float) -> None:
    mod = RecordingModifier(start=start)
    mod.initialize(STATE)
    assert mod.lifecycle_state is S.STARTED
    assert hooks(mod) == [("on_initialize", None), ("on_start", 0)]


def test_batch_end_past_end_ends_a_modifier_that_never_started() -> None:
    mod = RecordingModifier(start=None, end=2)
    mod.initialize(STATE)
    step(mod, 1, BS, BE)
    assert mod.lifecycle_state is S.INITIALIZED
    step(mod, 2, BS, BE)
    assert mod.lifecycle_state is S.ENDED_UNSTARTED
    assert (mod.started, mod.ended) == (False, True)
    assert hooks(mod)[-2:] == [("on_end", 2), ("on_update", 2)]


def test_start_equal_to_end_never_opens_and_ends_at_end() -> None:
    mod = RecordingModifier(start=2, end=2)
    mod.initialize(STATE)
    step(mod, 2, BS, BE)
    assert mod.lifecycle_state is S.ENDED_UNSTARTED
    assert "on_start" not in [name for name, _ in hooks(mod)]


def test_steps_may_go_backwards_and_still_start_after_ending_unstarted() -> None:
    mod = RecordingModifier(start=1, end=3)
    mod.initialize(STATE)
    step(mod, 5, BE)
    assert mod.lifecycle_state is S.ENDED_UNSTARTED
    step(mod, 2, BS)
    assert mod.lifecycle_state is S.ENDED
    assert hooks(mod)[-2:] == [("on_start", 2), ("on_update", 2)]
    step(mod, 2, LOSS, BS, BE)
    assert hooks(mod)[-3:] == [("on_event", 2)] * 3


def test_other_events_update_only_inside_the_window() -> None:
    mod = RecordingModifier(start=1, end=2)
    mod.initialize(STATE)
    step(mod, 0, LOSS)
    step(mod, 1, BS, LOSS)
    step(mod, 2, BE, LOSS)
    updates = [index for name, index in hooks(mod) if name == "on_update"]
    assert updates == [1, 1, 2]


def test_keyword_arguments_reach_the_hooks() -> None:
    seen: list[dict[str, Any]] = []

    @attrs.define
    class KwargsModifier(Modifier):
        def on_initialize(self, state: State, **kwargs: Any) -> bool:
            seen.append(kwargs)
            return True

        def on_update(self, state: State, event: Event, **kwargs: Any) -> None:
            seen.append(kwargs)

    mod = KwargsModifier(start=0)
    mod.initialize(STATE, calib="data")
    mod.update_event(STATE, Event(BS), note=1)
    assert seen == [{"calib": "data"}, {"note": 1}]


# --- the six rejection rules ------------------------------------------------------------


def path_to(state: LifecycleState) -> list[Call]:
    """The public calls that lead a modifier with ``start=1, end=3`` into ``state``."""
    events: dict[str, list[Call]] = {
        "created": [],
        "initialized": [],
        "started": [update(BS, 1)],
        "ended": [update(BS, 1), update(BE, 3)],
        "ended_unstarted": [update(BE, 3)],
    }
    live = state.value.removeprefix("finalized_")
    calls = ([] if live == "created" else [INITIALIZE]) + events[live]
    return calls + ([FINALIZE] if state.value.startswith("finalized_") else [])


def make_in(state: LifecycleState) -> RecordingModifier:
    """A modifier driven into ``state`` through the public API."""
    mod = RecordingModifier(start=1, end=3)
    for call in path_to(state):
        assert apply(mod, call).error is None
    assert mod.lifecycle_state is state
    mod.log.clear()
    return mod


LIVE = [S.INITIALIZED, S.STARTED, S.ENDED, S.ENDED_UNSTARTED]
FINAL = [S.FINALIZED_INITIALIZED, S.FINALIZED_STARTED, S.FINALIZED_ENDED,
         S.FINALIZED_ENDED_UNSTARTED]  # fmt: skip

RULES = (
    [("R1", s, "initialize") for s in LIVE]
    + [("R2", s, "initialize") for s in FINAL]
    + [("R3", S.CREATED, t) for t in ("batch_start", "batch_end", "other_event")]
    + [("R4", s, "batch_start") for s in FINAL]
    + [("R5", s, "finalize") for s in FINAL]
    + [("R6", S.CREATED, "finalize")]
)
TRIGGER_CALLS = {
    "initialize": lambda m: m.initialize(STATE),
    "finalize": lambda m: m.finalize(STATE),
    "batch_start": lambda m: m.update_event(STATE, Event(BS)),
    "batch_end": lambda m: m.update_event(STATE, Event(BE)),
    "other_event": lambda m: m.update_event(STATE, Event(LOSS)),
}


@pytest.mark.parametrize(("rule", "state", "trigger"), RULES)
def test_illegal_call_raises_a_runtime_error_and_changes_nothing(
    rule: str, state: LifecycleState, trigger: str
) -> None:
    mod = make_in(state)
    with pytest.raises(IllegalTransitionError) as caught:
        TRIGGER_CALLS[trigger](mod)
    error = caught.value
    assert isinstance(error, RuntimeError)
    assert isinstance(error, LifecycleError)
    assert (error.modifier, error.state, error.trigger, error.rule) == (
        mod,
        state.value,
        trigger,
        rule,
    )
    assert mod.lifecycle_state is state
    assert mod.log == []
    message = str(error)
    assert "RecordingModifier(group=None, index=None)" in message
    assert f"it is {state.value!r}" in message
    assert "To fix," in message


def test_rejection_messages_say_what_is_allowed_instead() -> None:
    with pytest.raises(IllegalTransitionError, match=r"Allowed from 'created': initialize\."):
        make_in(S.CREATED).update_event(STATE, Event(LOSS))
    with pytest.raises(IllegalTransitionError) as caught:
        make_in(S.STARTED).initialize(STATE)
    assert caught.value.allowed == ("update_event", "finalize")
    with pytest.raises(IllegalTransitionError, match=r"update_event\(BATCH_END\) is not allowed"):
        make_in(S.FINALIZED_STARTED).update_event(STATE, Event(BE))
    with pytest.raises(IllegalTransitionError, match=r"accepts no further calls"):
        make_in(S.FINALIZED_ENDED).finalize(STATE)


# --- deviations from the reference (specs/lifecycle.md) ---------------------------------


def test_on_initialize_false_stays_created_and_does_not_start() -> None:
    mod = RecordingModifier(start=0, returns={"on_initialize": False})
    mod.initialize(STATE)
    assert mod.lifecycle_state is S.CREATED
    assert [e.name for e in mod.log] == ["on_initialize"]
    mod.returns.clear()
    mod.initialize(STATE)
    assert mod.lifecycle_state is S.STARTED


@pytest.mark.parametrize("value", [None, 1, "yes", 0])
def test_on_initialize_returning_a_non_bool_is_a_clear_error(value: object) -> None:
    mod = RecordingModifier(start=0, returns={"on_initialize": value})
    pattern = r"RecordingModifier\.on_initialize returned"
    with pytest.raises(HookReturnError, match=pattern) as caught:
        mod.initialize(STATE)
    assert isinstance(caught.value, TypeError)
    assert (caught.value.hook, caught.value.value) == ("on_initialize", value)
    assert "return True" in str(caught.value)
    assert mod.lifecycle_state is S.CREATED


def test_on_finalize_false_keeps_the_modifier_updatable_and_finalizable() -> None:
    mod = make_in(S.STARTED)
    mod.returns["on_finalize"] = False
    mod.finalize(STATE)
    assert mod.lifecycle_state is S.STARTED
    mod.update_event(STATE, Event(LOSS, global_step=1))
    mod.returns["on_finalize"] = True
    mod.finalize(STATE)
    assert mod.lifecycle_state is S.FINALIZED_STARTED


def test_on_finalize_returning_none_is_a_clear_error() -> None:
    mod = make_in(S.ENDED)
    mod.returns["on_finalize"] = None
    with pytest.raises(HookReturnError, match=r"on_finalize returned None"):
        mod.finalize(STATE)
    assert mod.lifecycle_state is S.ENDED


def test_a_raising_hook_propagates_and_the_transition_does_not_commit() -> None:
    mod = make_in(S.INITIALIZED)
    mod.fail["on_update"] = 0
    with pytest.raises(HookFailure):
        step(mod, 1, BS)
    assert mod.lifecycle_state is S.INITIALIZED
    assert [e.name for e in mod.log] == ["on_event", "should_start", "on_start", "on_update"]
    step(mod, 1, BS)  # the next BATCH_START opens the window again, from the start
    assert mod.lifecycle_state is S.STARTED


def test_a_raising_on_start_during_initialize_leaves_the_modifier_created() -> None:
    mod = RecordingModifier(start=0, fail={"on_start": 0})
    with pytest.raises(HookFailure):
        mod.initialize(STATE)
    assert mod.lifecycle_state is S.CREATED


def test_a_raising_guard_changes_nothing() -> None:
    mod = make_in(S.STARTED)
    mod.fail["should_end"] = 0
    with pytest.raises(HookFailure):
        step(mod, 9, BE)
    assert mod.lifecycle_state is S.STARTED


def test_a_lifecycle_call_from_inside_a_hook_sees_the_state_before_the_outer_call() -> None:
    seen: list[tuple[str, LifecycleState | str]] = []

    @attrs.define(eq=False)
    class Reentrant(Modifier):
        inner: str = ""

        def on_initialize(self, state: State, **kwargs: Any) -> bool:
            return True

        def on_start(self, state: State, event: Event, **kwargs: Any) -> None:
            seen.append(("on_start", self.lifecycle_state))
            if self.inner == "rejected":
                with pytest.raises(IllegalTransitionError, match=r"it is 'created'.*\[rule R3\]"):
                    self.update_event(state, Event(LOSS))
                with pytest.raises(IllegalTransitionError, match=r"it is 'created'.*\[rule R6\]"):
                    self.finalize(state)
            elif self.inner == "finalize":
                self.finalize(state)
                seen.append(("finalized inside on_start", self.lifecycle_state))

        def on_update(self, state: State, event: Event, **kwargs: Any) -> None:
            seen.append(("on_update", self.lifecycle_state))

    during_initialize = Reentrant(start=0, inner="rejected")
    during_initialize.initialize(STATE)  # inside on_start it is still 'created': R3, R6
    assert during_initialize.lifecycle_state is S.STARTED
    opening = Reentrant(start=1, inner="finalize")
    opening.initialize(STATE)
    seen.clear()
    step(opening, 1, BS)
    # The inner finalize commits at once; the outer call's commit then replaces it.
    assert seen == [("on_start", S.INITIALIZED),
                    ("finalized inside on_start", S.FINALIZED_INITIALIZED),
                    ("on_update", S.FINALIZED_INITIALIZED)]  # fmt: skip
    assert opening.lifecycle_state is S.STARTED


# --- fields -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"start": "1"}, ConfigTypeError, r"NoopModifier.start must be a number or None, got '1'"),
        ({"end": True}, ConfigTypeError, r"NoopModifier.end must be a number or None"),
        ({"start": float("nan")}, ConfigError, r"NoopModifier.start must be finite"),
        ({"end": float("inf")}, ConfigError, r"NoopModifier.end must be finite"),
        ({"update": -0.5}, ConfigError, r"NoopModifier.update must be >= 0"),
        ({"update": True}, ConfigTypeError, r"NoopModifier.update must be a number or None"),
        ({"update": "2"}, ConfigTypeError, r"NoopModifier.update must be a number or None"),
        ({"update": float("inf")}, ConfigError, r"NoopModifier.update must be finite"),
        ({"index": -1}, ConfigError, r"NoopModifier.index must be >= 0"),
        ({"index": 1.0}, ConfigTypeError, r"NoopModifier.index must be an int"),
        ({"group": 3}, ConfigTypeError, r"NoopModifier.group must be a str or None"),
    ],
)
def test_bad_fields_are_rejected_at_construction(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message) as caught:
        NoopModifier(**kwargs)
    assert "To fix," in str(caught.value)


def test_fields_are_validated_on_assignment_too() -> None:
    mod = NoopModifier(start=1)
    with pytest.raises(ConfigTypeError, match=r"NoopModifier\.start"):
        mod.start = "2"  # type: ignore[assignment]  # a wrong type on purpose
    assert mod.start == 1


def test_fields_are_keyword_only_and_default_to_none() -> None:
    mod = NoopModifier()
    assert (mod.index, mod.group, mod.start, mod.end, mod.update) == (None,) * 5
    with pytest.raises(TypeError):
        NoopModifier(1)  # type: ignore[call-arg]  # positional on purpose


# --- subclassing --------------------------------------------------------------------------


def test_modifier_is_abstract_until_on_initialize_is_defined() -> None:
    with pytest.raises(TypeError, match="abstract"):
        Modifier()  # type: ignore[abstract]  # instantiating the abstract base on purpose
    assert issubclass(Modifier, ModifierInterface)


def test_attrs_subclass_adds_fields_including_mandatory_ones() -> None:
    @attrs.define
    class Scaled(Modifier):
        factor: float
        label: str = "x"

        def on_initialize(self, state: State, **kwargs: Any) -> bool:
            return True

    mod = Scaled(2.0, start=0, group="g")
    assert (mod.factor, mod.label, mod.start, mod.group) == (2.0, "x", 0, "g")
    mod.initialize(STATE)
    assert mod.started


def test_undecorated_subclass_works() -> None:
    class Plain(Modifier):
        def on_initialize(self, state: State, **kwargs: Any) -> bool:
            return True

    mod = Plain(start=1)
    mod.initialize(STATE)
    mod.update_event(STATE, Event(BS, global_step=1))
    assert mod.lifecycle_state is S.STARTED


def test_hooks_patched_on_an_instance_are_called() -> None:
    class Plain(Modifier):
        def on_initialize(self, state: State, **kwargs: Any) -> bool:
            return True

    mod = Plain(start=0)
    mod.initialize(STATE)
    with mock.patch.object(mod, "on_update") as on_update:
        mod.update_event(STATE, Event(LOSS))
    on_update.assert_called_once()


def test_a_subclass_whose_hook_is_not_callable_is_rejected_when_defined() -> None:
    with pytest.raises(DeclarationError, match=r"Broken.on_start is not callable"):

        class Broken(Modifier):
            on_start = 3  # type: ignore[assignment]  # the mistake under test

            def on_initialize(self, state: State, **kwargs: Any) -> bool:
                return True


def test_update_event_with_something_other_than_an_event_is_a_clear_error() -> None:
    mod = make_in(S.STARTED)
    with pytest.raises(ConfigTypeError, match=r"update_event needs an Event"):
        mod.update_event(STATE, EventType.BATCH_START)  # type: ignore[arg-type]  # on purpose
    assert mod.log == []


# --- identity, copies, pickling -------------------------------------------------------------


def test_modifiers_compare_by_identity_unless_a_subclass_asks_attrs_for_eq() -> None:
    class Plain(Modifier):
        def on_initialize(self, state: State, **kwargs: Any) -> bool:
            return True

    a, b = Plain(start=1), Plain(start=1)
    assert a != b
    assert len({a, b}) == 2
    # @attrs.define defaults to eq=True: value equality, as attrs documents.
    assert NoopModifier(start=1) == NoopModifier(start=1)


def test_copies_keep_the_lifecycle_state_independently() -> None:
    mod = make_in(S.STARTED)
    twin = copy.deepcopy(mod)
    shallow = copy.copy(mod)
    assert twin.lifecycle_state is S.STARTED
    assert shallow.lifecycle_state is S.STARTED
    twin.finalize(STATE)
    assert twin.lifecycle_state is S.FINALIZED_STARTED
    assert mod.lifecycle_state is S.STARTED


def test_pickle_round_trip_keeps_the_lifecycle_state() -> None:
    mod = NoopModifier(start=1, end=4, group="g", index=2)
    mod.initialize(State())
    mod.update_event(State(), Event(BS, global_step=1))
    restored = pickle.loads(pickle.dumps(mod))
    assert restored.lifecycle_state is S.STARTED
    assert (restored.start, restored.end, restored.group, restored.index) == (1, 4, "g", 2)
    restored.update_event(State(), Event(BE, global_step=4))
    assert restored.lifecycle_state is S.ENDED


@pytest.mark.parametrize("state", list(LifecycleState))
def test_each_state_shows_the_flags_the_reference_has_after_the_same_calls(
    state: LifecycleState,
) -> None:
    mod, reference = RecordingModifier(start=1, end=3), ReferenceModifier(start=1, end=3)
    for call in path_to(state):
        assert apply(mod, call) == apply(reference, call)
    assert mod.lifecycle_state is state
    assert flags_of(mod) == reference.flags()


@pytest.mark.parametrize("flag", ["initialized", "started", "ended", "finalized",
                                  "lifecycle_state"])  # fmt: skip
def test_lifecycle_flags_are_read_only(flag: str) -> None:
    mod = make_in(S.STARTED)
    with pytest.raises(AttributeError):
        setattr(mod, flag, False)
    assert mod.lifecycle_state is S.STARTED


def test_log_entries_carry_the_event_type() -> None:
    mod = make_in(S.STARTED)
    step(mod, 2, LOSS)
    assert mod.log == [LogEntry("on_event", "loss_calculated", 2),
                       LogEntry("on_update", "loss_calculated", 2)]  # fmt: skip


# --- what the errors carry (pinned whole: they name the thing, the value and the fix) -----


def test_a_hook_the_lifecycle_names_but_the_class_lacks_is_a_declaration_error() -> None:
    from modfsm.engine.kernel.compiler import HookSpec
    from modfsm.engine.model.lifecycle import LIFECYCLE

    missing = attrs.evolve(
        LIFECYCLE, name="lacking-lifecycle", hooks=(*LIFECYCLE.hooks, HookSpec("on_missing"))
    )
    with pytest.raises(DeclarationError) as caught:

        class Lacking(Modifier):
            __lifecycle__ = missing

            def on_initialize(self, state: State, **kwargs: Any) -> bool:
                return True

    assert str(caught.value) == (
        "Lacking.on_missing is not callable, but the lifecycle 'lacking-lifecycle' calls "
        "it. To fix, define on_missing as a method."
    )
    assert caught.value.declaration == "lacking-lifecycle"
    assert caught.value.where == "on_missing"


def test_the_default_load_state_dict_refuses_a_state_naming_the_class_and_the_fix() -> None:
    mod = NoopModifier()
    with pytest.raises(ConfigError) as caught:
        mod.load_state_dict({"mask": 1, "a": 2}, STATE)
    assert str(caught.value) == (
        "NoopModifier.load_state_dict got ['a', 'mask'], but the class does not override "
        "load_state_dict. To fix, implement state_dict() and load_state_dict() together."
    )
    error = caught.value
    assert (error.owner, error.field, error.value) == (
        "NoopModifier",
        "state_dict",
        {"mask": 1, "a": 2},
    )
    mod.load_state_dict({}, STATE)  # an empty state is what state_dict() returned


def test_update_event_with_a_non_event_names_the_modifier_and_the_value() -> None:
    mod = make_in(S.STARTED)
    with pytest.raises(ConfigTypeError) as caught:
        mod.update_event(STATE, "BATCH_START")  # type: ignore[arg-type]  # on purpose
    assert str(caught.value).startswith(
        f"{mod.lifecycle_label}.update_event needs an Event with an EventType type_, got "
        "'BATCH_START'. Known types: "
    )
    assert (caught.value.owner, caught.value.field, caught.value.value) == (
        type(mod).__name__,
        "event",
        "BATCH_START",
    )


def test_finalize_hands_the_state_to_on_finalize() -> None:
    seen: list[State] = []

    class Keeps(Modifier):
        def on_initialize(self, state: State, **kwargs: Any) -> bool:
            return True

        def on_finalize(self, state: State, **kwargs: Any) -> bool:
            seen.append(state)
            return True

    state = State()
    mod = Keeps()
    mod.initialize(state)
    mod.finalize(state)
    assert seen == [state]
    assert seen[0] is state
