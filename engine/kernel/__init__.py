"""The kernel: how a state machine is declared, validated and compiled into dispatch tables.

It knows nothing of training loops; every other layer builds on it.
"""

from modfsm.engine.kernel.compiler import (
    IGNORE,
    SUPPORTED_ROW_KEYS,
    Branch,
    Cell,
    CompiledMachine,
    CompiledState,
    Plan,
    compile_machine,
    describe,
    specialize,
)
from modfsm.engine.kernel.declaration import (
    Declaration,
    HookSpec,
    Ignored,
    Rejection,
    StateSpec,
    TriggerSpec,
)
from modfsm.engine.kernel.errors import (
    ConfigError,
    ConfigTypeError,
    DeclarationError,
    HookReturnError,
    IllegalTransitionError,
    LifecycleError,
)

__all__ = [
    "IGNORE",
    "SUPPORTED_ROW_KEYS",
    "Branch",
    "Cell",
    "CompiledMachine",
    "CompiledState",
    "ConfigError",
    "ConfigTypeError",
    "Declaration",
    "DeclarationError",
    "HookReturnError",
    "HookSpec",
    "Ignored",
    "IllegalTransitionError",
    "LifecycleError",
    "Plan",
    "Rejection",
    "StateSpec",
    "TriggerSpec",
    "compile_machine",
    "describe",
    "specialize",
]
