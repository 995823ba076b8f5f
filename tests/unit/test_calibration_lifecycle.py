"""The calibration lifecycle of llm-compressor 0.13+ (``CALIBRATION_LIFECYCLE``): selected per
class, built from the first table, with the reference's names and keyword arguments."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from modfsm.engine import (
    CALIBRATION_LIFECYCLE,
    LIFECYCLE,
    Event,
    EventType,
    IllegalTransitionError,
    Modifier,
    State,
)
from modfsm.engine.kernel.compiler import IGNORE
from modfsm.engine.model.calibration_lifecycle import CALIBRATION_HOOKS, CALIBRATION_TRIGGERS

STATE = State()


@attrs.define
class Calibrated(Modifier):
    """Logs the calibration hooks and the keyword arguments they receive."""

    __lifecycle__ = CALIBRATION_LIFECYCLE
    log: list[tuple[str, dict[str, Any]]] = attrs.field(factory=list)

    # no positional state: the reference passes it as a keyword, so this works there and here
    def on_initialize(self, **kwargs: Any) -> bool:  # type: ignore[override]  # see above
        self.log.append(("on_initialize", kwargs))
        return True

    def on_finalize(self, **kwargs: Any) -> bool:  # type: ignore[override]  # as on_initialize
        self.log.append(("on_finalize", kwargs))
        return True

    def on_calibration_start(self, state: State, event: Event, **kwargs: Any) -> None:
        self.log.append(("on_calibration_start", kwargs))

    def on_sequential_epoch_end(self, state: State, event: Event, **kwargs: Any) -> None:
        self.log.append(("on_sequential_epoch_end", kwargs))

    def on_calibration_end(self, state: State, event: Event, **kwargs: Any) -> None:
        self.log.append(("on_calibration_end", kwargs))

    def on_update(self, state: State, event: Event, **kwargs: Any) -> None:
        self.log.append(("on_update", {"event": event.type_.value}))


@attrs.define
class Plain(Modifier):
    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        return True


@attrs.define
class QuietCalibrated(Plain):
    """On the calibration lifecycle, keeping every calibration hook empty."""

    __lifecycle__ = CALIBRATION_LIFECYCLE


def test_a_calibration_run_starts_and_ends_the_modifier_without_on_start_or_on_end() -> None:
    modifier = Calibrated(start=None)  # should_start never holds: only calibration starts it
    modifier.initialize(STATE, seed=1)
    assert modifier.lifecycle_state == "initialized"
    modifier.update_event(STATE, Event(EventType.CALIBRATION_START))
    assert (modifier.started, modifier.ended) == (True, False)
    modules = ["layer0"]
    modifier.update_event(STATE, Event(EventType.SEQUENTIAL_EPOCH_END), modules=modules)
    assert modifier.lifecycle_state == "started"
    modifier.update_event(STATE, Event(EventType.CALIBRATION_END))
    assert modifier.lifecycle_state == "ended"
    modifier.finalize(STATE)
    assert modifier.lifecycle_state == "finalized_ended"
    assert modifier.log == [
        ("on_initialize", {"state": STATE, "seed": 1}),
        ("on_calibration_start", {}),
        ("on_sequential_epoch_end", {"modules": modules}),
        ("on_calibration_end", {}),
        ("on_finalize", {"state": STATE}),
    ]


def test_on_initialize_and_on_finalize_receive_state_as_a_keyword() -> None:
    # the reference calls on_initialize(state=state, **kwargs): a hook taking only **kwargs works
    modifier = Calibrated()
    modifier.initialize(STATE)
    modifier.finalize(STATE)
    assert modifier.log == [
        ("on_initialize", {"state": STATE}),
        ("on_finalize", {"state": STATE}),
    ]


def test_under_the_first_table_calibration_events_are_ordinary_events() -> None:
    @attrs.define
    class Old(Calibrated):
        __lifecycle__ = LIFECYCLE

    modifier = Old(start=0)
    modifier.initialize(STATE)
    modifier.update_event(STATE, Event(EventType.CALIBRATION_START))
    modifier.update_event(STATE, Event(EventType.SEQUENTIAL_EPOCH_END), modules=[])
    assert [name for name, _ in modifier.log[1:]] == ["on_update", "on_update"]
    assert modifier.lifecycle_state == "started"


def test_calibration_start_restarts_nothing_after_the_window_and_end_keeps_start() -> None:
    modifier = Calibrated(start=None)
    modifier.initialize(STATE)
    modifier.update_event(STATE, Event(EventType.CALIBRATION_END))
    assert modifier.lifecycle_state == "ended_unstarted"
    modifier.update_event(STATE, Event(EventType.CALIBRATION_START))
    assert modifier.lifecycle_state == "ended"
    modifier.update_event(STATE, Event(EventType.BATCH_START, global_step=5))
    assert not any(name == "on_update" for name, _ in modifier.log)


@pytest.mark.parametrize("kind", list(CALIBRATION_TRIGGERS))
def test_calibration_events_are_refused_before_initialize_and_after_finalize(
    kind: EventType,
) -> None:
    modifier = Calibrated()
    with pytest.raises(IllegalTransitionError, match="not initialized"):
        modifier.update_event(STATE, Event(kind))
    modifier.initialize(STATE)
    modifier.finalize(STATE)
    with pytest.raises(IllegalTransitionError, match="already finalized") as refused:
        modifier.update_event(STATE, Event(kind))
    assert modifier.lifecycle_state == "finalized_initialized"
    # the message says the call as the user made it, as for the first table's events
    assert str(refused.value).startswith(f"update_event({kind.name}) is not allowed on ")


def test_the_calibration_triggers_are_described_as_the_first_tables_events_are() -> None:
    calls = {spec.name: spec for spec in CALIBRATION_LIFECYCLE.triggers}
    batch_start = calls["batch_start"]
    for trigger in CALIBRATION_TRIGGERS.values():
        spec = calls[trigger]
        assert (spec.call, spec.prelude) == (batch_start.call, batch_start.prelude)
        assert spec.doc == batch_start.doc.replace("BATCH_START", trigger.upper())  # 0.13 name


def test_the_calibration_table_is_the_first_table_plus_its_calibration_rows() -> None:
    first = len(LIFECYCLE.transitions)
    assert CALIBRATION_LIFECYCLE.transitions[:first] == LIFECYCLE.transitions
    added = CALIBRATION_LIFECYCLE.transitions[first:]
    assert {row["trigger"] for row in added} == set(CALIBRATION_TRIGGERS.values())
    assert CALIBRATION_LIFECYCLE.states == LIFECYCLE.states
    assert CALIBRATION_LIFECYCLE.flags == LIFECYCLE.flags
    hooks = [h.name for h in CALIBRATION_LIFECYCLE.hooks]
    assert hooks == [*(h.name for h in LIFECYCLE.hooks), *CALIBRATION_HOOKS]
    for kind, trigger in CALIBRATION_TRIGGERS.items():
        assert CALIBRATION_LIFECYCLE.event_triggers[kind] == trigger
        assert LIFECYCLE.event_triggers[kind] == "other_event"
    refusing = {r.rule for r in CALIBRATION_LIFECYCLE.rejections if "calibration_end" in r.triggers}
    assert refusing == {"R3", "R4"}


def test_the_names_of_0_13_are_aliases_of_the_calibration_epoch_events() -> None:
    assert EventType.CALIBRATION_START is EventType.CALIBRATION_EPOCH_START
    assert EventType.CALIBRATION_END is EventType.CALIBRATION_EPOCH_END
    assert EventType("calibration_start") is EventType.CALIBRATION_EPOCH_START
    assert EventType("calibration_end") is EventType.CALIBRATION_EPOCH_END
    assert Event("CALIBRATION_START").type_ is EventType.CALIBRATION_EPOCH_START
    assert len(EventType) == 10  # aliases add no member
    with pytest.raises(ValueError, match="calibration_begin"):
        EventType("calibration_begin")


def test_a_class_keeping_the_calibration_hooks_empty_is_not_called_for_them() -> None:
    modifier = QuietCalibrated(start=None)
    modifier.initialize(STATE)
    assert modifier._lc[EventType.SEQUENTIAL_EPOCH_END] is IGNORE
    # calibration_start still moves it, so its cell is a real one
    assert modifier._lc[EventType.CALIBRATION_EPOCH_START] is not IGNORE
    modifier.update_event(STATE, Event(EventType.CALIBRATION_START))
    assert modifier.lifecycle_state == "started"
    assert Plain.__compiled_lifecycle__.declaration is LIFECYCLE
