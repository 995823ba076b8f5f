"""The runtime: objects that run a declared lifecycle.

``Modifier`` (with its torch hooks) and ``StageModifiers``, dispatched through the
tables the kernel compiled from the model's declarations.
"""

from modfsm.engine.runtime.hooks import (
    HOOK_TYPES,
    ForwardWrapHandle,
    Handle,
    HooksMixin,
)
from modfsm.engine.runtime.modifier import (
    START_PROBE,
    Modifier,
    ModifierInterface,
    handles,
    switch_class,
)
from modfsm.engine.runtime.stage import (
    StageError,
    StageModifiers,
)

__all__ = [
    "HOOK_TYPES",
    "START_PROBE",
    "ForwardWrapHandle",
    "Handle",
    "HooksMixin",
    "Modifier",
    "ModifierInterface",
    "StageError",
    "StageModifiers",
    "handles",
    "switch_class",
]
