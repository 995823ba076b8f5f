"""Fake quantization and observers, as small functions on tensors.

Integers are signed: ``[qmin, qmax] = [-2**(b-1), 2**(b-1) - 1]``. A range
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

Weights are viewed as rows (:func:`rows`): one row for ``tensor``, one per
output channel for ``channel``, one per group of ``group_size`` inputs of each
output for ``group``; each row has its own scale and zero point.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import torch

from modfsm.modifiers.quantization.args import QuantizationArgs

__all__ = [
    "Observer",
    "dequantize",
    "fake_quantize",
    "qparams",
    "quantize",
    "rows",
    "scale_shape",
    "weight_qparams",
]


def rows(weight: torch.Tensor, args: QuantizationArgs) -> torch.Tensor:
    """``weight`` as a 2-D view with one row per scale (see the module docstring)."""
    if args.strategy == "tensor":
        return weight.reshape(1, -1)
    flat = weight.reshape(weight.shape[0], -1)
    if args.strategy == "channel":
        return flat
    assert args.group_size is not None, "parse_args requires group_size with strategy 'group'"
    return flat.reshape(-1, args.group_size)


def scale_shape(weight: torch.Tensor, args: QuantizationArgs) -> tuple[int, ...]:
    """How a weight's scales are shaped on export: (1,), (out, 1) or (out, groups)."""
    if args.strategy == "tensor":
        return (1,)
    if args.strategy == "channel":
        return (weight.shape[0], 1)
    assert args.group_size is not None
    return (weight.shape[0], weight[0].numel() // args.group_size)


def qparams(
    lo: torch.Tensor, hi: torch.Tensor, args: QuantizationArgs
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (float32) and zero point (int32) for the range ``[lo, hi]`` (elementwise)."""
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


def fake_quantize(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, args: QuantizationArgs
) -> torch.Tensor:
    """Quantize and dequantize ``x`` (rows as :func:`rows` for more than one scale).

    Differentiable: the gradient passes unchanged where ``x`` lies inside the
    representable range and is zero outside it (torch's fused fake-quant ops).
    """
    if scale.numel() == 1:
        return torch.fake_quantize_per_tensor_affine(
            x, scale.reshape(()), zero_point.reshape(()), args.qmin, args.qmax
        )
    view = rows(x, args)
    out = torch.fake_quantize_per_channel_affine(view, scale, zero_point, 0, args.qmin, args.qmax)
    return out.reshape(x.shape)


def _per_row(values: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, 1)


def quantize(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, args: QuantizationArgs
) -> torch.Tensor:
    """The integers (int8) that ``x`` quantizes to, shaped like ``x``."""
    view = rows(x.detach(), args)
    inverse = torch.reciprocal(_per_row(scale))
    q = torch.round(view * inverse) + _per_row(zero_point)
    return q.clamp(args.qmin, args.qmax).to(torch.int8).reshape(x.shape)


def dequantize(
    q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, args: QuantizationArgs
) -> torch.Tensor:
    """The float values (float32) the integers ``q`` stand for, shaped like ``q``."""
    view = rows(q, args).float()
    values = (view - _per_row(zero_point).float()) * _per_row(scale.float())
    return values.reshape(q.shape)


@attrs.define
class Observer:
    """Keeps the range of a layer's inputs for a static activation scale.

    ``minmax`` keeps the widest range seen; ``moving_average`` moves the range
    toward each batch's by ``averaging_constant`` (the first batch sets it).
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
        if self.lo is None or self.hi is None:
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
