"""Fake quantization and observers, as small functions on tensors.

Three grids: signed integers (``type: int``), ``float8_e4m3fn`` (``type: float``, 8 bits)
and FP4 E2M1 (``type: float``, 4 bits, strategy ``tensor_group``: the reference's NVFP4).

**Integers** are signed: ``[qmin, qmax] = [-2**(b-1), 2**(b-1) - 1]``. A range
``[lo, hi]`` is first widened to include 0, so that 0 (a pruned weight, a ReLU's
zero) is always exactly representable. Then

* symmetric: ``scale = max(-lo, hi) / qmax`` and ``zero_point = 0``;
* asymmetric: ``scale = (hi - lo) / (qmax - qmin)`` and
  ``zero_point = round(qmin - lo / scale)``.

``quantize(x) = clamp(round(x * (1 / scale)) + zero_point, qmin, qmax)`` and
``dequantize(q) = (q - zero_point) * scale``: the same float32 arithmetic as
torch's fused ``fake_quantize_per_*_affine`` ops, which the forward pass uses
(and whose backward is the straight-through estimator, clipped to the range).
So a value inside the range comes back within ``scale / 2`` of where it was.
(The reference divides a symmetric range by ``(qmax - qmin) / 2``, 127.5 for
int8, not by ``qmax``: modfsm's integer scales are that much larger.)

**float8_e4m3fn** (1 sign, 4 exponent and 3 mantissa bits, no infinities; the
largest magnitude is 448) is symmetric: ``scale = max(-lo, hi) / 448`` and the
zero point is 0 (int32, as for integers). ``quantize(x)`` is
``clamp(x / scale, -448, 448)`` cast to ``torch.float8_e4m3fn`` (torch's cast
rounds to the nearest value, ties to even, and is available on the CPU: no
emulation is needed) and ``dequantize(q) = q * scale`` in float32. A value
within the range comes back within half a float8 step of where it was (a
relative error of at most ``2**-4``, or ``2**-10 * scale`` near zero). A value
on the grid (``dequantize(q)``) quantizes back to ``q`` exactly, so
``fp8(w / scale) * scale == w`` bit for bit for a weight written on the grid.
Fake quantization returns exactly ``dequantize(quantize(x))`` forward, and the
clipped straight-through gradient backward (as for integers).

**FP4 E2M1** (1 sign, 2 exponent and 1 mantissa bit: 0, ±0.5, ±1, ±1.5, ±2, ±3,
±4, ±6) is grouped under two scales, as compressed-tensors' NVFP4:

* a **global scale** per tensor, float32: ``g = 448 * 6 / amax`` (:func:`global_scale`;
  ``amax`` the tensor's largest magnitude, for a ``local`` activation the largest its
  observer saw; an all-zero or non-finite range gives ``g = 1``), which maps the
  largest group scale onto float8's largest value;
* a **group scale** per ``group_size`` values along the last dimension, float8_e4m3fn:
  ``s = fp8(clamp(amax_group / 6 * g, -448, 448))`` (torch's exact cast), 0 replaced by
  0.125 (float8's epsilon, as the reference does, so no division by zero).

``quantize(x) = e2m1(clamp(x / (s / g), -6, 6))`` in float32 and ``dequantize(q) =
q * (s / g)``: the reference's arithmetic, order included (one float32 division
``s / g``, then ``x`` divided by it). ``e2m1`` rounds to the nearest grid value,
ties to the even code (0.25 -> 0, 0.75 -> 1, 1.25 -> 1, 1.75 -> 2, 2.5 -> 2, 3.5 -> 4,
5 -> 4), exactly as the reference's ``cast_to_fp4``. **Emulated:** torch 2.13 on the
CPU has ``torch.float4_e2m1fn_x2`` only as a storage dtype (two values a byte, a view
of ``uint8``): casting to or from it, and any arithmetic on it, raise
``NotImplementedError``; so modfsm keeps FP4 values as float32 numbers on the E2M1
grid (every one exactly representable), and ``modfsm oneshot`` packs them two a byte.
A value inside its group's range comes back within one unit of ``s / g`` (half the
largest step, 4 to 6), a relative error of at most 1/6 of the group's largest value;
a value on the grid quantizes back to itself, so ``e2m1(w / (s / g)) * (s / g) == w``
bit for bit for a weight written on its grid.

The pair ``(scale, zero_point)`` the functions pass around is, for ``tensor_group``,
``(s, g)``: the group scales (float32 holding float8_e4m3fn values, one per row) and
the global scale (float32, shape ``(1,)``) in the place of the zero point, which FP4
does not have (it is always 0). So the pair travels, and is saved in a checkpoint,
like any other; :func:`fake_quantize`, :func:`quantize` and :func:`dequantize` read
it as ``(s, g)`` for ``tensor_group`` arguments only.

Tensors are viewed as rows (:func:`rows`): one row for ``tensor``, one per
output channel for ``channel``, one per group of ``group_size`` inputs of each
output for ``group``, one per token (a row of the tensor flattened to
``(-1, last dimension)``) for ``token``, one per group of ``group_size`` consecutive
values along the last dimension for ``tensor_group``; each row has its own scale
(and zero point).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import attrs
import torch

from modfsm.modifiers.quantization.args import (
    FLOAT4_MAX,
    FLOAT8_MAX,
    TENSOR_GROUP,
    QuantizationArgs,
)

__all__ = [
    "E2M1_VALUES",
    "FLOAT8",
    "Observer",
    "dequantize",
    "dynamic_qparams",
    "fake_quantize",
    "global_scale",
    "grid_step_bound",
    "qparams",
    "quantize",
    "round_to_e2m1",
    "rows",
    "scale_shape",
    "weight_qparams",
]

FLOAT8: Final = torch.float8_e4m3fn
"""The dtype of 8-bit ``type: float`` values (and of FP4's group scales)."""
E2M1_VALUES: Final = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
"""The magnitudes of FP4 E2M1, by code (the low 3 bits; bit 3 is the sign)."""
_E2M1_UP: Final = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)
"""The midpoints between neighbouring magnitudes; a midpoint goes to the even code."""
_FLOAT8_EPS: Final = 0.125
"""What a group scale of 0 becomes (as the reference: float8_e4m3fn's epsilon)."""


