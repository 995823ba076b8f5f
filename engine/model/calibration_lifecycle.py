"""The calibration lifecycle of llm-compressor 0.13 and later, declared once.

Theory of operation
-------------------
Since 0.13 the reference's base ``Modifier`` handles the three calibration
events itself, before and instead of the window logic of
:data:`~modfsm.engine.model.lifecycle.LIFECYCLE` (which follows 0.6.0-0.12,
where they are ordinary events that update a modifier inside its window):

* ``CALIBRATION_START`` calls ``on_calibration_start`` and sets ``started``,
  whatever ``should_start`` would say and without ``on_start``;
* ``SEQUENTIAL_EPOCH_END`` calls ``on_sequential_epoch_end`` (the pipeline passes
  the layer's ``modules``) and never ``on_update``; the state stays;
* ``CALIBRATION_END`` calls ``on_calibration_end`` and sets ``ended``, without
  ``on_end``.

``on_event`` still runs first on each of them. Everything else (the states and
their flags, ``initialize``, the training events, ``finalize``, the rejection
rules) is the first table's: this table is built from it, adding three
triggers, three hooks, their rows, and those triggers to the rejection rules
that refuse events (R3: not initialized, R4: already finalized). A modifier
class selects it with ``__lifecycle__ = CALIBRATION_LIFECYCLE``; the one-shot
modifiers do. ``specs/lifecycle.md`` section 7 says which reference versions
each table matches.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any, Final

import attrs

from modfsm.engine.kernel.declaration import Declaration, HookSpec, TriggerSpec
from modfsm.engine.model.events import EventType
from modfsm.engine.model.lifecycle import LIFECYCLE, LIVE_STATES

__all__ = ["CALIBRATION_HOOKS", "CALIBRATION_LIFECYCLE", "CALIBRATION_TRIGGERS"]

CALIBRATION_TRIGGERS: Final[Mapping[Hashable, str]] = {
    EventType.CALIBRATION_EPOCH_START: "calibration_start",
    EventType.SEQUENTIAL_EPOCH_END: "sequential_epoch_end",
    EventType.CALIBRATION_EPOCH_END: "calibration_end",
}
"""Calibration event type -> its trigger (the other types fire the first table's)."""

CALIBRATION_HOOKS: Final = ("on_calibration_start", "on_sequential_epoch_end", "on_calibration_end")
"""The hook each calibration trigger calls, in the order of :data:`CALIBRATION_TRIGGERS`."""

# fmt: off
_ROWS: Final[tuple[dict[str, Any], ...]] = (
    # calibration_start marks the modifier started; its end flag stays as it was
    {"trigger": "calibration_start",    "source": "initialized",     "dest": "started", "before": "on_calibration_start"},
    {"trigger": "calibration_start",    "source": "started",         "dest": None,      "before": "on_calibration_start"},
    {"trigger": "calibration_start",    "source": "ended",           "dest": None,      "before": "on_calibration_start"},
    {"trigger": "calibration_start",    "source": "ended_unstarted", "dest": "ended",   "before": "on_calibration_start"},
    # after each layer (group) of a sequential pipeline: no update, no move
    {"trigger": "sequential_epoch_end", "source": LIVE_STATES,       "dest": None,      "before": "on_sequential_epoch_end"},
    # calibration_end marks the modifier ended; its start flag stays as it was
    {"trigger": "calibration_end",      "source": "initialized",     "dest": "ended_unstarted", "before": "on_calibration_end"},
    {"trigger": "calibration_end",      "source": "started",         "dest": "ended",   "before": "on_calibration_end"},
    {"trigger": "calibration_end",      "source": "ended",           "dest": None,      "before": "on_calibration_end"},
    {"trigger": "calibration_end",      "source": "ended_unstarted", "dest": None,      "before": "on_calibration_end"},
)
# fmt: on


def _with_calibration(declaration: Declaration) -> Declaration:
    """``declaration`` (the modifier lifecycle) with the calibration triggers of 0.13+."""
    added = tuple(CALIBRATION_TRIGGERS.values())
    events = {t.name for t in declaration.triggers if t.call == "update_event"}
    triggers = (
        *declaration.triggers[:-1],  # finalize stays last
        *(
            TriggerSpec(name, "update_event", "on_event", f"update_event with {name.upper()}")
            for name in CALIBRATION_TRIGGERS.values()
        ),
        declaration.triggers[-1],
    )
    rejections = tuple(
        attrs.evolve(rule, triggers=(*rule.triggers, *added))
        if set(rule.triggers) <= events  # a rule that refuses every event refuses these too
        else rule
        for rule in declaration.rejections
    )
    return attrs.evolve(
        declaration,
        name="calibration-lifecycle",
        hooks=(*declaration.hooks, *(HookSpec(name) for name in CALIBRATION_HOOKS)),
        triggers=triggers,
        event_triggers={**declaration.event_triggers, **CALIBRATION_TRIGGERS},
        transitions=(*declaration.transitions, *_ROWS),
        rejections=rejections,
    )


CALIBRATION_LIFECYCLE: Final = _with_calibration(LIFECYCLE)
"""The modifier lifecycle with llm-compressor 0.13+'s calibration events (select it with
``__lifecycle__``); :data:`~modfsm.engine.model.lifecycle.LIFECYCLE` stays the default."""
