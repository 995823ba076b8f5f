"""What to quantize and how: ``QuantizationArgs``, ``QuantizationScheme`` and the presets.

A recipe describes quantization in llm-compressor's shape, either with a preset
name::

    QuantizationModifier: {targets: Linear, scheme: FP8_DYNAMIC, ignore: [lm_head]}

or with explicit ``config_groups``::

    QuantizationModifier:
      config_groups:
        group_0:
          targets: [Linear]
          weights: {num_bits: 8, type: float, strategy: channel}
          input_activations: {num_bits: 8, type: float, strategy: token, dynamic: true}
          output_activations: {num_bits: 8, type: int, strategy: tensor}

Arguments of one tensor (:class:`QuantizationArgs`, the reference's
``compressed_tensors`` ``QuantizationArgs`` in the subset modfsm implements):

=================== ==========================================================================
key                 meaning
=================== ==========================================================================
``num_bits``        ``type: int``: 2 to 8 (signed integers). ``type: float``: 8, or 4 with
                    ``strategy: tensor_group``.
``type``            ``int`` (default) or ``float``: 8 bits are IEEE-like ``float8_e4m3fn``
                    (4 exponent bits, 3 mantissa bits, no infinities, largest magnitude
                    448); 4 bits are FP4 E2M1 (2 exponent bits, 1 mantissa bit: 0, ±0.5,
                    ±1, ±1.5, ±2, ±3, ±4, ±6), emulated exactly in float32 (see
                    :mod:`~modfsm.modifiers.quantization.fake`). Other float widths, and
                    the reference's ``MXFP4`` (power-of-two group scales), are refused.
``symmetric``       zero point fixed at 0 (default) or fitted to the range (``int`` only:
                    a ``float`` grid is symmetric).
``strategy``        weights: one scale per ``tensor`` (default), per output ``channel``, or per
                    ``group`` of ``group_size`` inputs of each output. Activations: ``tensor``
                    or ``token`` (one scale per token: per row of the input flattened to
                    ``(-1, last dimension)``; ``dynamic: true`` only, as in the reference).
                    Both: ``tensor_group`` (4-bit ``float`` only, the reference's NVFP4): a
                    float8_e4m3fn scale per ``group`` of ``group_size`` values along the last
                    dimension, under one float32 global scale per tensor.
                    ``block`` and ``attn_head`` are refused.
``group_size``      the group's width (``strategy: group`` or ``tensor_group`` only).
``dynamic``         activations only: ``true`` computes the scale from each forward's own
                    values (no observer, no calibration); ``false`` (default) uses a static
                    scale kept by an observer during calibration or training; ``local``
                    (``strategy: tensor_group`` only, the reference's ``DynamicType.LOCAL``)
                    computes the group scales per forward under a static global scale, kept
                    by the observer (:attr:`QuantizationArgs.local`). A ``tensor_group``
                    activation is ``local`` or ``true``: its group scales are never static.
``observer``        how a static activation range is kept (see below); ignored with
                    ``dynamic: true`` and for weights, which always use their current range
                    (the reference's weight observers are memoryless too).
``observer_kwargs`` ``averaging_constant`` (in (0, 1], default 0.01) for ``moving_average``.
=================== ==========================================================================

Observers (modfsm's names, and the reference's):

* ``minmax``: the widest range seen. The reference calls this one ``static_minmax``, which
  modfsm accepts as the same observer. **Departure:** the reference's own ``minmax`` is a
  moving average with constant 0.01 (modfsm's ``moving_average``); modfsm keeps its earlier
  meaning of ``minmax``.
* ``moving_average``: the range moves toward each batch's by ``averaging_constant``.
* ``memoryless_minmax``: the range of the last batch seen.
* ``mse``, ``memoryless_mse`` and the other grid-search observers of the reference are
  refused (not implemented).

Presets (:data:`PRESETS`; names are case-insensitive), against ``compressed_tensors``'s
``PRESET_SCHEMES`` as shipped with llm-compressor 0.14. All weights are static and symmetric
unless said; "static ``minmax``" inputs need calibration (or training) data:

=============== ================================ ========================================
preset          weights                          input activations
=============== ================================ ========================================
``W8A8``        int8, per channel                int8, per token, dynamic
``W8A16``       int8, per channel [#w8a16]_      float
``W4A16``       int4, groups of 128              float
``W4A16_ASYM``  int4 asymmetric, groups of 128   float
``FP8``         float8_e4m3fn, per tensor        float8_e4m3fn, per tensor, static,
                                                 ``minmax`` (the reference's
                                                 ``static_minmax``)
``FP8_DYNAMIC`` float8_e4m3fn, per channel       float8_e4m3fn, per token, dynamic
``NVFP4A16``    FP4 E2M1, ``tensor_group`` of 16 float
``NVFP4``       FP4 E2M1, ``tensor_group`` of 16 FP4 E2M1, ``tensor_group`` of 16,
                                                 ``dynamic: local``, global scale
                                                 ``minmax`` (``static_minmax``)
=============== ================================ ========================================

The ``NVFP4`` presets' group scales are float8_e4m3fn and their global scale float32
(``448 * 6 / amax``, the tensor's largest magnitude; for ``NVFP4`` inputs the largest seen
during calibration). **Departure:** the reference gives fused layers (``q_proj``/``k_proj``/
``v_proj``, ``gate_proj``/``up_proj``) one shared weight global scale for its inference
kernels; modfsm computes one per layer. The reference's other presets (``MXFP4``,
``MXFP8``, ``FP8_BLOCK``, ``W4A8`` ...) are not named by its recipes here and are refused.

.. [#w8a16] As in the compressed-tensors releases of llm-compressor 0.6.0 (one scale per
   output channel). **Departure** from 0.14, whose ``W8A16`` uses groups of 128 (its
   ``WnA16`` template) and lets a layer's last group be shorter; modfsm's groups must
   divide a layer's input width. Write 0.14's with ``config_groups`` (``weights:
   {num_bits: 8, strategy: group, group_size: 128}``).

``group_size`` on the modifier changes the group of a grouped preset (``W4A16``,
``W4A16_ASYM``); the ``NVFP4`` presets' groups of 16 are the format's and refuse it
(write other widths with ``config_groups``).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, Final

import attrs

from modfsm.engine.kernel.errors import ConfigError, ConfigTypeError
from modfsm.modifiers.targets import check_names

__all__ = [
    "ACTIVATION_STRATEGIES",
    "FLOAT4_MAX",
    "FLOAT8_MAX",
    "OBSERVERS",
    "PRESETS",
    "STRATEGIES",
    "TENSOR_GROUP",
    "TYPES",
    "QuantizationArgs",
    "QuantizationScheme",
    "check_scheme_value",
    "parse_args",
    "parse_config_groups",
    "preset",
]

TYPES: Final = ("int", "float")
STRATEGIES: Final = ("tensor", "channel", "group")
"""The strategies of integer and float8 weights (and of any tensor quantized as rows of a
weight)."""
ACTIVATION_STRATEGIES: Final = ("tensor", "token")
"""The strategies of integer and float8 input and output activations."""
TENSOR_GROUP: Final = "tensor_group"
"""The strategy of 4-bit floats (weights and activations): float8 group scales under a
float32 global scale per tensor (the reference's NVFP4)."""
OBSERVERS: Final = ("minmax", "moving_average", "memoryless_minmax")
FLOAT8_MAX: Final = 448
"""The largest magnitude of ``float8_e4m3fn`` (``torch.finfo(torch.float8_e4m3fn).max``)."""
FLOAT4_MAX: Final = 6
"""The largest magnitude of FP4 E2M1 (``float4_e2m1fn``)."""

_OBSERVER_ALIASES: Final[Mapping[str, str]] = {"static_minmax": "minmax"}
_UNSUPPORTED_OBSERVERS: Final = (
    "mse",
    "memoryless_mse",
    "imatrix_mse",
    "nvfp4_expanded_mse",
    "nvfp4_expanded_imatrix",
)
_UNSUPPORTED_STRATEGIES: Final = ("block", "attn_head")
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
_GROUP_KEYS: Final = ("targets", "weights", "input_activations", "output_activations")


def _fail(where: str, message: str, value: Any, *, type_error: bool = False) -> ConfigError:
    error = ConfigTypeError if type_error else ConfigError
    return error(f"{where}: {message}", owner="QuantizationModifier", field=where, value=value)


@attrs.frozen
class QuantizationArgs:
    """How one tensor (a weight, a layer's input or its output) is quantized.

    Attributes:
        num_bits: bits per value: 2 to 8 for ``int`` (signed integers in
            ``[-2**(num_bits-1), 2**(num_bits-1) - 1]``), 8 for ``float``
            (float8_e4m3fn), or 4 for ``float`` with ``tensor_group`` (FP4 E2M1).
        symmetric: zero point fixed at 0 (True) or fitted to the range (False;
            ``int`` only).
        strategy: one scale per ``tensor``, per output ``channel``, per ``group``
            of ``group_size`` inputs of each output (weights), or per ``token``
            (activations, dynamic only: one scale per row of the tensor
            flattened to ``(-1, last dimension)``), or ``tensor_group`` (4-bit
            ``float`` only: a float8 scale per group of ``group_size`` values along
            the last dimension, under a float32 global scale per tensor).
        group_size: the group's width (``group`` and ``tensor_group`` only).
        dynamic: activations only: scale each forward from its own values instead
            of a static scale from an observer.
        observer: how a static activation range is kept: ``minmax`` (the widest
            range seen), ``moving_average`` (an exponential average of each
            batch's range) or ``memoryless_minmax`` (the last batch's range).
            Weights always use their current range.
        averaging_constant: the moving average's weight of a new batch, in (0, 1].
        type: ``int``, or ``float`` for ``float8_e4m3fn`` (8 bits) or FP4 E2M1
            (4 bits), both symmetric.
        local: ``tensor_group`` activations only (the recipe's ``dynamic: local``):
            the group scales are computed per forward and the global scale is static,
            from the observer's range. ``dynamic`` is then False: the observer and
            the calibration a static scale needs apply to the global scale.

    Raises:
        ConfigError: ``type`` is not ``int`` or ``float``, a ``float`` is not
            symmetric, 8-bit, or 4-bit with ``tensor_group``, ``tensor_group``
            lacks a ``group_size``, or ``local`` is set without ``tensor_group``
            or with ``dynamic`` (the other fields are checked by :func:`parse_args`).
    """

    num_bits: int = 8
    symmetric: bool = True
    strategy: str = "tensor"
    group_size: int | None = None
    dynamic: bool = False
    observer: str = "minmax"
    averaging_constant: float = 0.01
    type: str = "int"
    local: bool = False

    def __attrs_post_init__(self) -> None:
        if self.type not in TYPES:
            raise _fail(
                "type",
                f"{self.type!r} is not one of {', '.join(TYPES)}. To fix, use one of those.",
                self.type,
            )
        _check_grid("QuantizationArgs", self.type, self.num_bits, self.symmetric, self.strategy)
        if self.strategy == TENSOR_GROUP and self.group_size is None:
            raise _fail(
                "QuantizationArgs.group_size",
                "strategy 'tensor_group' needs a group_size. To fix, add e.g. group_size=16.",
                None,
            )
        if self.local and (self.strategy != TENSOR_GROUP or self.dynamic):
            raise _fail(
                "QuantizationArgs.local",
                f"local (a static global scale over dynamic group scales) needs strategy "
                f"'tensor_group' and dynamic=False, got strategy {self.strategy!r} and "
                f"dynamic={self.dynamic}. To fix, drop local or use strategy='tensor_group'.",
                self.local,
            )

    @property
    def is_float(self) -> bool:
        """True for ``float8_e4m3fn`` and FP4 E2M1, False for integers."""
        return self.type == "float"

    @property
    def is_fp4(self) -> bool:
        """True for FP4 E2M1 (4-bit ``float``, strategy ``tensor_group``)."""
        return self.type == "float" and self.num_bits == 4

    @property
    def qmin(self) -> int:
        """The smallest value of the grid (``-FLOAT8_MAX`` for float8, ``-FLOAT4_MAX`` for
        FP4)."""
        if self.is_float:
            return -self.qmax
        return -(1 << (self.num_bits - 1))

    @property
    def qmax(self) -> int:
        """The largest value of the grid (``FLOAT8_MAX`` for float8, ``FLOAT4_MAX`` for
        FP4)."""
        if self.is_float:
            return FLOAT4_MAX if self.num_bits == 4 else FLOAT8_MAX
        return (1 << (self.num_bits - 1)) - 1

    def describe(self) -> str:
        """A short human description, e.g. ``int8 sym channel``, ``fp8 sym token dynamic``
        or ``fp4 sym tensor_group(16) dynamic local``."""
        kind = f"fp{self.num_bits}" if self.is_float else f"int{self.num_bits}"
        text = f"{kind} {'sym' if self.symmetric else 'asym'} {self.strategy}"
        if self.strategy in ("group", TENSOR_GROUP):
            text += f"({self.group_size})"
        if self.dynamic:
            text += " dynamic"
        if self.local:
            text += " dynamic local"
        return text

    def to_dict(self) -> dict[str, Any]:
        """The recipe form (what :func:`parse_args` reads back to an equal value)."""
        out: dict[str, Any] = {
            "num_bits": self.num_bits,
            "type": self.type,
            "symmetric": self.symmetric,
            "strategy": self.strategy,
        }
        if self.group_size is not None:
            out["group_size"] = self.group_size
        if self.dynamic:
            out["dynamic"] = True
        else:
            if self.local:
                out["dynamic"] = "local"
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
        output_activations: how their outputs are quantized (None: not at all).
    """

    targets: tuple[str, ...]
    weights: QuantizationArgs | None = None
    input_activations: QuantizationArgs | None = None
    output_activations: QuantizationArgs | None = None

    def describe(self) -> str:
        """``weights int8 sym channel; inputs int8 sym tensor`` style (and ``; outputs ...``)."""
        weights = self.weights.describe() if self.weights else "float"
        inputs = self.input_activations.describe() if self.input_activations else "float"
        text = f"weights {weights}; inputs {inputs}"
        if self.output_activations is not None:
            text += f"; outputs {self.output_activations.describe()}"
        return text


def _check_grid(where: str, kind: str, num_bits: int, symmetric: bool, strategy: str) -> None:
    """Refuse a grid modfsm does not implement: ``where`` prefixes the field named."""
    if kind != "float":
        if strategy == TENSOR_GROUP:
            raise _fail(
                f"{where}.strategy",
                f"strategy 'tensor_group' (float8 group scales under a global scale, the "
                f"reference's NVFP4) is for type: float with num_bits: 4, got type {kind!r}. "
                "To fix, use type: float with num_bits: 4, or strategy: group for integer "
                "groups.",
                strategy,
            )
        return
    if num_bits == 4 and strategy != TENSOR_GROUP:
        raise _fail(
            f"{where}.num_bits",
            f"type 'float' with strategy {strategy!r} is 8-bit float8_e4m3fn only, got "
            "num_bits 4: 4-bit floats (FP4 E2M1, the reference's NVFP4) are grouped under "
            "a global scale. To fix, use num_bits: 8, or strategy: tensor_group with "
            "group_size: 16 for FP4, or type: int.",
            num_bits,
        )
    if num_bits not in (4, 8):
        raise _fail(
            f"{where}.num_bits",
            f"type 'float' is 8-bit float8_e4m3fn only, got num_bits {num_bits} (or 4-bit "
            "FP4 E2M1 with strategy: tensor_group); other float widths (the reference's "
            "MXFP6 and the like) are not supported. To fix, use num_bits: 8 (or 4 with "
            "strategy: tensor_group) with type: float, or type: int.",
            num_bits,
        )
    if num_bits == 8 and strategy == TENSOR_GROUP:
        raise _fail(
            f"{where}.strategy",
            "strategy 'tensor_group' (float8 group scales under a global scale, the "
            "reference's NVFP4) is for 4-bit FP4 E2M1 values, got num_bits 8. To fix, use "
            "num_bits: 4, or strategy: group, channel or tensor for float8_e4m3fn.",
            strategy,
        )
    if not symmetric:
        raise _fail(
            f"{where}.symmetric",
            f"type 'float' is symmetric only (float8_e4m3fn and FP4 E2M1 have no zero point "
            f"here), got symmetric={symmetric}. To fix, use symmetric: true, or type: int "
            "for an asymmetric grid.",
            symmetric,
        )


def _check_bool(where: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(
            f"{where}.{key}",
            f"must be true or false, got {value!r}. To fix, write true or false.",
            value,
            type_error=True,
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
        raise _fail(
            f"{where}.{key}",
            f"must be {bounds}, got {value}. To fix, use a value in that range.",
            value,
        )
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


def _parse_type(where: str, raw: Mapping[str, Any]) -> str:
    kind = raw.get("type", "int")
    if isinstance(kind, str) and kind.lower() in TYPES:
        return kind.lower()
    raise _fail(
        f"{where}.type",
        f"{kind!r} is not one of {', '.join(TYPES)}. To fix, write type: int, or type: float "
        "for float8_e4m3fn (or FP4 E2M1 with num_bits: 4).",
        kind,
    )


def _parse_strategy(where: str, raw: Mapping[str, Any], *, activations: bool) -> str:
    strategy = raw.get("strategy", "tensor")
    choices = (*(ACTIVATION_STRATEGIES if activations else STRATEGIES), TENSOR_GROUP)
    if strategy in choices:
        return str(strategy)
    if activations and strategy in ("channel", "group"):
        raise _fail(
            f"{where}.strategy",
            f"activations are quantized per token or per tensor, not per {strategy!r} (or, "
            "as 4-bit floats, in groups with strategy: tensor_group). To fix, use strategy: "
            "tensor (static or dynamic) or strategy: token with dynamic: true.",
            strategy,
        )
    if not activations and strategy == "token":
        raise _fail(
            f"{where}.strategy",
            "strategy 'token' applies to activations; a weight has no tokens. To fix, use "
            f"one of {', '.join(STRATEGIES)}.",
            strategy,
        )
    unsupported = (
        f" ({', '.join(_UNSUPPORTED_STRATEGIES)}: the reference's FP8_BLOCK and "
        "attention-head strategies, are not supported)"
        if strategy in _UNSUPPORTED_STRATEGIES
        else ""
    )
    raise _fail(
        f"{where}.strategy",
        f"{strategy!r} is not one of {', '.join(choices)}{unsupported}. To fix, use one of those.",
        strategy,
    )


def _parse_observer(where: str, raw: Mapping[str, Any]) -> str:
    observer = raw.get("observer")
    if observer is None:
        return "minmax"
    if isinstance(observer, str):  # the reference's registry names, in any case
        observer = _OBSERVER_ALIASES.get(observer.lower(), observer.lower())
    if observer in _UNSUPPORTED_OBSERVERS:
        raise _fail(
            f"{where}.observer",
            f"{observer!r} is not one of {', '.join(OBSERVERS)}: the MSE observers (a grid "
            "search over clipped ranges) are not supported. To fix, use one of "
            f"{', '.join(OBSERVERS)} or static_minmax (= minmax).",
            observer,
        )
    return _choice(where, "observer", observer, OBSERVERS)


def parse_args(where: str, raw: Any, *, activations: bool) -> QuantizationArgs:
    """Read one tensor's arguments from their recipe form (a mapping).

    Args:
        where: how messages name the arguments, e.g. ``config_groups.group_0.weights``.
        raw: the mapping of arguments.
        activations: True for input or output activations, False for weights.

    Raises:
        ConfigError: an unknown key or a bad value; the message names ``where``,
            the key and the value, and says how to fix it.
    """
    if not isinstance(raw, Mapping):
        raise _fail(
            where,
            f"must be a mapping of arguments, got {raw!r}. To fix, write e.g. "
            "{num_bits: 8, strategy: tensor}.",
            raw,
            type_error=True,
        )
    _unknown_keys(where, raw, _ARG_KEYS)
    kind = _parse_type(where, raw)
    num_bits = _check_int(where, "num_bits", raw.get("num_bits", 8), 2, 8)
    symmetric = _check_bool(where, "symmetric", raw.get("symmetric", True))
    strategy = _parse_strategy(where, raw, activations=activations)
    _check_grid(where, kind, num_bits, symmetric, strategy)
    group_size = raw.get("group_size")
    if strategy in ("group", TENSOR_GROUP):
        if group_size is None:
            raise _fail(
                f"{where}.group_size",
                f"strategy {strategy!r} needs a group_size. To fix, add e.g. group_size: "
                f"{16 if strategy == TENSOR_GROUP else 32}.",
                None,
            )
        group_size = _check_int(where, "group_size", group_size, 1)
    elif group_size is not None:
        raise _fail(
            f"{where}.group_size",
            f"group_size applies to strategy 'group' (or 'tensor_group'), not {strategy!r}. "
            "To fix, drop group_size or use strategy: group.",
            group_size,
        )
    raw_dynamic = raw.get("dynamic", False)
    local = isinstance(raw_dynamic, str) and raw_dynamic.lower() == "local"
    if local and not activations:
        raise _fail(
            f"{where}.dynamic",
            f"{raw_dynamic!r} (dynamic group scales under a static global scale) applies to "
            "input_activations and output_activations with strategy: tensor_group; weights "
            "are always quantized from their current values. To fix, drop dynamic here.",
            raw_dynamic,
        )
    if local and strategy != TENSOR_GROUP:
        raise _fail(
            f"{where}.dynamic",
            f"must be true or false, or 'local' with strategy: tensor_group; got "
            f"{raw_dynamic!r} with strategy {strategy!r}. To fix, write true or false, or "
            "use strategy: tensor_group (type: float, num_bits: 4) with dynamic: local.",
            raw_dynamic,
        )
    dynamic = False if local else _check_bool(where, "dynamic", raw_dynamic)
    if activations and strategy == TENSOR_GROUP and not (local or dynamic):
        raise _fail(
            f"{where}.dynamic",
            "strategy 'tensor_group' activations take their group scales from each "
            "forward's values; static group scales are not supported, got dynamic: false. "
            "To fix, use dynamic: local (a calibrated global scale, as the reference's "
            "NVFP4) or dynamic: true.",
            raw_dynamic,
        )
    if dynamic and not activations:
        raise _fail(
            f"{where}.dynamic",
            "weights are always quantized from their current values; dynamic applies to "
            "input_activations and output_activations. To fix, drop dynamic here.",
            dynamic,
        )
    if strategy == "token" and not dynamic:
        raise _fail(
            f"{where}.strategy",
            "strategy 'token' is dynamic only (one scale per token, computed at run time); a "
            "static scale per token cannot be calibrated. To fix, add dynamic: true, or use "
            "strategy: tensor for a static scale.",
            strategy,
        )
    observer = _parse_observer(where, raw)
    kwargs = raw.get("observer_kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise _fail(
            f"{where}.observer_kwargs",
            f"must be a mapping, got {kwargs!r}. To fix, write e.g. {{averaging_constant: 0.01}}.",
            kwargs,
            type_error=True,
        )
    _unknown_keys(f"{where}.observer_kwargs", kwargs, ("averaging_constant",))
    constant = kwargs.get("averaging_constant", 0.01)
    if (
        isinstance(constant, bool)
        or not isinstance(constant, int | float)
        or not (0 < constant <= 1)
    ):
        raise _fail(
            f"{where}.observer_kwargs.averaging_constant",
            f"must be a number in (0, 1], got {constant!r}. To fix, write e.g. 0.01.",
            constant,
        )
    if dynamic:  # no observer: the recipe's observer (if any) is ignored, as in the reference
        observer, constant = "minmax", 0.01
    return QuantizationArgs(
        num_bits=num_bits,
        symmetric=symmetric,
        strategy=strategy,
        group_size=group_size,
        dynamic=dynamic,
        observer=observer,
        averaging_constant=float(constant),
        type=kind,
        local=local,
    )


PRESETS: Final[Mapping[str, tuple[QuantizationArgs, QuantizationArgs | None]]] = {
    "W8A8": (
        QuantizationArgs(num_bits=8, symmetric=True, strategy="channel"),
        QuantizationArgs(num_bits=8, symmetric=True, strategy="token", dynamic=True),
    ),
    "W8A16": (QuantizationArgs(num_bits=8, symmetric=True, strategy="channel"), None),
    "W4A16": (QuantizationArgs(num_bits=4, symmetric=True, strategy="group", group_size=128), None),
    "W4A16_ASYM": (
        QuantizationArgs(num_bits=4, symmetric=False, strategy="group", group_size=128),
        None,
    ),
    "FP8": (
        QuantizationArgs(type="float", strategy="tensor"),
        QuantizationArgs(type="float", strategy="tensor", observer="minmax"),
    ),
    "FP8_DYNAMIC": (
        QuantizationArgs(type="float", strategy="channel"),
        QuantizationArgs(type="float", strategy="token", dynamic=True),
    ),
    "NVFP4A16": (
        QuantizationArgs(num_bits=4, type="float", strategy=TENSOR_GROUP, group_size=16),
        None,
    ),
    "NVFP4": (
        QuantizationArgs(num_bits=4, type="float", strategy=TENSOR_GROUP, group_size=16),
        QuantizationArgs(
            num_bits=4,
            type="float",
            strategy=TENSOR_GROUP,
            group_size=16,
            local=True,
            observer="minmax",
        ),
    ),
}
"""Preset name -> (weight arguments, input-activation arguments or None); see the module
docstring's table for how each compares with the reference."""


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
        if weights.strategy == TENSOR_GROUP:
            raise _fail(
                "group_size",
                f"preset {name!r} has FP4 groups of {weights.group_size}, the NVFP4 format's "
                f"(what its kernels read), so group_size {group_size!r} does not apply. To "
                "fix, drop group_size, or write config_groups with strategy: tensor_group and "
                "your group_size.",
                group_size,
            )
        if weights.strategy != "group":
            grouped = ", ".join(n for n, (w, _) in PRESETS.items() if w.strategy == "group")
            raise _fail(
                "group_size",
                f"preset {name!r} quantizes weights per {weights.strategy}, not in groups, so "
                f"group_size {group_size!r} does not apply. To fix, drop group_size or use a "
                f"grouped preset ({grouped}).",
                group_size,
            )
        weights = attrs.evolve(weights, group_size=_check_int("", "group_size", group_size, 1))
    return QuantizationScheme(targets=targets, weights=weights, input_activations=inputs)


def parse_config_groups(raw: Any) -> tuple[QuantizationScheme, ...]:
    """Read ``config_groups`` (name -> {targets, weights, input_activations,
    output_activations}).

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
            raise _fail(
                where,
                f"must be a mapping, got {group!r}. To fix, write e.g. {{targets: [Linear], "
                "weights: {num_bits: 8}}.",
                group,
                type_error=True,
            )
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
        parts = {key: group.get(key) for key in _GROUP_KEYS[1:]}
        if all(value is None for value in parts.values()):
            raise _fail(
                where,
                "quantizes nothing. To fix, give weights, input_activations and/or "
                "output_activations.",
                dict(group),
            )
        parsed = {
            key: None
            if value is None
            else parse_args(f"{where}.{key}", value, activations=key != "weights")
            for key, value in parts.items()
        }
        schemes.append(
            QuantizationScheme(
                targets=tuple(targets),
                weights=parsed["weights"],
                input_activations=parsed["input_activations"],
                output_activations=parsed["output_activations"],
            )
        )
    return tuple(schemes)


def check_scheme_value(owner: str, example: str, value: Any) -> None:
    """A one-shot modifier's ``scheme``: None, a preset name, or preset name -> targets.

    Raises:
        ConfigError: anything else (or bad targets), naming ``owner.scheme`` and the fix.
    """
    if value is None or isinstance(value, str):
        return
    if isinstance(value, Mapping) and value and all(isinstance(k, str) for k in value):
        for name, targets in value.items():
            check_names(owner, f"scheme.{name}", targets)
        return
    raise ConfigError(
        f"{owner}.scheme must be a preset name such as {example!r}, or a mapping of preset "
        f"name to targets such as {{{example}: [Linear]}}, got {value!r}. To fix, write one "
        "of those, or describe the scheme with config_groups.",
        owner=owner,
        field="scheme",
        value=value,
    )


def parse_schemes(
    owner: str,
    scheme: str | Mapping[str, Any] | None,
    config_groups: Any,
    targets: str | list[str] | tuple[str, ...] | None,
    *,
    group_size: int | None = None,
    example: str = "W8A8",
) -> tuple[QuantizationScheme, ...]:
    """A quantizing modifier's schemes, from exactly one of ``scheme`` and ``config_groups``.

    ``scheme`` is a preset name (for ``targets``, default ``Linear``; ``group_size``
    changes a grouped preset's group) or a mapping of preset names to their targets;
    ``config_groups`` names its targets per group (see :func:`parse_config_groups`).

    Raises:
        ConfigError: both or neither given, or ``targets``/``group_size`` where the
            schemes name their own (the message names the field and the fix).
    """

    def refuse(field: str, value: Any, message: str) -> ConfigError:
        return ConfigError(f"{owner}{message}", owner=owner, field=field, value=value)

    if (scheme is None) == (config_groups is None):
        raise refuse("scheme", scheme, f" needs exactly one of scheme and config_groups, got "
                     f"{'both' if scheme is not None else 'neither'}. To fix, write e.g. "
                     f"scheme: {example} (with targets: Linear), or config_groups.")  # fmt: skip
    if scheme is None:
        if targets is not None:
            raise refuse("targets", targets, f": with config_groups, each group names its "
                         f"targets; the modifier's targets={targets!r} would be ignored. To "
                         "fix, move the targets into the config groups.")  # fmt: skip
        if group_size is not None:
            raise refuse("group_size", group_size, ": group_size applies to a scheme preset; "
                         "with config_groups set group_size inside the weights' arguments. To "
                         "fix, move it there.")  # fmt: skip
        return parse_config_groups(config_groups)
    if isinstance(scheme, str):
        names = targets if targets is not None else "Linear"
        return (preset(scheme, (names,) if isinstance(names, str) else tuple(names), group_size),)
    if targets is not None:
        raise refuse("targets", targets, f": scheme {dict(scheme)!r} names the targets of each "
                     f"preset; targets={targets!r} would be ignored. To fix, drop targets or "
                     "write scheme as a preset name.")  # fmt: skip
    return tuple(
        preset(name, (t,) if isinstance(t, str) else tuple(t), group_size)
        for name, t in scheme.items()
    )
