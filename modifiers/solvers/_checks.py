"""Argument checks shared by the solvers; each raises a ConfigError that names the fix."""

from __future__ import annotations

import math
from typing import Any, Final

import torch

from modfsm.engine.kernel.errors import ConfigError, ConfigTypeError
from modfsm.engine.kernel.validate import check_int
from modfsm.modifiers.quantization.args import STRATEGIES, QuantizationArgs
from modfsm.modifiers.solvers.errors import CalibrationError

__all__ = [
    "ACTORDERS",
    "check_actorder",
    "check_args",
    "check_block_size",
    "check_number",
    "check_weight_and_hessian",
]

ACTORDERS: Final = {"static": "weight", "weight": "weight", "group": "group", "dynamic": "group"}
"""Accepted ``actorder`` values -> what they mean (compressed-tensors' aliases)."""


def check_block_size(owner: str, value: Any) -> int:
    """``value`` if it is a whole number of at least 1."""
    return check_int(owner, "block_size", value, minimum=1)


def check_number(
    owner: str, field: str, value: Any, *, low: float, high: float | None = None, fix: str
) -> float:
    """``value`` as a float if it is a finite number in ``[low, high)`` (``[low, inf)``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigTypeError(
            f"{owner}.{field} must be a number, got {value!r} ({type(value).__name__}). "
            f"To fix, {fix}.",
            owner=owner,
            field=field,
            value=value,
        )
    if not math.isfinite(value) or value < low or (high is not None and value >= high):
        bounds = f"in [{low}, {high})" if high is not None else f"a finite number >= {low}"
        raise ConfigError(
            f"{owner}.{field} must be {bounds}, got {value!r}. To fix, {fix}.",
            owner=owner,
            field=field,
            value=value,
        )
    return float(value)


def check_dampening(owner: str, value: Any) -> float:
    """``dampening_frac``: a finite number >= 0 (a fraction of the mean Hessian diagonal)."""
    return check_number(
        owner,
        "dampening_frac",
        value,
        low=0.0,
        fix="pass a fraction of the mean Hessian diagonal >= 0, e.g. 0.01",
    )


def check_quantization_inputs(
    owner: str, weight: Any, hessian: Any, args: Any, actorder: Any
) -> tuple[str | None, torch.Tensor, torch.Tensor]:
    """The checked ``actorder``, the weight as (rows, columns) and the Hessian, for a
    quantizing solver; ``args`` checked against the number of columns."""
    order = check_actorder(actorder, owner=owner)
    flat, checked = check_weight_and_hessian(owner, weight, hessian)
    check_args(args, flat.shape[1], owner=owner)
    return order, flat, checked


def check_weight_and_hessian(
    owner: str, weight: Any, hessian: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight as a 2-D (outputs, inputs) view, and the Hessian, once both are checked.

    A weight of more than two dimensions (a convolution's) is read as
    ``weight.reshape(weight.shape[0], -1)``, so the Hessian must be that
    many inputs square.

    Raises:
        ConfigError: a weight that is not a finite floating tensor of at least
            two dimensions, or a Hessian of the wrong shape or type.
        CalibrationError: a Hessian that is not finite.
    """
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point() or weight.dim() < 2:
        raise ConfigTypeError(
            f"{owner}: weight must be a floating-point tensor of at least 2 dimensions "
            f"(outputs, inputs, ...), got {_describe(weight)}. To fix, pass a layer's weight.",
            owner=owner,
            field="weight",
            value=_describe(weight),
        )
    if not bool(torch.isfinite(weight).all()):
        raise ConfigError(
            f"{owner}: weight has non-finite values (inf or nan). To fix, repair the layer "
            "before compressing it.",
            owner=owner,
            field="weight",
            value=_describe(weight),
        )
    flat = weight.detach().reshape(weight.shape[0], -1)
    columns = flat.shape[1]
    if (
        not isinstance(hessian, torch.Tensor)
        or not hessian.is_floating_point()
        or tuple(hessian.shape) != (columns, columns)
    ):
        raise ConfigTypeError(
            f"{owner}: hessian must be a floating-point ({columns}, {columns}) tensor for a "
            f"weight with {columns} inputs, got {_describe(hessian)}. To fix, pass the "
            "HessianAccumulator.hessian() of this layer's inputs.",
            owner=owner,
            field="hessian",
            value=_describe(hessian),
        )
    if not bool(torch.isfinite(hessian).all()):
        raise CalibrationError(
            f"{owner}: the Hessian has non-finite values (inf or nan): the calibration inputs "
            "overflowed or held nan. To fix, check the calibration data and the model's "
            "activations for inf/nan.",
            problem="not finite",
        )
    return flat, hessian.detach().to(flat.device)


def check_actorder(actorder: Any, *, owner: str) -> str | None:
    """What ``actorder`` means: None, ``"weight"`` or ``"group"`` (see :data:`ACTORDERS`)."""
    if actorder is None:
        return None
    if isinstance(actorder, str) and actorder.lower() in ACTORDERS:
        return ACTORDERS[actorder.lower()]
    hint = " (llm-compressor reads true as 'group')" if isinstance(actorder, bool) else ""
    raise ConfigError(
        f"{owner}.actorder must be None, 'static', 'weight', 'group' or 'dynamic', got "
        f"{actorder!r}{hint}. To fix, pass one of those.",
        owner=owner,
        field="actorder",
        value=actorder,
    )


def check_args(args: Any, columns: int, *, owner: str) -> None:
    """``args`` is a weight scheme whose groups (if any) divide ``columns``."""
    if not isinstance(args, QuantizationArgs):
        raise ConfigTypeError(
            f"{owner}: args must be a QuantizationArgs, got {args!r}. To fix, build one, e.g. "
            "QuantizationArgs(num_bits=4, strategy='group', group_size=128).",
            owner=owner,
            field="args",
            value=args,
        )
    if args.strategy not in STRATEGIES or (args.strategy == "group") != (
        args.group_size is not None
    ):
        raise ConfigError(
            f"{owner}: args.strategy {args.strategy!r} with group_size {args.group_size!r} is "
            f"not a weight scheme. To fix, use one of {', '.join(STRATEGIES)}, with a "
            "group_size for 'group' only.",
            owner=owner,
            field="args",
            value=args,
        )
    if args.group_size is not None and (args.group_size < 1 or columns % args.group_size):
        raise ConfigError(
            f"{owner}: group_size {args.group_size} does not divide the layer's {columns} "
            "inputs. To fix, pick a group_size that divides it, or leave the layer out.",
            owner=owner,
            field="group_size",
            value=args.group_size,
        )


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"{value!r} ({type(value).__name__})"
