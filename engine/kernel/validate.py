"""Argument checks shared by events, modifiers and the CLI.

Each check raises :class:`~modfsm.engine.kernel.errors.ConfigError` (or its ``TypeError``
twin) naming the owner, the argument, the value and how to fix it.
"""

from __future__ import annotations

import math
from typing import Any

from modfsm.engine.kernel.errors import ConfigError, ConfigTypeError

__all__ = ["check_int", "check_optional_int", "check_optional_number", "check_optional_str"]


def _type_error(owner: str, field: str, value: Any, wanted: str, fix: str) -> ConfigTypeError:
    return ConfigTypeError(
        f"{owner}.{field} must be {wanted}, got {value!r} ({type(value).__name__}). To fix, {fix}.",
        owner=owner,
        field=field,
        value=value,
    )


def check_int(owner: str, field: str, value: Any, *, minimum: int) -> int:
    """Return ``value`` if it is an int (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(owner, field, value, "an int", f"pass a whole number >= {minimum}")
    if value < minimum:
        raise ConfigError(
            f"{owner}.{field} must be >= {minimum}, got {value}. "
            f"To fix, pass a whole number >= {minimum}.",
            owner=owner,
            field=field,
            value=value,
        )
    return value


def check_optional_int(owner: str, field: str, value: Any, *, minimum: int) -> int | None:
    """Like :func:`check_int`, but ``None`` passes."""
    return None if value is None else check_int(owner, field, value, minimum=minimum)


def check_optional_number(
    owner: str, field: str, value: Any, *, minimum: float | None = None
) -> float | None:
    """Return ``value`` if it is ``None`` or a finite int/float (not a bool), >= ``minimum``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _type_error(
            owner,
            field,
            value,
            "a number or None",
            "pass an int or float (or None to leave it unset)",
        )
    if not math.isfinite(value):
        raise ConfigError(
            f"{owner}.{field} must be finite, got {value!r}. "
            "To fix, pass a finite number, or None to leave it unset.",
            owner=owner,
            field=field,
            value=value,
        )
    if minimum is not None and value < minimum:
        raise ConfigError(
            f"{owner}.{field} must be >= {minimum}, got {value!r}. "
            f"To fix, pass a number >= {minimum} (or None to leave it unset).",
            owner=owner,
            field=field,
            value=value,
        )
    return value


def check_optional_str(owner: str, field: str, value: Any) -> str | None:
    """Return ``value`` if it is ``None`` or a str."""
    if value is None or isinstance(value, str):
        return value
    raise _type_error(owner, field, value, "a str or None", "pass a name such as 'pruning'")
