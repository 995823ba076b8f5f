"""StageModifiers: reference semantics, the declared stage lifecycle, failures and resume."""

from __future__ import annotations

import logging
from typing import Any

import attrs
import pytest

from modfsm.engine import (
    ConfigError,
    ConfigTypeError,
    Event,
    EventType,
    IllegalTransitionError,
    LifecycleState,
    State,
)
from modfsm.engine.model.stage_lifecycle import STAGE_LIFECYCLE
from modfsm.engine.runtime.stage import StageError, StageModifiers, StageState
from specs.reference import HookFailure
from tests.doubles import NoopModifier, RecordingModifier

STATE = State()
L = LifecycleState


class Barrier:
    def __init__(self) -> None:
        self.waits = 0

    def wait_for_everyone(self) -> None:
        self.waits += 1


def stage_of(*modifiers: RecordingModifier, group: str | None = "prune_stage") -> StageModifiers:
    return StageModifiers(list(modifiers), group=group, index=1)


def names(modifier: RecordingModifier) -> list[str]:
    return [entry.name for entry in modifier.log]


def test_the_stage_sets_each_modifiers_index_and_group() -> None:
    a, b = RecordingModifier(group="mine", index=7), RecordingModifier()
    stage = stage_of(a, b)
    assert [(m.group, m.index) for m in stage.modifiers] == [("prune_stage", 0), ("prune_stage", 1)]
    assert stage.unique_id == "prune_stage_1"
    ungrouped = StageModifiers([RecordingModifier(group="kept")])
    assert ungrouped.modifiers[0].group == "kept"


def test_initialize_update_finalize_follow_the_reference() -> None:
    a, b = RecordingModifier(start=0), RecordingModifier(start=1, end=2)
    stage = stage_of(a, b)
    assert (stage.stage_state, stage.initialized, stage.finalized) == ("pending", False, False)
    stage.initialize(STATE)
    assert stage.stage_state is StageState.INITIALIZED
    assert stage.initialized
    stage.update_event(STATE, Event(EventType.BATCH_START, global_step=1))
    assert (a.lifecycle_state, b.lifecycle_state) == (L.STARTED, L.STARTED)
    stage.finalize(STATE)
    assert (stage.stage_state, stage.applied, stage.finalized) == ("applied", True, True)


def test_initialize_skips_modifiers_already_initialized() -> None:
    a, b = RecordingModifier(), RecordingModifier()
    a.initialize(STATE)
    stage = stage_of(a, b)
    stage.initialize(STATE)
    assert names(a) == ["on_initialize", "should_start"]
    assert names(b) == ["on_initialize", "should_start"]
    stage.initialize(STATE)  # legal again, and a no-op for the modifiers
    assert len(a.log) == 2


def test_a_stage_of_initialized_modifiers_starts_initialized() -> None:
    a, b = RecordingModifier(start=0), RecordingModifier(start=1)
    a.initialize(STATE)
    b.initialize(STATE)
    stage = stage_of(a, b)
    assert stage.stage_state is StageState.INITIALIZED
    stage.update_event(STATE, Event(EventType.BATCH_START, global_step=1))  # not rule S1
    assert b.lifecycle_state is L.STARTED
    stage.finalize(STATE)  # not rule S3
    assert stage.applied
    assert (a.finalized, b.finalized) == (True, True)


def test_a_stage_of_partly_finalized_modifiers_starts_finalizing() -> None:
    a, b = RecordingModifier(), RecordingModifier()
    a.initialize(STATE)
    b.initialize(STATE)
    a.finalize(STATE)
    stage = stage_of(a, b)
    assert stage.stage_state is StageState.FINALIZING
    with pytest.raises(IllegalTransitionError, match=r"rule S2"):  # a is finalized
        stage.update_event(STATE, Event(EventType.BATCH_START))
    stage.finalize(STATE)  # resumes with b
    assert stage.applied
    assert names(a).count("on_finalize") == 1


def test_a_stage_starts_pending_unless_every_modifier_is_initialized() -> None:
    a, b = RecordingModifier(), RecordingModifier()
    a.initialize(STATE)
    assert stage_of(a, b).stage_state is StageState.PENDING
    assert StageModifiers([]).stage_state is StageState.PENDING  # an empty stage too


