"""The stage lifecycle, declared once (``StageModifiers`` compiles it).

Theory of operation
-------------------
A stage is ``pending`` until every modifier in it is initialized, then
``initialized``; ``StageModifiers.finalize`` first commits ``finalizing``
(trigger ``begin_finalize``) and then finalizes the modifiers (trigger
``finalize``), committing ``applied`` when all are finalized. The work is done
by the stage's gate hooks ``initialize_modifiers`` / ``finalize_modifiers``,
which return True when every modifier is done and raise otherwise, so a stage
whose work stopped half-way stays ``pending`` or ``finalizing`` and resumes on
the next call. Events reach the modifiers only from ``initialized``. Once
``applied``, every call is ignored, as in the reference. See
``specs/stage.md``.
"""

from __future__ import annotations

import enum
from typing import Final

from modfsm.engine.kernel.compiler import (
    Declaration,
    HookSpec,
    Ignored,
    Rejection,
    StateSpec,
    TriggerSpec,
)
from modfsm.engine.model.events import EventType

__all__ = ["STAGE_LIFECYCLE", "StageState"]


class StageState(enum.StrEnum):
    """The states of :data:`STAGE_LIFECYCLE`."""

    PENDING = "pending"
    INITIALIZED = "initialized"
    FINALIZING = "finalizing"
    APPLIED = "applied"


_TRIGGERS: Final = ("initialize", "update", "begin_finalize", "finalize")

# fmt: off
STAGE_LIFECYCLE: Final = Declaration(
    name="stage-lifecycle",
    flags=("applied",),
    states=(
        StateSpec("pending", {"applied": False}, "some modifier is not initialized yet"),
        StateSpec("initialized", {"applied": False}, "every modifier is initialized"),
        StateSpec("finalizing", {"applied": False}, "finalization began; some modifiers may be finalized"),
        StateSpec("applied", {"applied": True}, "every modifier is finalized"),
    ),
    initial="pending",
    guards=(),
    hooks=(
        HookSpec("initialize_modifiers", takes_event=False, gate=True),
        HookSpec("finalize_modifiers", takes_event=False, gate=True),
        HookSpec("deliver"),
    ),
    triggers=(
        TriggerSpec("initialize", "initialize", "initialize_modifiers", "StageModifiers.initialize"),
        TriggerSpec("update", "update_event", None, "StageModifiers.update_event, any event"),
        TriggerSpec("begin_finalize", "finalize", None, "first half of StageModifiers.finalize"),
        TriggerSpec("finalize", "finalize", "finalize_modifiers", "second half of StageModifiers.finalize"),
    ),
    event_triggers=dict.fromkeys(EventType, "update"),
    transitions=(
        {"trigger": "initialize",     "source": "pending",                     "dest": "initialized"},
        {"trigger": "initialize",     "source": ["initialized", "finalizing"], "dest": None},
        {"trigger": "update",         "source": "initialized",                 "dest": None, "before": "deliver"},
        {"trigger": "begin_finalize", "source": "initialized",                 "dest": "finalizing"},
        {"trigger": "begin_finalize", "source": "finalizing",                  "dest": None},
        {"trigger": "finalize",       "source": "finalizing",                  "dest": "applied"},
    ),
    rejections=(
        Rejection("S1", ("pending",), ("update",), "not every modifier is initialized",
                  "initialize the stage (and every modifier in it) before sending events."),
        Rejection("S2", ("finalizing",), ("update",), "its finalization has begun",
                  "call finalize again to finish it; a finalizing stage takes no events."),
        Rejection("S3", ("pending",), ("begin_finalize",), "not every modifier is initialized",
                  "initialize the stage first; finalize applies an initialized stage."),
        Rejection("S4", ("pending", "initialized"), ("finalize",), "finalization has not begun",
                  "call StageModifiers.finalize(), which begins finalization first."),
    ),
    ignored=(
        Ignored(("applied",), _TRIGGERS, "an applied stage ignores further calls, as in the reference"),
    ),
)
# fmt: on
