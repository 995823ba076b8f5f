"""The model: training-loop events, the state modifiers see, and the declared machines.

The modifier lifecycle (and its calibration variant of llm-compressor 0.13+), the
stage lifecycle and the session's step grammar are declared here as data, and
:mod:`~modfsm.engine.model.machines` lists them by name.
"""

from modfsm.engine.model.calibration_lifecycle import CALIBRATION_LIFECYCLE
from modfsm.engine.model.events import (
    TRAINING_STEP_EVENTS,
    Event,
    EventType,
    not_an_event,
    simplest_fraction,
    to_event_type,
)
from modfsm.engine.model.lifecycle import (
    FINALIZED_STATES,
    LIFECYCLE,
    LIVE_STATES,
    LifecycleState,
)
from modfsm.engine.model.session_grammar import (
    COUNT_AFTER,
    SESSION_GRAMMAR,
    SessionState,
)
from modfsm.engine.model.stage_lifecycle import (
    STAGE_LIFECYCLE,
    StageState,
)
from modfsm.engine.model.state import (
    Data,
    Hardware,
    LoggerManager,
    State,
    SystemLogger,
)

__all__ = [
    "CALIBRATION_LIFECYCLE",
    "COUNT_AFTER",
    "FINALIZED_STATES",
    "LIFECYCLE",
    "LIVE_STATES",
    "SESSION_GRAMMAR",
    "STAGE_LIFECYCLE",
    "TRAINING_STEP_EVENTS",
    "Data",
    "Event",
    "EventType",
    "Hardware",
    "LifecycleState",
    "LoggerManager",
    "SessionState",
    "StageState",
    "State",
    "SystemLogger",
    "not_an_event",
    "simplest_fraction",
    "to_event_type",
]
