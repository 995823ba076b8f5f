"""What to quantize and how: ``QuantizationArgs``, ``QuantizationScheme`` and the presets.

A recipe describes quantization in llm-compressor's shape, either with a preset
name::

    QuantizationModifier: {targets: Linear, scheme: W8A8}

or with explicit ``config_groups``::

    QuantizationModifier:
      config_groups:
        group_0:
          targets: [Linear]
          weights: {num_bits: 4, symmetric: true, strategy: group, group_size: 32}
          input_activations: {num_bits: 8, strategy: tensor, observer: moving_average}

Arguments of one tensor (:class:`QuantizationArgs`): ``num_bits`` (2 to 8),
``type`` (``int``, the only type), ``symmetric``, ``strategy`` (``tensor``,
``channel`` or ``group``), ``group_size`` (with ``group``), ``dynamic``
(activations: a scale per batch instead of an observed one), ``observer``
(``minmax`` or ``moving_average``) and ``observer_kwargs``
(``averaging_constant`` for ``moving_average``).

Presets (:data:`PRESETS`):

* ``W8A8``: int8 symmetric weights per output channel; int8 symmetric input
  activations per tensor with a static scale from a moving-average observer;
* ``W8A16``: int8 symmetric weights per output channel, float activations;
* ``W4A16``: int4 symmetric weights in groups of 128 inputs (``group_size`` on
  the modifier changes the group), float activations.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, Final

import attrs

from modfsm.engine.kernel.errors import ConfigError, ConfigTypeError

__all__ = [
    "OBSERVERS",
    "PRESETS",
    "STRATEGIES",
    "QuantizationArgs",
    "QuantizationScheme",
    "parse_args",
    "parse_config_groups",
    "preset",
]

STRATEGIES: Final = ("tensor", "channel", "group")
OBSERVERS: Final = ("minmax", "moving_average")
_ARG_KEYS: Final = (
    "num_bits",
    "type",
    "symmetric",
    "strategy",
    "group_size",
    "dynamic",
    "observer",
    "observer_kwargs",
)
_GROUP_KEYS: Final = ("targets", "weights", "input_activations")


def _fail(where: str, message: str, value: Any, *, type_error: bool = False) -> ConfigError:
    error = ConfigTypeError if type_error else ConfigError
    return error(f"{where}: {message}", owner="QuantizationModifier", field=where, value=value)


@attrs.frozen
class QuantizationArgs:
    """How one tensor (a weight, or a layer's input) is quantized.

    Attributes:
        num_bits: bits per value, 2 to 8 (signed integers in
            ``[-2**(num_bits-1), 2**(num_bits-1) - 1]``).
        symmetric: zero point fixed at 0 (True) or fitted to the range (False).
        strategy: one scale per ``tensor``, per output ``channel``, or per
            ``group`` of ``group_size`` inputs of each output.
        group_size: the group's width (``strategy == "group"`` only).
        dynamic: activations only: scale each batch from its own range instead
            of a static scale from an observer.
        observer: how a static activation range is kept: ``minmax`` (the widest
            range seen) or ``moving_average`` (an exponential average of each
            batch's range). Weights always use their current range.
        averaging_constant: the moving average's weight of a new batch, in (0, 1].
    """

    num_bits: int = 8
    symmetric: bool = True
    strategy: str = "tensor"
    group_size: int | None = None
    dynamic: bool = False
    observer: str = "minmax"
    averaging_constant: float = 0.01

    @property
    def qmin(self) -> int:
        """The smallest integer value."""
        return -(1 << (self.num_bits - 1))

    @property
    def qmax(self) -> int:
        """The largest integer value."""
        return (1 << (self.num_bits - 1)) - 1

    def describe(self) -> str:
        """A short human description, e.g. ``int8 sym channel``."""
        text = f"int{self.num_bits} {'sym' if self.symmetric else 'asym'} {self.strategy}"
        if self.strategy == "group":
            text += f"({self.group_size})"
        if self.dynamic:
            text += " dynamic"
        return text

    def to_dict(self) -> dict[str, Any]:
        """The recipe form (what :func:`parse_args` reads back to an equal value)."""
        out: dict[str, Any] = {
            "num_bits": self.num_bits,
            "type": "int",
            "symmetric": self.symmetric,
            "strategy": self.strategy,
        }
        if self.group_size is not None:
            out["group_size"] = self.group_size
        if self.dynamic:
            out["dynamic"] = True
        else:
            out["observer"] = self.observer
            if self.observer == "moving_average":
                out["observer_kwargs"] = {"averaging_constant": self.averaging_constant}
        return out


@attrs.frozen
class QuantizationScheme:
    """The quantization of one group of layers.

    Attributes:
        targets: the layers it applies to (see :mod:`modfsm.modifiers.targets`).
        weights: how their weights are quantized (None: not at all).
        input_activations: how their inputs are quantized (None: not at all).
    """

    targets: tuple[str, ...]
    weights: QuantizationArgs | None = None
    input_activations: QuantizationArgs | None = None

    def describe(self) -> str:
        """``W: int8 sym channel; A: int8 sym tensor`` style."""
        weights = self.weights.describe() if self.weights else "float"
        inputs = self.input_activations.describe() if self.input_activations else "float"
        return f"weights {weights}; inputs {inputs}"


def _check_bool(where: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(
            f"{where}.{key}", f"must be true or false, got {value!r}.", value, type_error=True
        )
    return value


def _check_int(where: str, key: str, value: Any, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(
            f"{where}.{key}",
            f"must be a whole number, got {value!r}. To fix, write e.g. {low if high else 32}.",
            value,
            type_error=True,
        )
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise _fail(f"{where}.{key}", f"must be {bounds}, got {value}.", value)
    return value


def _choice(where: str, key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise _fail(
            f"{where}.{key}",
            f"{value!r} is not one of {', '.join(choices)}. To fix, use one of those.",
            value,
        )
    return str(value)


def _unknown_keys(where: str, given: Mapping[str, Any], known: tuple[str, ...]) -> None:
    unknown = sorted(set(given) - set(known))
    if unknown:
        hints = [
            f"{key!r} -> {close[0]!r}"
            for key in unknown
            if (close := difflib.get_close_matches(key, known, n=1))
        ]
        hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
        raise _fail(
            where,
            f"unknown key(s) {unknown}{hint}. Known keys: {', '.join(known)}. To fix, use "
            "only those.",
            unknown,
        )


def parse_args(where: str, raw: Any, *, activations: bool) -> QuantizationArgs:
    """Read one tensor's arguments from their recipe form (a mapping).

    Raises:
        ConfigError: an unknown key or a bad value; the message names ``where``.
    """
    if not isinstance(raw, Mapping):
        raise _fail(where, f"must be a mapping of arguments, got {raw!r}.", raw, type_error=True)
    _unknown_keys(where, raw, _ARG_KEYS)
    if raw.get("type", "int") != "int":
        raise _fail(
            f"{where}.type", f"{raw['type']!r} is not supported; only 'int' is.", raw["type"]
        )
    num_bits = _check_int(where, "num_bits", raw.get("num_bits", 8), 2, 8)
    symmetric = _check_bool(where, "symmetric", raw.get("symmetric", True))
    strategy = _choice(where, "strategy", raw.get("strategy", "tensor"), STRATEGIES)
    group_size = raw.get("group_size")
    if strategy == "group":
        if group_size is None:
            raise _fail(
                f"{where}.group_size",
                "strategy 'group' needs a group_size. To fix, add e.g. group_size: 32.",
                None,
            )
        group_size = _check_int(where, "group_size", group_size, 1)
    elif group_size is not None:
        raise _fail(
            f"{where}.group_size",
            f"group_size applies to strategy 'group', not {strategy!r}. To fix, drop "
            "group_size or use strategy: group.",
            group_size,
        )
    dynamic = _check_bool(where, "dynamic", raw.get("dynamic", False))
    if dynamic and not activations:
        raise _fail(
            f"{where}.dynamic",
            "weights are always quantized from their current values; dynamic applies to "
            "input_activations. To fix, drop dynamic here.",
            dynamic,
        )
    if activations and strategy != "tensor":
        raise _fail(
            f"{where}.strategy",
            f"input activations are quantized per tensor, not per {strategy!r}. To fix, use "
            "strategy: tensor.",
            strategy,
        )
    observer = _choice(where, "observer", raw.get("observer", "minmax"), OBSERVERS)
    kwargs = raw.get("observer_kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise _fail(
            f"{where}.observer_kwargs", f"must be a mapping, got {kwargs!r}.", kwargs,
            type_error=True,
        )  # fmt: skip
    _unknown_keys(f"{where}.observer_kwargs", kwargs, ("averaging_constant",))
    constant = kwargs.get("averaging_constant", 0.01)
    if (
        isinstance(constant, bool)
        or not isinstance(constant, int | float)
        or not (0 < constant <= 1)
    ):
        raise _fail(
            f"{where}.observer_kwargs.averaging_constant",
            f"must be a number in (0, 1], got {constant!r}.",
            constant,
        )
    return QuantizationArgs(
        num_bits=num_bits,
        symmetric=symmetric,
        strategy=strategy,
        group_size=group_size,
        dynamic=dynamic,
        observer=observer,
        averaging_constant=float(constant),
    )


_INT8_CHANNEL: Final = QuantizationArgs(num_bits=8, symmetric=True, strategy="channel")
_INT8_STATIC_INPUT: Final = QuantizationArgs(
    num_bits=8, symmetric=True, strategy="tensor", observer="moving_average"
)

PRESETS: Final[Mapping[str, tuple[QuantizationArgs, QuantizationArgs | None]]] = {
    "W8A8": (_INT8_CHANNEL, _INT8_STATIC_INPUT),
    "W8A16": (_INT8_CHANNEL, None),
    "W4A16": (QuantizationArgs(num_bits=4, symmetric=True, strategy="group", group_size=128), None),
}
"""Preset name -> (weight arguments, input-activation arguments or None)."""


def preset(name: Any, targets: tuple[str, ...], group_size: int | None) -> QuantizationScheme:
    """The scheme a preset name stands for, applied to ``targets``.

    Raises:
        ConfigError: an unknown preset, or ``group_size`` for a preset without groups.
    """
    if not isinstance(name, str) or name.upper() not in PRESETS:
        close = difflib.get_close_matches(str(name).upper(), list(PRESETS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise _fail(
            "scheme",
            f"{name!r} is not a preset.{hint} Presets: {', '.join(PRESETS)}. To fix, use one "
            "of those or describe the scheme with config_groups.",
            name,
        )
    weights, inputs = PRESETS[name.upper()]
    if group_size is not None:
        if weights.strategy != "group":
            raise _fail(
                "group_size",
                f"preset {name!r} quantizes weights per {weights.strategy}, not in groups. To "
                "fix, drop group_size or use W4A16.",
                group_size,
            )
        weights = attrs.evolve(weights, group_size=_check_int("", "group_size", group_size, 1))
    return QuantizationScheme(targets=targets, weights=weights, input_activations=inputs)


def parse_config_groups(raw: Any) -> tuple[QuantizationScheme, ...]:
    """Read ``config_groups`` (name -> {targets, weights, input_activations}).

    Raises:
        ConfigError: a malformed group; the message names the group and key.
    """
    if not isinstance(raw, Mapping) or not raw:
        raise _fail(
            "config_groups",
            f"must be a non-empty mapping of group name -> group, got {raw!r}. To fix, write "
            "e.g. {group_0: {targets: [Linear], weights: {num_bits: 8}}}.",
            raw,
            type_error=not isinstance(raw, Mapping),
        )
    schemes = []
    for name, group in raw.items():
        where = f"config_groups.{name}"
        if not isinstance(group, Mapping):
            raise _fail(where, f"must be a mapping, got {group!r}.", group, type_error=True)
        _unknown_keys(where, group, _GROUP_KEYS)
        targets = group.get("targets")
        if isinstance(targets, str):
            targets = [targets]
        if (
            not isinstance(targets, list | tuple)
            or not targets
            or not all(isinstance(t, str) and t for t in targets)
        ):
            raise _fail(
                f"{where}.targets",
                f"must be a non-empty list of layer names or types, got {targets!r}. To fix, "
                "write e.g. targets: [Linear].",
                targets,
            )
        weights = group.get("weights")
        inputs = group.get("input_activations")
        if weights is None and inputs is None:
            raise _fail(
                where,
                "quantizes nothing. To fix, give weights and/or input_activations.",
                dict(group),
            )
        schemes.append(
            QuantizationScheme(
                targets=tuple(targets),
                weights=None
                if weights is None
                else parse_args(f"{where}.weights", weights, activations=False),
                input_activations=None
                if inputs is None
                else parse_args(f"{where}.input_activations", inputs, activations=True),
            )
        )
    return tuple(schemes)
