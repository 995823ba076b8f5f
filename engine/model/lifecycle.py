"""The modifier lifecycle, declared once.

Theory of operation
-------------------
A modifier is created, initialized once, receives training events, and is
finalized once. Its window ``[start, end)`` opens on a ``BATCH_START`` for which
``should_start(event)`` holds and closes on a ``BATCH_END`` for which
``should_end(event)`` holds; inside the window every event also calls
``on_update``. The reference (llm-compressor's ``Modifier``) keeps this in four
booleans; here every combination it can reach with hooks that succeed is a
named state, and the four booleans are columns of the state table::

    state                      initialized started ended finalized
    created                    .           .       .     .
    initialized                x           .       .     .     waiting for start
    started                    x           x       .     .     inside the window
    ended                      x           x       x     .
    ended_unstarted            x           .       x     .     end passed before any start
    finalized_<live state>     x           as in <live state>  x

Every call runs, in order: the trigger's prelude (``on_initialize`` /
``on_finalize``, which must return a bool, or ``on_event``), at most one guard,
the row's hooks, and then the state changes. See :mod:`modfsm.engine.kernel.compiler` for the
exact semantics, ``specs/lifecycle.md`` for the specification and its
deviations from the reference, and ``modfsm.engine.tools.transitions_adapter`` for the
``transitions.Machine`` built from this same table.
"""

from __future__ import annotations

import enum
from typing import Any, Final, Protocol

from modfsm.engine.kernel.declaration import (
    Declaration,
    HookSpec,
    Rejection,
    StateSpec,
    TriggerSpec,
)
from modfsm.engine.model.events import Event, EventType

__all__ = [
    "FINALIZED_STATES",
    "LIFECYCLE",
    "LIVE_STATES",
    "LifecycleState",
    "Schedule",
    "default_should_end",
    "default_should_start",
]


class Schedule(Protocol):
    """What the default guards read: a modifier, or the trace replay's copy of one."""

    start: float | None
    end: float | None


def default_should_start(schedule: Schedule, event: Event) -> bool:
    """The default ``should_start``: the event lies in ``[start, end)``; never without ``start``.

    ``Modifier.should_start`` *is* this function, and the trace replay calls it on its
    copy of a modifier's schedule: the rule is written once.
    """
    start = schedule.start
    if start is None:
        return False
    index, end = event.current_index, schedule.end
    return start <= index and (end is None or index < end)


def default_should_end(schedule: Schedule, event: Event) -> bool:
    """The default ``should_end``: the event is at or past ``end``; never without ``end``
    (``Modifier.should_end`` is this function)."""
    end = schedule.end
    return end is not None and event.current_index >= end


class LifecycleState(enum.StrEnum):
    """The states of :data:`LIFECYCLE` (values equal the declared state names)."""

    CREATED = "created"
    INITIALIZED = "initialized"
    STARTED = "started"
    ENDED = "ended"
    ENDED_UNSTARTED = "ended_unstarted"
    FINALIZED_INITIALIZED = "finalized_initialized"
    FINALIZED_STARTED = "finalized_started"
    FINALIZED_ENDED = "finalized_ended"
    FINALIZED_ENDED_UNSTARTED = "finalized_ended_unstarted"


def _flags(initialized: int, started: int, ended: int, finalized: int) -> dict[str, bool]:
    return {
        "initialized": bool(initialized),
        "started": bool(started),
        "ended": bool(ended),
        "finalized": bool(finalized),
    }


LIVE_STATES: Final = ("initialized", "started", "ended", "ended_unstarted")
"""Initialized and not finalized: the states that accept events."""

FINALIZED_STATES: Final = tuple(f"finalized_{s}" for s in LIVE_STATES)
"""The absorbing states: one per live state, keeping its started/ended flags."""

_UPDATES: Final = ("batch_start", "batch_end", "other_event")