def round_to_e2m1(x: torch.Tensor) -> torch.Tensor:
    """``x`` rounded to the nearest FP4 E2M1 value (float32), ties to the even code, values
    beyond ±6 clamped to ±6; -0.0 stays -0.0 and NaN becomes 0 (the reference's
    ``cast_to_fp4``, emulated exactly in float32)."""
    magnitude = x.float().abs()
    codes = torch.zeros_like(magnitude, dtype=torch.int64)
    for position, midpoint in enumerate(_E2M1_UP):
        # codes 0, 2, 4, 6 are even: a midpoint above an even code stays (>), else rises (>=)
        rises = magnitude > midpoint if position % 2 == 0 else magnitude >= midpoint
        codes += rises.to(torch.int64)
    values = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=x.device)[codes]
    return torch.where(torch.signbit(x), -values, values)


def global_scale(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """The FP4 global scale of the range ``[lo, hi]``: ``448 * 6 / max(-lo, hi)`` (float32,
    shape ``(1,)``); 1.0 where that is not finite (an all-zero or non-finite range)."""
    amax = torch.maximum(-lo.float().clamp(max=0.0), hi.float().clamp(min=0.0)).max()
    amax = amax.clamp(min=torch.finfo(torch.float32).tiny)
    scale = float(FLOAT8_MAX * FLOAT4_MAX) / amax
    return torch.nan_to_num(scale, nan=1.0, posinf=1.0, neginf=1.0).reshape(1)


def _fp4_scale(scale: torch.Tensor, global_: torch.Tensor) -> torch.Tensor:
    """The float32 scale a group's values are divided by: ``s / g`` (one per row)."""
    return (scale.float() / global_.float().reshape(())).reshape(-1, 1)


def rows(weight: torch.Tensor, args: QuantizationArgs) -> torch.Tensor:
    """``weight`` as a 2-D view with one row per scale (see the module docstring)."""
    if args.strategy == "tensor":
        return weight.reshape(1, -1)
    if args.strategy == "token":
        return weight.reshape(-1, weight.shape[-1])
    if args.strategy == TENSOR_GROUP:
        assert args.group_size is not None, "tensor_group requires a group_size"
        if weight.shape[-1] % args.group_size:  # groups must not straddle two rows
            raise ValueError(
                f"tensor_group: the last dimension {weight.shape[-1]} is not a multiple of "
                f"group_size {args.group_size}"
            )
        return weight.reshape(-1, args.group_size)
    flat = weight.reshape(weight.shape[0], -1)
    if args.strategy == "channel":
        return flat
    assert args.group_size is not None, "parse_args requires group_size with strategy 'group'"
    return flat.reshape(-1, args.group_size)


def scale_shape(weight: torch.Tensor, args: QuantizationArgs) -> tuple[int, ...]:
    """How a weight's scales are shaped on export: (1,), (out, 1) or (out, groups) (also
    for ``tensor_group``; ``(tokens, 1)`` for a per-token activation)."""
    if args.strategy == "tensor":
        return (1,)
    if args.strategy == "token":
        return (weight.numel() // weight.shape[-1], 1)
    if args.strategy == "channel":
        return (weight.shape[0], 1)
    assert args.group_size is not None
    return (weight.shape[0], weight[0].numel() // args.group_size)


def qparams(
    lo: torch.Tensor,
    hi: torch.Tensor,
    args: QuantizationArgs,
    global_: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (float32) and zero point (int32) for the range ``[lo, hi]`` (elementwise).

    For ``float`` arguments (symmetric) ``qmax`` is 448: ``scale = max(-lo, hi) / 448``.
    For ``tensor_group`` arguments, the pair ``(s, g)`` of the module docstring: float8
    group scales (held in float32) under the global scale ``global_`` (default: the
    global scale of all the ranges together, as for a weight).
    """
    if args.strategy == TENSOR_GROUP:
        g = global_scale(lo, hi) if global_ is None else global_.float().reshape(1)
        amax = torch.maximum(-lo.float().clamp(max=0.0), hi.float().clamp(min=0.0))
        limit = float(FLOAT8_MAX)
        local = (amax / float(FLOAT4_MAX) * g).clamp(-limit, limit).to(FLOAT8).float()
        return torch.where(local == 0, torch.full_like(local, _FLOAT8_EPS), local), g
    lo = lo.float().clamp(max=0.0)
    hi = hi.float().clamp(min=0.0)
    if args.symmetric:
        scale = torch.maximum(-lo, hi) / args.qmax
    else:
        scale = (hi - lo) / (args.qmax - args.qmin)
    # An all-zero range: any scale represents it; 1.0 keeps the arithmetic finite.
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    if args.symmetric:
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
    else:
        zero_point = torch.round(args.qmin - lo / scale).clamp(args.qmin, args.qmax).to(torch.int32)
    return scale, zero_point


def weight_qparams(
    weight: torch.Tensor, args: QuantizationArgs
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row scale and zero point of ``weight``'s current range (1-D, one per row)."""
    lo, hi = torch.aminmax(rows(weight.detach(), args), dim=1)
    return qparams(lo, hi, args)


def dynamic_qparams(
    x: torch.Tensor, args: QuantizationArgs, global_: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of an activation's own values (``dynamic: true``).

    ``tensor``: one (0-d) scale from the whole range; ``token``: one per row of
    ``x`` flattened to ``(-1, last dimension)`` (1-D); ``tensor_group``: ``(s, g)``,
    one group scale per group of ``x`` under ``global_`` (``dynamic: local``: the
    observer's) or, without it, the global scale of ``x`` itself (``dynamic: true``).
    No gradient flows to them.
    """
    if args.strategy == TENSOR_GROUP:
        lo, hi = torch.aminmax(rows(x.detach(), args), dim=1)
        return qparams(lo, hi, args, global_)
    if args.strategy == "tensor":
        lo, hi = torch.aminmax(x.detach())
        return qparams(lo, hi, args)
    return weight_qparams(x, args)


def grid_step_bound(
    scale: torch.Tensor, args: QuantizationArgs, zero_point: torch.Tensor | None = None
) -> float:
    """Half the largest step of the grid with these scales: the rounding bound of a value
    inside the range (``scale / 2`` for integers; for float8, whose steps are 32 units
    of ``scale`` between 256 and 448, ``16 * scale``). For ``tensor_group`` ``scale`` is
    the pair's ``s`` and ``zero_point`` its ``g`` (needed): FP4's largest step (4 to 6)
    is 2 units of ``s / g``, so the bound is the largest ``s / g`` (with a float32 ulp
    of slack)."""
    largest = float(scale.max())
    if args.strategy == TENSOR_GROUP:
        assert zero_point is not None, "tensor_group needs the global scale"
        step = float(_fp4_scale(scale, zero_point).max())
        return step * (1 + 4 * torch.finfo(torch.float32).eps)
    return largest * 16 if args.is_float else largest / 2


def fake_quantize(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, args: QuantizationArgs
) -> torch.Tensor:
    """Quantize and dequantize ``x`` (rows as :func:`rows` for more than one scale).

    Differentiable: the gradient passes unchanged where ``x`` lies inside the
    representable range and is zero outside it (torch's fused fake-quant ops for
    integers; the same clipped straight-through estimator for float8 and FP4, whose
    ``zero_point`` is the global scale: see the module docstring).
    """
    if args.strategy == TENSOR_GROUP:
        return _fake_fp4(x, scale, zero_point, args)
    if args.is_float:
        return _fake_float8(x, scale, args)
    if scale.numel() == 1:
        return torch.fake_quantize_per_tensor_affine(
            x, scale.reshape(()), zero_point.reshape(()), args.qmin, args.qmax
        )
    view = rows(x, args)
    out = torch.fake_quantize_per_channel_affine(view, scale, zero_point, 0, args.qmin, args.qmax)
    return out.reshape(x.shape)


def _per_row(values: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, 1)


def _to_float8(view: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``clamp(view / scale, -448, 448)`` cast to float8_e4m3fn (``view``: rows)."""
    limit = float(FLOAT8_MAX)
    return (view.float() / _per_row(scale.float())).clamp(-limit, limit).to(FLOAT8)


def _fake_float8(x: torch.Tensor, scale: torch.Tensor, args: QuantizationArgs) -> torch.Tensor:
    """Float8 fake quantization: ``dequantize(quantize(x))`` forward, exactly; the clipped
    straight-through estimator backward."""
    view = rows(x, args)
    scaled = view.detach().float() / _per_row(scale.float())
    limit = float(FLOAT8_MAX)
    values = scaled.clamp(-limit, limit).to(FLOAT8).float() * _per_row(scale.float())
    out = values.to(x.dtype)
    if x.requires_grad:
        # (view - view.detach()) is exactly 0 forward, so out keeps its value bit for bit
        # (a -0.0 may become +0.0); backward it passes the gradient where x is in range.
        inside = scaled.abs() <= limit
        out = out + (view - view.detach()) * inside
    return out.reshape(x.shape)


def _fake_fp4(
    x: torch.Tensor, scale: torch.Tensor, global_: torch.Tensor, args: QuantizationArgs
) -> torch.Tensor:
    """FP4 fake quantization: ``dequantize(quantize(x))`` forward, exactly; the clipped
    straight-through estimator backward."""
    view = rows(x, args)
    step = _fp4_scale(scale, global_)
    scaled = view.detach().float() / step
    limit = float(FLOAT4_MAX)
    out = (round_to_e2m1(scaled.clamp(-limit, limit)) * step).to(x.dtype)
    if x.requires_grad:
        out = out + (view - view.detach()) * (scaled.abs() <= limit)
    return out.reshape(x.shape)


def quantize(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, args: QuantizationArgs
) -> torch.Tensor:
    """The values ``x`` quantizes to, shaped like ``x``: int8 integers, float8_e4m3fn
    for 8-bit ``float`` arguments (whose zero point is 0), or FP4 E2M1 values held in
    float32 for ``tensor_group`` (``zero_point`` is then the global scale)."""
    if args.strategy == TENSOR_GROUP:
        view = rows(x.detach(), args).float() / _fp4_scale(scale, zero_point)
        limit = float(FLOAT4_MAX)
        return round_to_e2m1(view.clamp(-limit, limit)).reshape(x.shape)
    if args.is_float:
        return _to_float8(rows(x.detach(), args), scale).reshape(x.shape)
    view = rows(x.detach(), args)
    inverse = torch.reciprocal(_per_row(scale))
    q = torch.round(view * inverse) + _per_row(zero_point)
    return q.clamp(args.qmin, args.qmax).to(torch.int8).reshape(x.shape)


def dequantize(
    q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, args: QuantizationArgs
) -> torch.Tensor:
    """The float values (float32) the integers (or float8 values) ``q`` stand for, shaped
    like ``q``: ``(q - zero_point) * scale``, exact for float8 (whose zero point is 0);
    ``q * (s / g)`` for FP4 (``scale`` is ``s``, ``zero_point`` the global scale ``g``)."""
    if args.strategy == TENSOR_GROUP:
        return (rows(q, args).float() * _fp4_scale(scale, zero_point)).reshape(q.shape)
    view = rows(q, args).float()
    values = (view - _per_row(zero_point).float()) * _per_row(scale.float())
    return values.reshape(q.shape)


@attrs.define
class Observer:
    """Keeps the range of a layer's inputs (or outputs) for a static activation scale.

    ``minmax`` keeps the widest range seen; ``moving_average`` moves the range
    toward each batch's by ``averaging_constant`` (the first batch sets it);
    ``memoryless_minmax`` keeps the last batch's range.
    """

    args: QuantizationArgs
    lo: torch.Tensor | None = None
    hi: torch.Tensor | None = None

    @property
    def observed(self) -> bool:
        """True once a batch was seen."""
        return self.lo is not None

    def update(self, x: torch.Tensor) -> None:
        """Take ``x``'s range into account."""
        lo, hi = torch.aminmax(x.detach().float())
        if self.lo is None or self.hi is None or self.args.observer == "memoryless_minmax":
            self.lo, self.hi = lo, hi
        elif self.args.observer == "minmax":
            self.lo, self.hi = torch.minimum(self.lo, lo), torch.maximum(self.hi, hi)
        else:
            constant = self.args.averaging_constant
            self.lo = self.lo + constant * (lo - self.lo)
            self.hi = self.hi + constant * (hi - self.hi)

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero point of the kept range (for ``tensor_group`` arguments, whose
        group scales are computed per forward, see :meth:`global_scale`)."""
        assert self.lo is not None, "update() before qparams()"
        assert self.hi is not None, "update() before qparams()"
        return qparams(self.lo, self.hi, self.args)

    def global_scale(self) -> torch.Tensor:
        """The FP4 global scale of the kept range (``dynamic: local``), shape ``(1,)``."""
        assert self.lo is not None, "update() before global_scale()"
        assert self.hi is not None, "update() before global_scale()"
        return global_scale(self.lo, self.hi)

    def state_dict(self) -> dict[str, Any]:
        """The kept range (tensors), for a checkpoint."""
        if self.lo is None or self.hi is None:
            return {}
        return {"lo": self.lo.clone(), "hi": self.hi.clone()}

    def load_state_dict(
        self, saved: Mapping[str, Any], device: torch.device | str | None = None
    ) -> None:
        """Restore what :meth:`state_dict` returned, on ``device`` if given."""
        lo, hi = saved.get("lo"), saved.get("hi")
        if (
            set(saved) not in (set(), {"lo", "hi"})
            or (lo is None) != (hi is None)
            or not all(
                v is None
                or (
                    isinstance(v, torch.Tensor)
                    and v.numel() == 1
                    and v.is_floating_point()
                    and bool(torch.isfinite(v).all())
                )
                for v in (lo, hi)
            )
            or (lo is not None and hi is not None and bool(lo > hi))
        ):
            shown = sorted(map(str, saved))
            raise ValueError(
                f"an observer state needs finite scalar float tensors lo <= hi, got keys {shown}"
            )
        if device is not None and lo is not None and hi is not None:
            lo, hi = lo.to(device), hi.to(device)
        self.lo, self.hi = lo, hi