def test_applied_is_read_only() -> None:
    stage = stage_of(RecordingModifier())
    with pytest.raises(AttributeError):
        stage.applied = True  # type: ignore[misc]  # a read-only property, on purpose
    assert stage.stage_state is StageState.PENDING


def test_an_applied_stage_ignores_every_call() -> None:
    a = RecordingModifier(start=0)
    stage = stage_of(a)
    stage.initialize(STATE)
    stage.finalize(STATE)
    a.log.clear()
    stage.initialize(STATE)
    stage.update_event(STATE, Event(EventType.BATCH_END))
    stage.finalize(STATE)
    assert a.log == []
    assert StageModifiers([], applied=True).stage_state is StageState.APPLIED


def test_the_accelerator_barrier_follows_every_modifier_and_reaches_them() -> None:
    barrier = Barrier()
    a, b = RecordingModifier(), RecordingModifier()
    a.initialize(STATE)
    stage = stage_of(a, b)
    stage.initialize(STATE, accelerator=barrier)
    assert barrier.waits == 2  # the skipped modifier too, as in the reference
    stage.finalize(STATE, accelerator=barrier)
    assert barrier.waits == 4


def test_the_stage_logs_through_the_state(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="modfsm.system")
    stage = stage_of(RecordingModifier())
    stage.initialize(STATE)
    stage.finalize(STATE)
    assert [r.getMessage() for r in caplog.records] == [
        "[stage] Modifiers initialized", "[stage] Modifiers finalized",
    ]  # fmt: skip


def test_events_before_initialize_are_rejected_before_any_modifier_sees_them() -> None:
    a, b = RecordingModifier(), RecordingModifier()
    a.initialize(STATE)
    a.log.clear()
    stage = stage_of(a, b)
    with pytest.raises(IllegalTransitionError, match=r"it is 'pending'.*rule S1") as caught:
        stage.update_event(STATE, Event(EventType.BATCH_START))
    assert caught.value.modifier is stage
    assert a.log == []


def test_finalize_before_initialize_is_rejected() -> None:
    a = RecordingModifier()
    stage = stage_of(a)
    with pytest.raises(IllegalTransitionError, match=r"rule S3"):
        stage.finalize(STATE)
    assert (stage.stage_state, a.log) == ("pending", [])


def test_a_declining_modifier_stops_initialize_and_a_retry_resumes() -> None:
    a, b, c = RecordingModifier(), RecordingModifier(), RecordingModifier()
    b.returns["on_initialize"] = False
    stage = stage_of(a, b, c)
    with pytest.raises(StageError, match=r"index=1\)\.on_initialize returned False") as caught:
        stage.initialize(STATE)
    error = caught.value
    assert (error.action, error.done, error.failed, error.not_attempted) == (
        "initialize", (a,), b, (c,),
    )  # fmt: skip
    assert "not attempted: RecordingModifier(group='prune_stage', index=2)" in str(error)
    assert "stays 'pending'" in str(error)
    assert (stage.stage_state, c.log) == ("pending", [])
    b.returns.clear()
    stage.initialize(STATE)
    assert stage.stage_state is StageState.INITIALIZED
    assert names(a) == ["on_initialize", "should_start"]  # not initialized twice


def test_a_raising_modifier_keeps_its_exception_with_the_stage_account() -> None:
    a, b = RecordingModifier(), RecordingModifier(fail={"on_initialize": 0})
    stage = stage_of(a, b)
    with pytest.raises(HookFailure) as caught:
        stage.initialize(STATE)
    (note,) = caught.value.__notes__
    assert "done: RecordingModifier(group='prune_stage', index=0)" in note
    assert "calling initialize again resumes from" in note
    assert stage.stage_state is StageState.PENDING


def test_a_failed_finalize_leaves_the_stage_finalizing_then_resumes() -> None:
    a, b = RecordingModifier(start=0), RecordingModifier(start=0)
    stage = stage_of(a, b)
    stage.initialize(STATE)
    b.returns["on_finalize"] = False
    with pytest.raises(StageError, match=r"stays 'finalizing'"):
        stage.finalize(STATE)
    assert stage.stage_state is StageState.FINALIZING
    assert (a.finalized, b.finalized, stage.applied) == (True, False, False)
    with pytest.raises(IllegalTransitionError, match=r"it is 'finalizing'.*rule S2"):
        stage.update_event(STATE, Event(EventType.BATCH_END))
    b.returns.clear()
    stage.finalize(STATE)
    assert stage.applied
    assert names(a).count("on_finalize") == 1


