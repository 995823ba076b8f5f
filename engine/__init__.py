"""modfsm's engine: events, state, the declared lifecycle machine and Modifier."""

from modfsm.engine.kernel.errors import (
    ConfigError,
    ConfigTypeError,
    DeclarationError,
    HookReturnError,
    IllegalTransitionError,
    LifecycleError,
)
from modfsm.engine.model.calibration_lifecycle import CALIBRATION_LIFECYCLE
from modfsm.engine.model.events import Event, EventType
from modfsm.engine.model.lifecycle import LIFECYCLE, LifecycleState
from modfsm.engine.model.state import Data, Hardware, LoggerManager, ModifiedState, State
from modfsm.engine.runtime.modifier import Modifier, ModifierInterface, handles

__all__ = [
    "CALIBRATION_LIFECYCLE",
    "LIFECYCLE",
    "ConfigError",
    "ConfigTypeError",
    "Data",
    "DeclarationError",
    "Event",
    "EventType",
    "Hardware",
    "HookReturnError",
    "IllegalTransitionError",
    "LifecycleError",
    "LifecycleState",
    "LoggerManager",
    "ModifiedState",
    "Modifier",
    "ModifierInterface",
    "State",
    "handles",
]
