"""Stand-ins for reference modifier types modfsm does not ship yet, for recipe tests.

Each has the reference's recipe argument names and validates them the way a real
modifier would (clear errors naming the field). They do nothing when run.
"""

from __future__ import annotations

from typing import Any

import attrs

from modfsm.engine import Modifier, State
from modfsm.engine.kernel.errors import ConfigError, ConfigTypeError
from modfsm.engine.kernel.validate import check_optional_number


def _fraction(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    owner = type(instance).__name__
    check_optional_number(owner, attribute.name, value, minimum=0)
    if value is not None and value > 1:
        raise ConfigError(
            f"{owner}.{attribute.name} must be a fraction in [0, 1], got {value!r}. "
            "To fix, write e.g. 0.5 for 50%.",
            owner=owner,
            field=attribute.name,
            value=value,
        )


def _names(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    owner = type(instance).__name__
    ok = isinstance(value, str) or (
        isinstance(value, list) and all(isinstance(item, str) for item in value)
    )
    if value is not None and not ok:
        raise ConfigTypeError(
            f"{owner}.{attribute.name} must be a name or a list of names, got {value!r}. "
            "To fix, write e.g. ['re:.*weight'].",
            owner=owner,
            field=attribute.name,
            value=value,
        )


@attrs.define(eq=False)
class _Inert(Modifier):
    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        return True


@attrs.define(eq=False)
class ConstantPruningModifier(_Inert):
    targets: str | list[str] = attrs.field(validator=_names)
    ignore: list[str] = attrs.field(factory=list, validator=_names)


@attrs.define(eq=False)
class MagnitudePruningModifier(_Inert):
    targets: str | list[str] = attrs.field(default="__ALL__", validator=_names)
    init_sparsity: float = attrs.field(default=0.0, validator=_fraction)
    final_sparsity: float = attrs.field(default=0.5, validator=_fraction)
    mask_structure: str = "unstructured"
    leave_enabled: bool = True


@attrs.define(eq=False)
class SparseGPTModifier(_Inert):
    sparsity: float = attrs.field(default=0.5, validator=_fraction)
    mask_structure: str = "0:0"
    targets: str | list[str] = attrs.field(default="__ALL__", validator=_names)


@attrs.define(eq=False)
class SmoothQuantModifier(_Inert):
    smoothing_strength: float = attrs.field(default=0.5, validator=_fraction)
    mappings: list[Any] | None = None


@attrs.define(eq=False)
class QuantizationModifier(_Inert):
    targets: str | list[str] = attrs.field(default="Linear", validator=_names)
    ignore: list[str] = attrs.field(factory=list, validator=_names)
    scheme: str | None = None
    config_groups: dict[str, Any] | None = None


@attrs.define(eq=False)
class GPTQModifier(QuantizationModifier):
    block_size: int = 128
    dampening_frac: float = attrs.field(default=0.01, validator=_fraction)


DOUBLES = (
    ConstantPruningModifier,
    MagnitudePruningModifier,
    SparseGPTModifier,
    SmoothQuantModifier,
    QuantizationModifier,
    GPTQModifier,
)
