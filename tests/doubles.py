"""Test doubles and helpers shared by the lifecycle tests.

:class:`RecordingModifier` is an engine ``Modifier`` whose hooks and guards come
from :class:`specs.reference.Recorder`, so it logs and fails exactly like the
independent models in ``specs/reference.py``. :func:`apply` runs one call on
either side and returns a comparable :class:`Outcome`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import attrs

from modfsm.engine import CALIBRATION_LIFECYCLE, Event, EventType, Modifier, State
from modfsm.engine.kernel.compiler import CompiledState
from modfsm.engine.runtime.stage import StageError
from specs.reference import (
    Flags,
    HookFailure,
    LogEntry,
    Recorder,
    ReferenceModifier,
    StageDeclined,
)

STATE = State()


@attrs.define(eq=False)
class RecordingModifier(Recorder, Modifier):
    """An engine modifier that records hook and guard calls and follows a script."""

    log: list[LogEntry] = attrs.field(factory=list)
    returns: dict[str, Any] = attrs.field(factory=dict)
    fail: dict[str, int] = attrs.field(factory=dict)
    forced: dict[str, bool] = attrs.field(factory=dict)

    def _start_rule(self, event: Any) -> bool:
        return Modifier.should_start(self, event)

    def _end_rule(self, event: Any) -> bool:
        return Modifier.should_end(self, event)


@attrs.define(eq=False)
class CalibrationRecordingModifier(RecordingModifier):
    """:class:`RecordingModifier` on the calibration lifecycle of llm-compressor 0.13+."""

    __lifecycle__ = CALIBRATION_LIFECYCLE


@attrs.define
class NoopModifier(Modifier):
    """The smallest concrete modifier: a plain subclass with no new fields."""

    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        return True


@attrs.define(eq=False)
class EventLog(Modifier):
    """Uses the default guards; records every event it sees and every hook that runs."""

    seen: list[tuple[str, int, int, float]] = attrs.field(factory=list)
    hooks: list[tuple[str, str | None, float | None]] = attrs.field(factory=list)

    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        self.hooks.append(("on_initialize", None, None))
        return True

    def on_event(self, state: State, event: Event, **kwargs: Any) -> None:
        self.seen.append(
            (event.type_.value, event.global_step, event.global_batch, event.current_index)
        )

    def on_start(self, state: State, event: Event, **kwargs: Any) -> None:
        self.hooks.append(("on_start", event.type_.value, event.current_index))

    def on_update(self, state: State, event: Event, **kwargs: Any) -> None:
        self.hooks.append(("on_update", event.type_.value, event.current_index))

    def on_end(self, state: State, event: Event, **kwargs: Any) -> None:
        self.hooks.append(("on_end", event.type_.value, event.current_index))

    def on_finalize(self, state: State, **kwargs: Any) -> bool:
        self.hooks.append(("on_finalize", None, None))
        return True


Call = tuple[str, Event | None]
"""("initialize", None), ("finalize", None) or ("update", event)."""

INITIALIZE: Call = ("initialize", None)
FINALIZE: Call = ("finalize", None)


def update(type_: EventType | str, step: int = 0, steps_per_epoch: int | None = None) -> Call:
    """An update_event call with an event of ``type_`` at ``step``."""
    return ("update", Event(type_, global_step=step, steps_per_epoch=steps_per_epoch))


class Outcome(NamedTuple):
    """What one call did: how it failed (if it did), the flags after, the calls it made."""

    error: str | None
    flags: Flags
    log: tuple[LogEntry, ...]


def error_kind(exc: BaseException) -> str:
    """Classify an exception the way the specification distinguishes them."""
    if isinstance(exc, HookFailure):
        return "hook-raised"
    if isinstance(exc, StageError | StageDeclined):
        return "declined"
    if isinstance(exc, RuntimeError):
        return "illegal"
    if isinstance(exc, TypeError):
        return "bad-return"
    raise AssertionError(f"unexpected exception {exc!r}")


def flags_of(model: RecordingModifier | ReferenceModifier) -> Flags:
    """The four flags of either side."""
    if isinstance(model, ReferenceModifier):
        return model.flags()
    return Flags(model.initialized, model.started, model.ended, model.finalized)


def apply(model: RecordingModifier | ReferenceModifier, call: Call) -> Outcome:
    """Run ``call`` on ``model`` and describe what happened."""
    before = len(model.log)
    error = None
    kind, event = call
    try:
        if kind == "initialize":
            model.initialize(STATE)
        elif kind == "finalize":
            model.finalize(STATE)
        else:
            assert event is not None, "an update call carries an event"
            model.update_event(STATE, event)
    except Exception as exc:
        error = error_kind(exc)
    return Outcome(error, flags_of(model), tuple(model.log[before:]))


def put_in_state(modifier: Modifier, state: CompiledState) -> None:
    """Place ``modifier`` directly in ``state`` (for cell-by-cell tests)."""
    object.__setattr__(modifier, "_lc", state)


@attrs.define(eq=False)
class WindowLog(Modifier):
    """Logs its window's hooks with the counters they saw (``(hook or event, step,
    batch)``); inside its window multiplies the loss by ``loss_factor``."""

    loss_factor: float = 1.0
    log: list[tuple[str, int, int]] = attrs.field(factory=list, init=False)

    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        return True

    def on_start(self, state: State, event: Event, **kwargs: Any) -> None:
        self.log.append(("start", event.global_step, event.global_batch))

    def on_end(self, state: State, event: Event, **kwargs: Any) -> None:
        self.log.append(("end", event.global_step, event.global_batch))

    def on_update(self, state: State, event: Event, **kwargs: Any) -> None:
        self.log.append((event.type_.name, event.global_step, event.global_batch))
        if event.type_ is EventType.LOSS_CALCULATED and self.loss_factor != 1.0:
            state.loss = state.loss * self.loss_factor


def tiny_llama(seed: int = 0) -> Any:
    """A ``LlamaForCausalLM`` of 32 tokens, 16 wide, one layer (skips without transformers)."""
    import pytest
    import torch

    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16,
    )  # fmt: skip
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config)
