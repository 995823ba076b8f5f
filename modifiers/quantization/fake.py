"""Fake quantization and observers, as small functions on tensors.

Two grids: signed integers (``type: int``) and ``float8_e4m3fn`` (``type: float``).

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

Tensors are viewed as rows (:func:`rows`): one row for ``tensor``, one per
output channel for ``channel``, one per group of ``group_size`` inputs of each
output for ``group``, one per token (a row of the tensor flattened to
``(-1, last dimension)``) for ``token``; each row has its own scale and zero point.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import attrs
import torch

from modfsm.modifiers.quantization.args import FLOAT8_MAX, QuantizationArgs

__all__ = [
    "FLOAT8",
    "Observer",
    "dequantize",
    "dynamic_qparams",
    "fake_quantize",
    "grid_step_bound",
    "qparams",
    "quantize",
    "rows",
    "scale_shape",
    "weight_qparams",
]

FLOAT8: Final = torch.float8_e4m3fn
"""The dtype of ``type: float`` values."""


def rows(weight: torch.Tensor, args: QuantizationArgs) -> torch.Tensor:
    """``weight`` as a 2-D view with one row per scale (see the module docstring)."""
    if args.strategy == "tensor":
        return weight.reshape(1, -1)
    if args.strategy == "token":
        return weight.reshape(-1, weight.shape[-1])
    flat = weight.reshape(weight.shape[0], -1)
    if args.strategy == "channel":
        return flat
    assert args.group_size is not None, "parse_args requires group_size with strategy 'group'"
    return flat.reshape(-1, args.group_size)


def scale_shape(weight: torch.Tensor, args: QuantizationArgs) -> tuple[int, ...]:
    """How a weight's scales are shaped on export: (1,), (out, 1) or (out, groups)
    (``(tokens, 1)`` for a per-token activation)."""
    if args.strategy == "tensor":
        return (1,)
    if args.strategy == "token":
        return (weight.numel() // weight.shape[-1], 1)
    if args.strategy == "channel":
        return (weight.shape[0], 1)
    assert args.group_size is not None
    return (weight.shape[0], weight[0].numel() // args.group_size)


def qparams(
    lo: torch.Tensor, hi: torch.Tensor, args: QuantizationArgs
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (float32) and zero point (int32) for the range ``[lo, hi]`` (elementwise).

    For ``float`` arguments (symmetric) ``qmax`` is 448: ``scale = max(-lo, hi) / 448``.
    """
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


def dynamic_qparams(x: torch.Tensor, args: QuantizationArgs) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of an activation's own values (``dynamic: true``).

    ``tensor``: one (0-d) scale from the whole range; ``token``: one per row of
    ``x`` flattened to ``(-1, last dimension)`` (1-D). No gradient flows to them.
    """
    if args.strategy == "tensor":
        lo, hi = torch.aminmax(x.detach())
        return qparams(lo, hi, args)
    return weight_qparams(x, args)


def grid_step_bound(scale: torch.Tensor, args: QuantizationArgs) -> float:
    """Half the largest step of the grid with these scales: the rounding bound of a value
    inside the range (``scale / 2`` for integers; for float8, whose steps are 32 units
    of ``scale`` between 256 and 448, ``16 * scale``)."""
    largest = float(scale.max())
    return largest * 16 if args.is_float else largest / 2


def fake_quantize(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, args: QuantizationArgs
) -> torch.Tensor:
    """Quantize and dequantize ``x`` (rows as :func:`rows` for more than one scale).

    Differentiable: the gradient passes unchanged where ``x`` lies inside the
    representable range and is zero outside it (torch's fused fake-quant ops for
    integers; the same clipped straight-through estimator for float8).
    """
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


def quantize(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, args: QuantizationArgs
) -> torch.Tensor:
    """The values ``x`` quantizes to, shaped like ``x``: int8 integers, or float8_e4m3fn
    for ``float`` arguments (whose zero point is 0)."""
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
    like ``q``: ``(q - zero_point) * scale``, exact for float8 (whose zero point is 0)."""
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
        """Scale and zero point of the kept range."""
        assert self.lo is not None, "update() before qparams()"
        assert self.hi is not None, "update() before qparams()"
        return qparams(self.lo, self.hi, self.args)

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