def test_an_event_that_fails_in_one_modifier_says_who_got_it() -> None:
    a, b, c = (RecordingModifier(start=0) for _ in range(3))
    stage = stage_of(a, b, c)
    stage.initialize(STATE)
    b.fail["on_update"] = 0
    with pytest.raises(HookFailure) as caught:
        stage.update_event(STATE, Event(EventType.LOSS_CALCULATED, global_step=4))
    (note,) = caught.value.__notes__
    assert "forwarded LOSS_CALCULATED at step 4" in note
    assert "delivered to: RecordingModifier(group='prune_stage', index=0)" in note
    assert "not delivered to: RecordingModifier(group='prune_stage', index=2)" in note
    assert stage.stage_state is StageState.INITIALIZED


def test_an_empty_stage_initializes_and_applies() -> None:
    stage = StageModifiers()
    stage.initialize(STATE)
    stage.finalize(STATE)
    assert stage.applied


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"modifiers": ["ConstantPruningModifier"]}, ConfigTypeError,
         r"modifiers\[0\] must be a Modifier, got 'ConstantPruningModifier'"),
        ({"index": -1}, ConfigError, r"StageModifiers.index must be >= 0"),
        ({"group": 5}, ConfigTypeError, r"StageModifiers.group must be a str"),
    ],
)  # fmt: skip
def test_bad_stage_arguments_are_rejected(
    kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        StageModifiers(**kwargs)  # type: ignore[arg-type]  # wrong types on purpose


def test_the_same_modifier_twice_is_rejected() -> None:
    twice = NoopModifier()
    with pytest.raises(ConfigError, match=r"modifiers\[1\] is the same object"):
        StageModifiers([twice, twice])


def test_unique_id_needs_a_group_and_an_index() -> None:
    with pytest.raises(ConfigError, match="needs both a group and an index"):
        _ = StageModifiers([]).unique_id


def test_update_event_with_a_non_event_is_a_clear_error() -> None:
    with pytest.raises(ConfigTypeError, match=r"update_event needs an Event"):
        StageModifiers([]).update_event(STATE, "batch_start")  # type: ignore[arg-type]  # on purpose


def test_a_non_event_error_names_the_stage_and_the_value() -> None:
    stage = StageModifiers([], group="prune_stage", index=1)
    with pytest.raises(ConfigTypeError) as caught:
        stage.update_event(STATE, "batch_start")  # type: ignore[arg-type]  # on purpose
    assert str(caught.value).startswith(
        "StageModifiers(group='prune_stage', index=1).update_event needs an Event with an "
        "EventType type_, got 'batch_start'."
    )
    assert (caught.value.owner, caught.value.value) == ("StageModifiers", "batch_start")


@attrs.define(eq=False)
class KwargsSeen(NoopModifier):
    """Records the keyword arguments each update reaches it with."""

    seen: list[dict[str, Any]] = attrs.field(factory=list)
    calls: list[tuple[str, dict[str, Any]]] = attrs.field(factory=list)

    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        self.calls.append(("on_initialize", kwargs))
        return True

    def on_event(self, state: State, event: Event, **kwargs: Any) -> None:
        self.seen.append(kwargs)

    def on_finalize(self, state: State, **kwargs: Any) -> bool:
        self.calls.append(("on_finalize", kwargs))
        return True


def test_update_event_passes_keyword_arguments_to_every_modifier() -> None:
    a, b = KwargsSeen(), KwargsSeen()
    stage = StageModifiers([a, b])
    stage.initialize(STATE)
    stage.update_event(STATE, Event(EventType.LOSS_CALCULATED), loss=0.5)
    assert (a.seen, b.seen) == ([{"loss": 0.5}], [{"loss": 0.5}])


def test_the_stage_declaration_covers_every_cell() -> None:
    from modfsm.engine.runtime.stage import _COMPILED

    assert len(_COMPILED.plans) == len(STAGE_LIFECYCLE.states) * len(STAGE_LIFECYCLE.triggers)
    ignored = {key for key, plan in _COMPILED.plans.items() if plan.ignored is not None}
    assert ignored == {("applied", t) for t in STAGE_LIFECYCLE.trigger_names()}
    assert [s.value for s in StageState] == list(STAGE_LIFECYCLE.state_names())


def _label(index: int) -> str:
    return f"RecordingModifier(group='prune_stage', index={index})"


def test_a_declined_finalize_names_the_stage_the_hook_and_every_modifier() -> None:
    a, b, c = (RecordingModifier(start=0) for _ in range(3))
    stage = stage_of(a, b, c)
    stage.initialize(STATE)
    c.returns["on_finalize"] = False
    with pytest.raises(StageError) as caught:
        stage.finalize(STATE)
    error = caught.value
    assert str(error) == (
        f"StageModifiers(group='prune_stage', index=1) stopped: {_label(2)}.on_finalize "
        f"returned False, so it is not finalized (done: {_label(0)}, {_label(1)}; "
        f"failed: {_label(2)}; not attempted: none). The stage stays 'finalizing'. To fix, "
        "make on_finalize return True once it can, then call finalize again: it resumes "
        "from that modifier."
    )
    assert (error.stage, error.action, error.done, error.failed, error.not_attempted) == (
        stage, "finalize", (a, b), c, (),
    )  # fmt: skip
    assert error.stage is stage


def test_a_declined_initialize_of_the_first_modifier_has_done_none() -> None:
    a, b, c = RecordingModifier(), RecordingModifier(), RecordingModifier()
    a.returns["on_initialize"] = False
    stage = stage_of(a, b, c)
    with pytest.raises(StageError) as caught:
        stage.initialize(STATE)
    assert str(caught.value) == (
        f"StageModifiers(group='prune_stage', index=1) stopped: {_label(0)}.on_initialize "
        f"returned False, so it is not initialized (done: none; failed: {_label(0)}; "
        f"not attempted: {_label(1)}, {_label(2)}). The stage stays 'pending'. To fix, "
        "make on_initialize return True once it can, then call initialize again: it "
        "resumes from that modifier."
    )
    assert caught.value.stage is stage


def test_initialize_and_finalize_pass_keyword_arguments_to_every_modifier() -> None:
    barrier = Barrier()
    a, b = KwargsSeen(), KwargsSeen()
    stage = StageModifiers([a, b])
    stage.initialize(STATE, accelerator=barrier, seed=3)
    stage.finalize(STATE, accelerator=barrier)
    expected = [
        ("on_initialize", {"accelerator": barrier, "seed": 3}),
        ("on_finalize", {"accelerator": barrier}),
    ]
    assert (a.calls, b.calls) == (expected, expected)


def test_a_stage_entry_that_is_not_a_modifier_is_named_with_its_type() -> None:
    with pytest.raises(ConfigTypeError) as caught:
        StageModifiers([NoopModifier(), 3])  # type: ignore[list-item]  # on purpose
    error = caught.value
    assert str(error) == (
        "StageModifiers.modifiers[1] must be a Modifier, got 3 (int). "
        "To fix, pass modifier instances."
    )
    assert (error.owner, error.field, error.value) == ("StageModifiers", "modifiers", 3)


def test_the_same_modifier_twice_is_named_in_the_error() -> None:
    twice = NoopModifier()
    with pytest.raises(ConfigError) as caught:
        StageModifiers([twice, twice])
    error = caught.value
    assert str(error) == (
        "StageModifiers.modifiers[1] is the same object as an earlier entry "
        "(NoopModifier(group=None, index=None)). To fix, build a separate instance for "
        "each entry."
    )
    assert (error.owner, error.field, error.value) == ("StageModifiers", "modifiers", twice)


@attrs.define(eq=False)
class _OwnDispatch(NoopModifier):
    """Overrides update_event: the stage must call it as a modifier would be called."""

    seen: list[tuple[Any, ...]] = attrs.field(factory=list)

    def update_event(self, state: State, event: Event, **kwargs: Any) -> None:
        self.seen.append((state, event, kwargs))


def test_a_modifier_that_overrides_update_event_gets_the_state_event_and_arguments() -> None:
    first, second = _OwnDispatch(), _OwnDispatch()
    stage = StageModifiers([first, second])
    stage.initialize(STATE)
    event = Event(EventType.BATCH_START, global_step=2)
    stage.update_event(STATE, event, note=1)
    assert first.seen == second.seen == [(STATE, event, {"note": 1})]
