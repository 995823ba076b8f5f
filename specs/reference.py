"""Independent, flag-based models of the modifier lifecycle. Never imports ``modfsm``.

:class:`ReferenceModifier` is the reference (llm-compressor's ``Modifier``,
v0.6.0-v0.12, and v0.13-v0.14 on every event but the three calibration events)
as ``../shared/FINDINGS.md`` section 1 describes it: four booleans and a few
``if`` chains, quirks included. :class:`CalibrationReferenceModifier` is v0.13 and
later, whose ``update_event`` handles the calibration events itself
(``CALIBRATION_LIFECYCLE``).

:class:`SpecModifier` is what modfsm specifies (``specs/lifecycle.md``): the
reference, with the deviations D1-D5 applied. The engine must behave exactly
like ``SpecModifier`` on every call sequence, and exactly like
``ReferenceModifier`` on every sequence in which the hooks return True (as seen
from outside the hooks: the flags read inside them differ, D5).

Both record every hook *and guard* call in ``log`` as
``(name, event type or None, current_index or None)``, so a comparison also
checks that guards are consulted at the same moments. Hook results and failures
are scripted through ``returns`` and ``fail``; guards can be forced through
``forced`` (for abstract traces), otherwise they compute the reference rule
from ``start`` and ``end``.

Events are duck-typed: anything with ``type_`` (a str or str enum whose value
is e.g. ``"batch_start"``) and ``current_index``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = [
    "FLAG_NAMES",
    "CalibrationReferenceModifier",
    "CalibrationSpecModifier",
    "Flags",
    "HookFailure",
    "LogEntry",
    "ProbeEvent",
    "Recorder",
    "ReferenceModifier",
    "ReferenceStage",
    "SpecModifier",
    "SpecStage",
    "StageDeclined",
    "StepGrammarModel",
]

FLAG_NAMES = ("initialized", "started", "ended", "finalized")

BATCH_START = "batch_start"
BATCH_END = "batch_end"


class Flags(NamedTuple):
    """The four reference flags."""

    initialized: bool
    started: bool
    ended: bool
    finalized: bool


class LogEntry(NamedTuple):
    """One hook or guard call."""

    name: str
    event_type: str | None
    current_index: float | None


class ProbeEvent(NamedTuple):
    """The synthetic event ``initialize`` asks ``should_start`` about: BATCH_START, step 0."""

    type_: str = BATCH_START
    current_index: int = 0


class HookFailure(Exception):
    """Raised by a hook or guard scripted to fail."""


def _type_name(event: Any) -> str:
    value = getattr(event.type_, "value", event.type_)
    return str(value)


class Recorder:
    """Hooks and guards that record each call and follow a script.

    Mixed into :class:`ReferenceModifier` here, and into an engine ``Modifier``
    by the tests, so both sides log and fail identically. Needs the attributes
    ``log``, ``returns``, ``fail`` and ``forced``, and a ``_start_rule`` /
    ``_end_rule`` for unforced guards.
    """

    log: list[LogEntry]
    # hook name -> value it returns (gates default to True)
    returns: dict[str, Any]
    # hook or guard name -> number of further calls before it raises HookFailure
    fail: dict[str, int]
    # guard name -> forced outcome (absent: compute the rule)
    forced: dict[str, bool]

    def _record(self, name: str, event: Any = None) -> None:
        if event is None:
            self.log.append(LogEntry(name, None, None))
        else:
            self.log.append(LogEntry(name, _type_name(event), event.current_index))
        remaining = self.fail.get(name)
        if remaining is not None:
            if remaining == 0:
                del self.fail[name]
                raise HookFailure(name)
            self.fail[name] = remaining - 1

    def _start_rule(self, event: Any) -> bool:
        raise NotImplementedError

    def _end_rule(self, event: Any) -> bool:
        raise NotImplementedError

    def on_initialize(self, state: Any, **kwargs: Any) -> Any:
        self._record("on_initialize")
        return self.returns.get("on_initialize", True)

    def on_finalize(self, state: Any, **kwargs: Any) -> Any:
        self._record("on_finalize")
        return self.returns.get("on_finalize", True)

    def on_start(self, state: Any, event: Any, **kwargs: Any) -> None:
        self._record("on_start", event)

    def on_update(self, state: Any, event: Any, **kwargs: Any) -> None:
        self._record("on_update", event)

    def on_end(self, state: Any, event: Any, **kwargs: Any) -> None:
        self._record("on_end", event)

    def on_event(self, state: Any, event: Any, **kwargs: Any) -> None:
        self._record("on_event", event)

    def on_calibration_start(self, state: Any, event: Any, **kwargs: Any) -> None:
        self._record("on_calibration_start", event)

    def on_sequential_epoch_end(self, state: Any, event: Any, **kwargs: Any) -> None:
        self._record("on_sequential_epoch_end", event)

    def on_calibration_end(self, state: Any, event: Any, **kwargs: Any) -> None:
        self._record("on_calibration_end", event)

    def should_start(self, event: Any) -> bool:
        self._record("should_start", event)
        forced = self.forced.get("should_start")
        return self._start_rule(event) if forced is None else forced

    def should_end(self, event: Any) -> bool:
        self._record("should_end", event)
        forced = self.forced.get("should_end")
        return self._end_rule(event) if forced is None else forced


class ReferenceModifier(Recorder):
    """The reference lifecycle, flag for flag."""

    def __init__(self, start: float | None = None, end: float | None = None) -> None:
        self.start = start
        self.end = end
        self.initialized_: Any = False
        self.started_ = False
        self.ended_ = False
        self.finalized_: Any = False
        self.log = []
        self.returns = {}
        self.fail = {}
        self.forced = {}

    def flags(self) -> Flags:
        """The four flags as bools (the reference stores hook results; read them truthily)."""
        return Flags(
            bool(self.initialized_), bool(self.started_), bool(self.ended_), bool(self.finalized_)
        )

    def _start_rule(self, event: Any) -> bool:
        if self.start is None:
            return False
        current = event.current_index
        return bool(self.start <= current and (self.end is None or current < self.end))

    def _end_rule(self, event: Any) -> bool:
        return self.end is not None and event.current_index >= self.end

    # --- the lifecycle ---------------------------------------------------------------------

    def initialize(self, state: Any) -> None:
        if self.initialized_:
            raise RuntimeError("Cannot initialize a modifier that has already been initialized")
        if self.finalized_:
            raise RuntimeError("Cannot initialize a modifier that has already been finalized")
        self.initialized_ = self.on_initialize(state=state)
        probe = ProbeEvent()
        if self.should_start(probe):
            self.on_start(state, probe)
            self.started_ = True

    def update_event(self, state: Any, event: Any) -> None:
        if not self.initialized_:
            raise RuntimeError("Cannot update an uninitialized modifier")
        if self.finalized_:
            raise RuntimeError("Cannot update a finalized modifier")
        self.on_event(state, event)
        kind = _type_name(event)
        if kind == BATCH_START and not self.started_ and self.should_start(event):
            self.on_start(state, event)
            self.started_ = True
            self.on_update(state, event)
            return
        if kind == BATCH_END and not self.ended_ and self.should_end(event):
            self.on_end(state, event)
            self.ended_ = True
            self.on_update(state, event)
            return
        if self.started_ and not self.ended_:
            self.on_update(state, event)

    def finalize(self, state: Any) -> None:
        if self.finalized_:
            raise RuntimeError("cannot finalize a modifier twice")
        if not self.initialized_:
            raise RuntimeError("cannot finalize an uninitialized modifier")
        self.finalized_ = self.on_finalize(state=state)


class SpecModifier(ReferenceModifier):
    """The reference with modfsm's deviations (``specs/lifecycle.md``, section Deviations).

    D1. ``on_initialize`` returning False leaves the modifier uninitialized and
        does not consult ``should_start`` or call ``on_start``.
    D2. A gate hook (``on_initialize``/``on_finalize``) returning anything but a
        bool raises ``TypeError``; the flags are unchanged.
    D3. A call is atomic: the flags change only after every hook and guard of the
        call returned. If one raises, the exception propagates and the flags are
        as before the call (the hooks that ran have run).
    D4. The flags are always bools.
    D5. Hooks and guards read the flags of the state before the call (this
        follows from D3: the flags are set after the last hook).
    """

    def _gate(self, name: str, result: Any) -> bool:
        if result is True or result is False:
            return result
        raise TypeError(f"{name} returned {result!r}, expected True or False")

    def initialize(self, state: Any) -> None:
        if self.initialized_:
            raise RuntimeError("already initialized")
        if self.finalized_:
            raise RuntimeError("already finalized")
        if not self._gate("on_initialize", self.on_initialize(state=state)):
            return
        probe = ProbeEvent()
        started = False
        if self.should_start(probe):
            self.on_start(state, probe)
            started = True
        self.initialized_, self.started_ = True, started

    def update_event(self, state: Any, event: Any) -> None:
        if not self.initialized_:
            raise RuntimeError("not initialized")
        if self.finalized_:
            raise RuntimeError("already finalized")
        self.on_event(state, event)
        kind = _type_name(event)
        if kind == BATCH_START and not self.started_ and self.should_start(event):
            self.on_start(state, event)
            self.on_update(state, event)
            self.started_ = True
            return
        if kind == BATCH_END and not self.ended_ and self.should_end(event):
            self.on_end(state, event)
            self.on_update(state, event)
            self.ended_ = True
            return
        if self.started_ and not self.ended_:
            self.on_update(state, event)

    def finalize(self, state: Any) -> None:
        if self.finalized_:
            raise RuntimeError("already finalized")
        if not self.initialized_:
            raise RuntimeError("not initialized")
        if self._gate("on_finalize", self.on_finalize(state=state)):
            self.finalized_ = True


# The calibration events, by the names of 0.6.0-0.12 and of 0.13+ (the same events).
CALIBRATION_START = ("calibration_epoch_start", "calibration_start")
SEQUENTIAL_EPOCH_END = ("sequential_epoch_end",)
CALIBRATION_END = ("calibration_epoch_end", "calibration_end")


def _calibration_kind(event: Any) -> str | None:
    """``start``, ``sequential`` or ``end`` for a calibration event, else None."""
    kind = _type_name(event)
    if kind in CALIBRATION_START:
        return "start"
    if kind in SEQUENTIAL_EPOCH_END:
        return "sequential"
    return "end" if kind in CALIBRATION_END else None


def _calibrate(model: ReferenceModifier, state: Any, event: Any, kind: str) -> None:
    """What 0.13+ does with a calibration event after ``on_event``: the hook, then the flag."""
    if kind == "start":
        model.on_calibration_start(state, event)
        model.started_ = True
    elif kind == "sequential":
        model.on_sequential_epoch_end(state, event)
    else:
        model.on_calibration_end(state, event)
        model.ended_ = True


class _CalibrationEvents(ReferenceModifier):
    """The calibration events of 0.13+, handled before the window logic of the base model."""

    # the messages of the refusals: not initialized, already finalized
    _refusals: tuple[str, str] = (
        "Cannot update an uninitialized modifier",
        "Cannot update a finalized modifier",
    )

    def update_event(self, state: Any, event: Any) -> None:
        kind = _calibration_kind(event)
        if kind is None:
            super().update_event(state, event)
            return
        if not self.initialized_:
            raise RuntimeError(self._refusals[0])
        if self.finalized_:
            raise RuntimeError(self._refusals[1])
        self.on_event(state, event)
        _calibrate(self, state, event, kind)


class CalibrationReferenceModifier(_CalibrationEvents):
    """The reference lifecycle of llm-compressor 0.13 and later (checked on 0.14.0.1).

    Its ``update_event`` handles the three calibration events before the window
    logic: ``CALIBRATION_START`` calls ``on_calibration_start`` and sets ``started``
    (no ``should_start``, no ``on_start``); ``SEQUENTIAL_EPOCH_END`` calls
    ``on_sequential_epoch_end`` and nothing else; ``CALIBRATION_END`` calls
    ``on_calibration_end`` and sets ``ended`` (no ``on_end``). ``on_event`` runs
    first, as for every event. ``initialize`` and ``finalize`` are unchanged.
    """


class CalibrationSpecModifier(_CalibrationEvents, SpecModifier):
    """:class:`CalibrationReferenceModifier` with modfsm's deviations (D1-D5 of
    :class:`SpecModifier`; for the calibration events only D3 applies: the flag is set
    after the hook returned, so a hook that raises leaves it as it was)."""

    _refusals = ("not initialized", "already finalized")


class StageDeclined(RuntimeError):
    """Raised by :class:`SpecStage` when a modifier declines (its gate returned False)."""


class ReferenceStage:
    """The reference's ``StageModifiers``: forwards to its modifiers, ignores calls once applied.

    ``accelerator``: anything with ``wait_for_everyone()``, called after each
    modifier in ``initialize`` and ``finalize`` (even one that was skipped).
    """

    def __init__(self, modifiers: list[ReferenceModifier]) -> None:
        self.modifiers = modifiers
        self.applied = False

    def initialize(self, state: Any, accelerator: Any = None) -> None:
        if self.applied:
            return
        for modifier in self.modifiers:
            if not modifier.initialized_:
                modifier.initialize(state)
            if accelerator is not None:
                accelerator.wait_for_everyone()

    def update_event(self, state: Any, event: Any) -> None:
        if self.applied:
            return
        for modifier in self.modifiers:
            modifier.update_event(state, event)

    def finalize(self, state: Any, accelerator: Any = None) -> None:
        if self.applied:
            return
        for modifier in self.modifiers:
            modifier.finalize(state)
            if accelerator is not None:
                accelerator.wait_for_everyone()
        self.applied = True


class SpecStage(ReferenceStage):
    """modfsm's stage (``specs/stage.md``): the reference with deviations E1-E4.

    E1. Events reach the modifiers only once the stage is initialized (every
        modifier initialized, through ``initialize`` or before the stage was
        built) and before its finalization begins; otherwise the call raises
        before any modifier sees the event.
    E2. ``finalize`` on a stage that is not initialized raises before any
        modifier is finalized.
    E3. ``initialize``/``finalize`` stop at the first modifier that raises (the
        exception propagates) or declines (``StageDeclined``); the stage stays
        where it was and the next call resumes: ``finalize`` skips modifiers
        already finalized.
    E4. The stage is applied only when every modifier is finalized.
    """

    def __init__(self, modifiers: list[ReferenceModifier]) -> None:
        super().__init__(modifiers)
        # A stage starts where its modifiers are (specs/stage.md section 2).
        self.state = "pending"
        if modifiers and all(modifier.initialized_ for modifier in modifiers):
            finalizing = any(modifier.finalized_ for modifier in modifiers)
            self.state = "finalizing" if finalizing else "initialized"

    def initialize(self, state: Any, accelerator: Any = None) -> None:
        if self.applied:
            return
        for modifier in self.modifiers:
            if not modifier.initialized_:
                modifier.initialize(state)
                if not modifier.initialized_:
                    raise StageDeclined("a modifier declined to initialize")
            if accelerator is not None:
                accelerator.wait_for_everyone()
        if self.state == "pending":
            self.state = "initialized"

    def update_event(self, state: Any, event: Any) -> None:
        if self.applied:
            return
        if self.state != "initialized":
            raise RuntimeError(f"a {self.state} stage takes no events")
        super().update_event(state, event)

    def finalize(self, state: Any, accelerator: Any = None) -> None:
        if self.applied:
            return
        if self.state == "pending":
            raise RuntimeError("a pending stage cannot be finalized")
        self.state = "finalizing"
        for modifier in self.modifiers:
            if not modifier.finalized_:
                modifier.finalize(state)
                if not modifier.finalized_:
                    raise StageDeclined("a modifier declined to finalize")
            if accelerator is not None:
                accelerator.wait_for_everyone()
        self.state = "applied"
        self.applied = True


class StepGrammarModel:
    """The session's step grammar and counters, written procedurally (``specs/session.md``).

    ``apply(event, partial=False)`` either raises ``RuntimeError`` (the event is out
    of order; nothing changes) or returns the ``(global_step, global_batch)`` the
    event carries. ``position`` names where the loop is, with the engine's names.
    """

    def __init__(self, batches_per_step: int = 1) -> None:
        self.batches_per_step = batches_per_step
        self.global_step = 0
        self.global_batch = 0
        self.batches_since_step = 0
        self.in_batch = False
        self.due = False
        self.loss = False
        self.stepping = False
        self.stepped = False
        self.calibrating = False
        self.finalized = False

    @property
    def position(self) -> str:
        if self.finalized:
            return "finalized"
        if self.calibrating:
            return "calibrating"
        if not self.in_batch:
            return "idle"
        if self.stepped:
            return "stepped"
        if self.stepping:
            return "stepping"
        base = "step_due" if self.due else "accumulating"
        return f"{base}_loss" if self.loss else base

    def apply(self, event: str, partial: bool = False) -> tuple[int, int]:
        if self.finalized:
            raise RuntimeError("finalized")
        open_ = self.in_batch or self.calibrating
        if event == "batch_start":
            if open_:
                raise RuntimeError("a batch or calibration epoch is open")
            self.in_batch, self.loss, self.stepping, self.stepped = True, False, False, False
            self.due = self.batches_since_step + 1 >= self.batches_per_step
        elif event == "loss_calculated":
            if not self.in_batch or self.loss or self.stepping or self.stepped:
                raise RuntimeError("loss out of place")
            self.loss = True
        elif event == "optim_pre_step":
            if not self.in_batch or self.stepping or self.stepped or partial == self.due:
                raise RuntimeError("optimizer step out of place")
            self.stepping = True
        elif event == "optim_post_step":
            if not self.stepping:
                raise RuntimeError("optim_post_step without optim_pre_step")
            self.stepping, self.stepped = False, True
            self.global_step += 1
            self.batches_since_step = 0
        elif event == "batch_end":
            if not self.in_batch or self.stepping:
                raise RuntimeError("batch_end out of place")
            self.global_batch += 1
            if self.due and not self.stepped:
                self.batches_since_step = 0  # a skipped step: the accumulation starts over
            elif not self.stepped:
                self.batches_since_step += 1
            self.in_batch = False
        elif event == "calibration_epoch_start":
            if open_:
                raise RuntimeError("a batch or calibration epoch is open")
            self.calibrating = True
        elif event == "sequential_epoch_end":
            if not self.calibrating:
                raise RuntimeError("no calibration epoch")
        elif event == "calibration_epoch_end":
            if not self.calibrating:
                raise RuntimeError("no calibration epoch")
            self.calibrating = False
        elif event == "finalize":
            if open_:
                raise RuntimeError("a batch or calibration epoch is open")
            self.finalized = True
        else:
            raise RuntimeError(f"{event} is not a loop event")
        return self.global_step, self.global_batch