# fmt: off
_TRANSITIONS: Final[tuple[dict[str, Any], ...]] = (
    # initialize: on_initialize returned True; the synthetic BATCH_START at step 0 decides
    # whether the window is already open (start <= 0 and end None or > 0), as in the reference.
    {"trigger": "initialize",  "source": "created",         "dest": "started",         "conditions": "should_start", "before": "on_start"},
    {"trigger": "initialize",  "source": "created",         "dest": "initialized",     "unless": "should_start"},
    # waiting for the window
    {"trigger": "batch_start", "source": "initialized",     "dest": "started",         "conditions": "should_start", "before": ["on_start", "on_update"]},
    {"trigger": "batch_start", "source": "initialized",     "dest": None,              "unless": "should_start"},
    {"trigger": "batch_end",   "source": "initialized",     "dest": "ended_unstarted", "conditions": "should_end", "before": ["on_end", "on_update"]},
    {"trigger": "batch_end",   "source": "initialized",     "dest": None,              "unless": "should_end"},
    {"trigger": "other_event", "source": "initialized",     "dest": None},
    # inside the window: every event updates
    {"trigger": "batch_start", "source": "started",         "dest": None,              "before": "on_update"},
    {"trigger": "batch_end",   "source": "started",         "dest": "ended",           "conditions": "should_end", "before": ["on_end", "on_update"]},
    {"trigger": "batch_end",   "source": "started",         "dest": None,              "unless": "should_end", "before": "on_update"},
    {"trigger": "other_event", "source": "started",         "dest": None,              "before": "on_update"},
    # after the window
    {"trigger": "batch_start", "source": "ended",           "dest": None},
    {"trigger": "batch_end",   "source": "ended",           "dest": None},
    {"trigger": "other_event", "source": "ended",           "dest": None},
    # the end passed before any start; a later BATCH_START inside the window still
    # starts it (steps may go backwards), as in the reference
    {"trigger": "batch_start", "source": "ended_unstarted", "dest": "ended",           "conditions": "should_start", "before": ["on_start", "on_update"]},
    {"trigger": "batch_start", "source": "ended_unstarted", "dest": None,              "unless": "should_start"},
    {"trigger": "batch_end",   "source": "ended_unstarted", "dest": None},
    {"trigger": "other_event", "source": "ended_unstarted", "dest": None},
    # finalize: on_finalize returned True (False leaves the modifier where it is); every
    # torch hook registered through the modifier is removed
    {"trigger": "finalize",    "source": "initialized",     "dest": "finalized_initialized",     "before": "release_hooks"},
    {"trigger": "finalize",    "source": "started",         "dest": "finalized_started",         "before": "release_hooks"},
    {"trigger": "finalize",    "source": "ended",           "dest": "finalized_ended",           "before": "release_hooks"},
    {"trigger": "finalize",    "source": "ended_unstarted", "dest": "finalized_ended_unstarted", "before": "release_hooks"},
)
# fmt: on

_REJECTIONS: Final = (
    Rejection(
        "R1",
        LIVE_STATES,
        ("initialize",),
        "already initialized",
        "initialize each modifier once; build a new instance to run it again.",
    ),
    Rejection(
        "R2",
        FINALIZED_STATES,
        ("initialize",),
        "already finalized",
        "build a new instance to run the modifier again.",
    ),
    Rejection(
        "R3",
        ("created",),
        _UPDATES,
        "not initialized",
        "call initialize(state) before sending events.",
    ),
    Rejection(
        "R4",
        FINALIZED_STATES,
        _UPDATES,
        "already finalized",
        "stop sending events to a modifier once it is finalized.",
    ),
    Rejection(
        "R5",
        FINALIZED_STATES,
        ("finalize",),
        "already finalized",
        "finalize each modifier once.",
    ),
    Rejection(
        "R6",
        ("created",),
        ("finalize",),
        "not initialized",
        "call initialize(state) first; a modifier that was never initialized needs no finalize.",
    ),
)

LIFECYCLE: Final = Declaration(
    name="modifier-lifecycle",
    flags=("initialized", "started", "ended", "finalized"),
    states=(
        StateSpec(
            "created", _flags(0, 0, 0, 0), "built; initialize not yet called or returned False"
        ),
        StateSpec("initialized", _flags(1, 0, 0, 0), "initialized; waiting for the window to open"),
        StateSpec("started", _flags(1, 1, 0, 0), "inside the window; every event updates"),
        StateSpec("ended", _flags(1, 1, 1, 0), "the window closed after it opened"),
        StateSpec("ended_unstarted", _flags(1, 0, 1, 0), "the end passed before the window opened"),
        StateSpec("finalized_initialized", _flags(1, 0, 0, 1), "finalized while waiting"),
        StateSpec("finalized_started", _flags(1, 1, 0, 1), "finalized inside the window"),
        StateSpec("finalized_ended", _flags(1, 1, 1, 1), "finalized after the window"),
        StateSpec("finalized_ended_unstarted", _flags(1, 0, 1, 1), "finalized; never started"),
    ),
    initial="created",
    guards=("should_start", "should_end"),
    hooks=(
        HookSpec("on_initialize", takes_event=False, gate=True),
        HookSpec("on_finalize", takes_event=False, gate=True),
        HookSpec("on_event"),
        HookSpec("on_start"),
        HookSpec("on_update"),
        HookSpec("on_end"),
        HookSpec("release_hooks"),
    ),
    triggers=(
        TriggerSpec("initialize", "initialize", "on_initialize", "Modifier.initialize(state)"),
        TriggerSpec("batch_start", "update_event", "on_event", "update_event with BATCH_START"),
        TriggerSpec("batch_end", "update_event", "on_event", "update_event with BATCH_END"),
        TriggerSpec("other_event", "update_event", "on_event", "update_event with any other type"),
        TriggerSpec("finalize", "finalize", "on_finalize", "Modifier.finalize(state)"),
    ),
    event_triggers={
        event_type: {
            EventType.BATCH_START: "batch_start",
            EventType.BATCH_END: "batch_end",
        }.get(event_type, "other_event")
        for event_type in EventType
    },
    transitions=_TRANSITIONS,
    rejections=_REJECTIONS,
)
"""The modifier lifecycle; :class:`modfsm.engine.runtime.modifier.Modifier` compiles it."""
