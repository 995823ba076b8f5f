"""What the contract runs: a schedule and a stream of training-loop calls.

A :class:`Stream` is a sequence of session calls that follows the step grammar
(:data:`modfsm.engine.model.session_grammar.SESSION_GRAMMAR`), with the events a
:class:`~modfsm.engine.loop.session.Session` sends for them. Streams are recorded by
driving a real session (:class:`StreamRecorder`), so the legal calls, the
gradient accumulation and the counters each event carries are the engine's own,
never a second copy of its rules. A :class:`Schedule` is a window ``[start, end)``
in optimizer steps, or in epochs when the stream sets ``steps_per_epoch``.

Both print as the lines a counterexample shows::

    schedule: start=1, end=None
    loop: batches_per_step=1, steps_per_epoch=None
      initialize
      batch_start step 0 batch 0
      batch_end step 0 batch 1
      finalize
"""

from __future__ import annotations

from typing import Any, Final

import attrs

from modfsm.engine.kernel.compiler import compile_machine
from modfsm.engine.loop.session import Session
from modfsm.engine.model.events import Event, EventType
from modfsm.engine.model.session_grammar import SESSION_GRAMMAR
from modfsm.engine.model.state import State
from modfsm.engine.runtime.modifier import Modifier

__all__ = ["LOOP_CALLS", "Schedule", "Stream", "StreamRecorder", "describe_event"]

_GRAMMAR: Final = compile_machine(SESSION_GRAMMAR, state_attr="_lc")

#: The grammar's loop triggers: trigger name -> (the event type it reports, partial step?).
LOOP_CALLS: Final[dict[str, tuple[EventType, bool]]] = {
    **{
        trigger: (event_type, False)
        for event_type, trigger in SESSION_GRAMMAR.event_triggers.items()
        if isinstance(event_type, EventType) and trigger != "lifecycle_event"
    },
    "partial_step": (EventType.OPTIM_PRE_STEP, True),
}


def describe_event(event: Event | None) -> str:
    """``batch_start step 0 batch 0`` (with the epoch when the event counts epochs)."""
    if event is None:
        return "-"
    text = f"{event.type_.value} step {event.global_step} batch {event.global_batch}"
    if event.steps_per_epoch is not None:
        text += f" epoch {event.current_index:g}"
    return text


@attrs.frozen
class Schedule:
    """A modifier's window: ``start`` and ``end`` as the modifier's fields take them."""

    start: float | None
    end: float | None

    def __str__(self) -> str:
        return f"start={self.start!r}, end={self.end!r}"


@attrs.frozen
class Stream:
    """Session calls that follow the step grammar, and the events the session sends.

    Attributes:
        batches_per_step: batches per optimizer step (gradient accumulation).
        steps_per_epoch: None for step-based schedules, else steps per epoch.
        calls: the grammar's trigger names, in order (``batch_start``,
            ``loss_calculated``, ``optim_pre_step``, ``partial_step``,
            ``optim_post_step``, ``batch_end``, ``calibration_epoch_start``,
            ``sequential_epoch_end``, ``calibration_epoch_end``); ``initialize``
            comes before them and ``finalize`` after.
        events: the event each call sends, counters as of that event.
        positions: the session's position before each call.
    """

    batches_per_step: int
    steps_per_epoch: int | None
    calls: tuple[str, ...]
    events: tuple[Event, ...]
    positions: tuple[str, ...]

    @classmethod
    def from_calls(
        cls, calls: tuple[str, ...] | list[str], batches_per_step: int = 1,
        steps_per_epoch: int | None = None,
    ) -> Stream:  # fmt: skip
        """Record ``calls`` through a session.

        Raises:
            IllegalTransitionError: a call the step grammar does not allow there.
        """
        recorder = StreamRecorder(batches_per_step, steps_per_epoch)
        for call in calls:
            recorder.apply(call)
        return recorder.stream()

    def __len__(self) -> int:
        return len(self.calls)

    def describe_call(self, index: int) -> str:
        """Call ``index`` as a counterexample shows it: ``batch_end step 0 batch 1``."""
        event = self.events[index]
        return f"{self.calls[index]} step {event.global_step} batch {event.global_batch}"

    def lines(self) -> list[str]:
        """The stream as lines, ``initialize`` first and ``finalize`` last."""
        header = (
            f"loop: batches_per_step={self.batches_per_step}, "
            f"steps_per_epoch={self.steps_per_epoch}"
        )
        body = [self.describe_call(index) for index in range(len(self.calls))]
        return [header, "  initialize", *(f"  {line}" for line in body), "  finalize"]

    def __str__(self) -> str:
        return "\n".join(self.lines())


@attrs.define(eq=False)
class _Listener(Modifier):
    """A modifier whose window never opens; it keeps every event the session sends."""

    seen: list[Event] = attrs.field(factory=list)

    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        return True

    def on_event(self, state: State, event: Event, **kwargs: Any) -> None:
        self.seen.append(event)


class StreamRecorder:
    """A session with no model, stepped call by call to record a :class:`Stream`."""

    def __init__(self, batches_per_step: int = 1, steps_per_epoch: int | None = None) -> None:
        self._listener = _Listener()
        self._session = Session()
        self._session.initialize(
            recipe=[self._listener],
            batches_per_step=batches_per_step,
            steps_per_epoch=steps_per_epoch,
        )
        self._calls: list[str] = []
        self._positions: list[str] = []

    @property
    def position(self) -> str:
        """The session's position in the step grammar."""
        return self._session.position.value

    @property
    def calls(self) -> int:
        """Calls recorded so far."""
        return len(self._calls)

    @property
    def batches(self) -> int:
        """Batches completed so far."""
        return self._session.global_batch

    def allowed(self) -> list[str]:
        """The loop calls the step grammar allows now, in declaration order."""
        here = self.position
        return [
            trigger
            for trigger in SESSION_GRAMMAR.trigger_names()
            if trigger in LOOP_CALLS and _GRAMMAR.plans[(here, trigger)].rejection is None
        ]

    def apply(self, call: str) -> None:
        """Send ``call`` to the session (raises, changing nothing, if it is out of order)."""
        event_type, partial = LOOP_CALLS[call]
        position = self.position
        self._session.event(event_type, partial=partial)
        self._calls.append(call)
        self._positions.append(position)

    def stream(self) -> Stream:
        """What was recorded so far."""
        return Stream(
            batches_per_step=self._session.batches_per_step,
            steps_per_epoch=self._session.steps_per_epoch,
            calls=tuple(self._calls),
            events=tuple(self._listener.seen),
            positions=tuple(self._positions),
        )
