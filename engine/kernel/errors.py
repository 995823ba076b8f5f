"""Errors raised by modfsm.

Every error derives from :class:`LifecycleError`, and each public error also
derives from the builtin exception users already catch: an illegal lifecycle
call is a ``RuntimeError`` (as in the reference), a bad definition or bad input
is a ``ValueError`` or ``TypeError``. Messages name the object, the value and
end with a "To fix, ..." hint.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "ConfigError",
    "ConfigTypeError",
    "DeclarationError",
    "HookReturnError",
    "IllegalTransitionError",
    "LifecycleError",
]


class LifecycleError(Exception):
    """Root of every error modfsm raises."""


class IllegalTransitionError(LifecycleError, RuntimeError):
    """A lifecycle call that the declared machine forbids in the current state.

    Nothing changes when this is raised: no hook runs and the state stays.

    Attributes:
        modifier: the object whose lifecycle was called.
        state: the name of its lifecycle state when the call was made.
        trigger: the trigger the call maps to (``"initialize"``, ``"batch_start"``, ...).
        rule: the identifier of the declared rule that forbids it (``"R1"`` ... ``"R6"``).
        allowed: the calls that are allowed from ``state``.
    """

    def __init__(
        self,
        message: str,
        *,
        modifier: Any,
        state: str,
        trigger: str,
        rule: str,
        allowed: Sequence[str],
    ) -> None:
        super().__init__(message)
        self.modifier = modifier
        self.state = state
        self.trigger = trigger
        self.rule = rule
        self.allowed = tuple(allowed)


class HookReturnError(LifecycleError, TypeError):
    """A gate hook (``on_initialize``/``on_finalize``) returned something other than a bool.

    The state is unchanged; the hook itself has run.

    Attributes:
        modifier: the object whose hook misbehaved.
        hook: the hook's name.
        value: what it returned.
    """

    def __init__(self, message: str, *, modifier: Any, hook: str, value: Any) -> None:
        super().__init__(message)
        self.modifier = modifier
        self.hook = hook
        self.value = value


class DeclarationError(LifecycleError, ValueError):
    """A machine declaration that is inconsistent or uses a feature the compiler lacks.

    Attributes:
        declaration: the declaration's name.
        where: the part of the declaration at fault (``"transitions[3].after"``, ...).
    """

    def __init__(self, message: str, *, declaration: str, where: str) -> None:
        super().__init__(message)
        self.declaration = declaration
        self.where = where


class ConfigError(LifecycleError, ValueError):
    """A value given to a modifier, event or other modfsm object is invalid.

    Attributes:
        owner: the class (or object) that rejected the value.
        field: the argument's name.
        value: the rejected value.
    """

    def __init__(self, message: str, *, owner: str, field: str, value: Any) -> None:
        super().__init__(message)
        self.owner = owner
        self.field = field
        self.value = value


class ConfigTypeError(ConfigError, TypeError):
    """A value of the wrong type (a string where a number belongs, ...)."""
