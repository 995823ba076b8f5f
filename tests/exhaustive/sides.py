"""Uniform handles on the four implementations the exhaustive tests compare.

A *side* applies a :class:`Letter` (a call plus the guard outcomes and hook
results to script) and reports an :class:`~tests.doubles.Outcome`; it can
snapshot and restore itself, so a depth-first walk over all traces explores
each prefix once instead of replaying it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

from modfsm.engine import LIFECYCLE, Event, EventType
from modfsm.engine.kernel.declaration import Declaration
from modfsm.engine.runtime.modifier import START_PROBE
from modfsm.engine.tools.transitions_adapter import TransitionsDriver
from specs.reference import Flags, ReferenceModifier
from tests.doubles import STATE, Call, Outcome, RecordingModifier, apply, error_kind, put_in_state


class Letter(NamedTuple):
    """One call with its script: forced guard outcomes and gate hook results."""

    call: Call
    forced: Mapping[str, bool] = {}
    returns: Mapping[str, Any] = {}

    def __str__(self) -> str:
        kind, event = self.call
        what = kind if event is None else f"{event.type_.name}@{event.current_index}"
        script = ",".join(f"{k}={v}" for k, v in {**self.forced, **self.returns}.items())
        return f"{what}[{script}]" if script else what


class Side(Protocol):
    name: str

    def apply(self, letter: Letter) -> Outcome: ...

    def snapshot(self) -> Any: ...

    def restore(self, snap: Any) -> None: ...


def _script(target: Any, letter: Letter) -> None:
    target.forced = dict(letter.forced)
    target.returns = dict(letter.returns)


class EngineSide:
    """The compiled engine."""

    name = "engine"

    def __init__(
        self,
        start: float | None = None,
        end: float | None = None,
        kind: type[RecordingModifier] = RecordingModifier,
    ) -> None:
        self.modifier = kind(start=start, end=end)

    def apply(self, letter: Letter) -> Outcome:
        _script(self.modifier, letter)
        return apply(self.modifier, letter.call)

    def snapshot(self) -> Any:
        return self.modifier._lc, len(self.modifier.log)

    def restore(self, snap: Any) -> None:
        state, length = snap
        put_in_state(self.modifier, state)
        del self.modifier.log[length:]


class ModelSide:
    """A model from ``specs/reference.py``."""

    def __init__(self, model: ReferenceModifier) -> None:
        self.model = model
        self.name = type(model).__name__

    def apply(self, letter: Letter) -> Outcome:
        _script(self.model, letter)
        return apply(self.model, letter.call)

    def snapshot(self) -> Any:
        m = self.model
        return m.initialized_, m.started_, m.ended_, m.finalized_, len(m.log)

    def restore(self, snap: Any) -> None:
        m = self.model
        m.initialized_, m.started_, m.ended_, m.finalized_, length = snap
        del m.log[length:]


class DriverSide:
    """The same declaration dispatched by ``transitions`` itself."""

    name = "transitions"

    def __init__(
        self,
        start: float | None = None,
        end: float | None = None,
        declaration: Declaration = LIFECYCLE,
    ) -> None:
        self.modifier = RecordingModifier(start=start, end=end)
        self.declaration = declaration
        self.driver = TransitionsDriver(declaration, self.modifier)
        self.flags = {
            s.name: Flags(*(s.flags[f] for f in declaration.flags)) for s in declaration.states
        }

    def apply(self, letter: Letter) -> Outcome:
        _script(self.modifier, letter)
        kind, event = letter.call
        before = len(self.modifier.log)
        trigger = kind if event is None else self.declaration.event_triggers[event.type_]
        error = None
        try:
            self.driver.fire(trigger, STATE, START_PROBE if kind == "initialize" else event, {})
        except Exception as exc:
            error = error_kind(exc)
        return Outcome(error, self.flags[self.driver.state], tuple(self.modifier.log[before:]))

    def snapshot(self) -> Any:
        return self.driver.state, len(self.modifier.log)

    def restore(self, snap: Any) -> None:
        state, length = snap
        self.driver.machine.set_state(state, model=self.driver)
        del self.modifier.log[length:]


def walk(sides: Sequence[Side], letters: Sequence[Letter], depth: int) -> int:
    """Apply every trace of up to ``depth`` letters to all sides; assert they agree.

    Returns the number of trace prefixes checked (sum of len(letters)**k, k=1..depth).
    """
    checked = 0
    path: list[Letter] = []

    def visit(level: int) -> None:
        nonlocal checked
        for letter in letters:
            snaps = [side.snapshot() for side in sides]
            path.append(letter)
            first = sides[0].apply(letter)
            for side in sides[1:]:
                outcome = side.apply(letter)
                if outcome != first:
                    trace = " -> ".join(map(str, path))
                    raise AssertionError(
                        f"{side.name} != {sides[0].name} after {trace}:\n"
                        f"  {side.name}: {outcome}\n  {sides[0].name}: {first}"
                    )
            checked += 1
            if level + 1 < depth:
                visit(level + 1)
            path.pop()
            for side, snap in zip(sides, snaps, strict=True):
                side.restore(snap)

    visit(0)
    return checked


def update_letter(type_: EventType, step: int = 0, **forced: bool) -> Letter:
    """A letter that sends an event of ``type_`` at ``step`` with forced guards."""
    return Letter(("update", Event(type_, global_step=step)), forced)


def call_letter(kind: str, forced: Mapping[str, bool] | None = None, **returns: Any) -> Letter:
    """A letter for initialize/finalize with optional forced guards and gate results."""
    return Letter((kind, None), forced or {}, returns)


#: one letter per (call, outcome of the guard it may consult); hooks succeed.
ABSTRACT = [
    call_letter("initialize", {"should_start": True}),
    call_letter("initialize", {"should_start": False}),
    call_letter("finalize"),
    update_letter(EventType.BATCH_START, should_start=True),
    update_letter(EventType.BATCH_START, should_start=False),
    update_letter(EventType.BATCH_END, should_end=True),
    update_letter(EventType.BATCH_END, should_end=False),
    update_letter(EventType.LOSS_CALCULATED),
]

SideFactory = Callable[[], Sequence[Side]]
