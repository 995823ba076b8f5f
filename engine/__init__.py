"""modfsm's engine: events, state, the declared lifecycle machine and Modifier."""

from engine.errors import (
    ConfigError,
    ConfigTypeError,
    DeclarationError,
    HookReturnError,
    IllegalTransitionError,
    LifecycleError,
)
from engine.events import Event, EventType
from engine.lifecycle import LIFECYCLE, LifecycleState
from engine.modifier import Modifier, ModifierInterface, handles
from engine.state import Data, Hardware, LoggerManager, State

__all__ = [
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
    "Modifier",
    "ModifierInterface",
    "State",
    "handles",
]
