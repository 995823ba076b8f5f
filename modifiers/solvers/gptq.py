"""GPTQ: quantize a linear layer's weight column by column, correcting the rest as it goes.

GPTQ (Frantar et al., 2022, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers") minimizes the layer's output error on
calibration inputs, ``tr((W - Q) H (W - Q)^T)`` with ``H`` the inputs'
second moment (:mod:`~modfsm.modifiers.solvers.hessian`), over weights ``Q``
on the integer grid of :mod:`modfsm.modifiers.quantization.fake`. It is
Optimal Brain Quantization made fast: the columns are quantized in one fixed
order, and after each the not-yet-quantized columns of every row move to
their least-squares optimum given the error just made. With ``U`` the upper
Cholesky factor of the dampened ``H^-1``, quantizing column ``i`` to ``q``
costs ``(w_i - q)^2 / U_ii^2`` and shifts column ``j > i`` by
``-(w_i - q) U_ij / U_ii``; updates of columns beyond the current block of
``block_size`` are batched into one matrix product (``_sweep``). The
returned ``loss`` is the sum of those costs halved, which equals
``(1/2) tr((W' - Q) H' (W' - Q)^T)`` for the dampened ``H'`` and the weight
``W'`` with dead inputs zeroed (up to float32 rounding).

Scales and zero points (``scale``, ``zero_point``) come from
:func:`~modfsm.modifiers.quantization.fake.qparams` on a range:

* ``tensor`` and ``channel``: from the whole weight before the sweep;
* ``group``: each group's from its columns' *current* values when the sweep
  reaches the group's first column, i.e. after the errors of the columns
  before it were pushed in. This is the GPTQ reference code's rule (and
  llm-compressor's from November 2024 to January 2025; before and since, it
  fixes every group's range from the original weight before the sweep). The
  current values include the updates still deferred at that point, so a
  group's range never depends on ``block_size``; the reference code reads the
  weight without the updates of the current block when a group starts inside
  one.

Every column is quantized with :func:`~modfsm.modifiers.quantization.fake.quantize`
and :func:`~modfsm.modifiers.quantization.fake.dequantize` themselves, so the
result lies exactly on its grid: ``dequantize(quantize(weight))`` with the
returned ``scale`` and ``zero_point`` gives it back bit for bit (for float32
and float64 weights; a float16 or bfloat16 weight holds the grid values
rounded to its precision).

Activation order (``actorder``), read from compressed-tensors'
``ActivationOrdering`` and llm-compressor's ``quantize_weight``: the columns
are processed in descending order of ``diag(H)`` (stable; dead inputs last),
so the inputs with the largest activations are quantized first, while the
most columns are left to absorb their error.

* ``"weight"`` (alias ``"static"``): groups stay the contiguous groups of the
  original layout. Their ranges are fixed from the whole weight before the
  sweep (a group's columns are not visited together, so there is no "first
  column" to wait for). ``g_idx`` is the trivial ``column // group_size`` and
  is not returned.
* ``"group"`` (alias ``"dynamic"``): groups are formed in processing order:
  group ``k`` holds the ``k``-th run of ``group_size`` processed columns, and
  its range is taken, as without ``actorder``, when the sweep reaches it. The
  result returns ``g_idx``, each original column's group (not monotone).
* With ``tensor`` or ``channel`` all values mean the same: only the order
  changes (compressed-tensors accepts ``actorder`` with groups only; the
  GPTQ reference applies it to any strategy).

``perm`` is the processing order: ``perm[p]`` is the original column processed
``p``-th. With ``g_idx``, ``weight[:, perm]`` has contiguous groups again, so
``quantize(weight[:, perm], scale, zero_point, args)`` reads it.

Other choices:

* Dead inputs (``H_ii == 0``): their weights are set to 0 before the ranges
  are taken (llm-compressor takes the ranges first), so a weight that never
  sees an input does not widen its group's scale.
* ``mask`` (optional, bool, True = may be nonzero): entries outside it are
  zero in the result, and no error is pushed into them: for quantizing a
  weight SparseGPT pruned, keeping its pattern. (llm-compressor did this on
  its own for any weight at least 5% zeros, until it dropped the feature in
  June 2026; here it is asked for.) ``0`` is on every grid, so they stay
  exactly zero.
* A Hessian without a Cholesky factor raises
  :class:`~modfsm.modifiers.solvers.errors.HessianNotPositiveDefiniteError`
  (a ``torch.linalg.LinAlgError``); llm-compressor instead logs a warning and
  rounds to nearest. Retrying with more dampening is the caller's decision.
"""

from __future__ import annotations

from typing import Any, Final

import attrs
import torch

from modfsm.engine.kernel.errors import ConfigTypeError
from modfsm.modifiers.quantization.args import QuantizationArgs
from modfsm.modifiers.quantization.fake import (
    dequantize,
    qparams,
    quantize,
    scale_shape,
    weight_qparams,
)
from modfsm.modifiers.solvers._checks import (
    ACTORDERS,
    check_args,
    check_block_size,
    check_dampening,
    check_quantization_inputs,
)
from modfsm.modifiers.solvers._sweep import Sweep
from modfsm.modifiers.solvers.hessian import dampen, inverse_cholesky

__all__ = ["ACTORDERS", "GPTQResult", "gptq_quantize", "round_to_nearest"]

_OWNER: Final = "gptq_quantize"


@attrs.frozen(eq=False)
class GPTQResult:
    """A weight quantized by :func:`gptq_quantize`.

    Attributes:
        weight: the quantized weight as floats on the grid (dequantized), with
            the input's shape and dtype.
        scale: float32, shaped as :func:`~modfsm.modifiers.quantization.fake.scale_shape`
            says: (1,), (outputs, 1) or (outputs, groups).
        zero_point: int32, shaped like ``scale`` (all 0 when symmetric).
        g_idx: int32, one per input column, its group, with ``actorder`` "group";
            else None.
        perm: int64, the processing order (``perm[p]`` is the original column
            processed ``p``-th) with ``actorder``; else None.
        loss: the summed cost of the quantization steps,
            ``sum (w - q)^2 / (2 U_ii^2)`` (see the module docstring).
    """

    weight: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor
    g_idx: torch.Tensor | None
    perm: torch.Tensor | None
    loss: float


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    args: QuantizationArgs,
    *,
    block_size: int = 128,
    dampening_frac: float = 0.01,
    actorder: str | None = None,
    mask: torch.Tensor | None = None,
) -> GPTQResult:
    """Quantize ``weight`` by GPTQ for inputs whose second moment is ``hessian``.

    Args:
        weight: ``(outputs, inputs, ...)``, any float dtype; not modified.
        hessian: ``(inputs, inputs)``, e.g. :meth:`HessianAccumulator.hessian`.
        args: the integer grid: bits, symmetry, strategy and group size.
        block_size: columns per eager block (speed only; >= 1).
        dampening_frac: added to ``diag(H)``, as a fraction of its mean (>= 0).
        actorder: None, ``"weight"``/``"static"`` or ``"group"``/``"dynamic"``.
        mask: bool, ``weight``'s shape, or None: entries that are False stay zero.

    Raises:
        ConfigError: an invalid argument (the message names it and the fix).
        CalibrationError: a non-finite Hessian, or one that is not positive
            definite after dampening (``HessianNotPositiveDefiniteError``).
    """
    block_size = check_block_size(_OWNER, block_size)
    dampening_frac = check_dampening(_OWNER, dampening_frac)
    order, flat, hessian = check_quantization_inputs(_OWNER, weight, hessian, args, actorder)
    rows, columns = flat.shape
    work = flat.to(torch.float32, copy=True)
    support = _check_mask(mask, weight, rows, columns)
    if support is not None:
        work.mul_(support)
    dampened = dampen(hessian, dampening_frac)
    work[:, dampened.dead.to(work.device)] = 0.0

    if args.strategy == "group":
        assert args.group_size is not None, "check_args requires group_size"
        groups = columns // args.group_size
    else:
        groups = 1
    fixed_ranges = args.strategy != "group" or order == "weight"
    if fixed_ranges:
        scale, zero_point = weight_qparams(work, args)  # one per row of fake.rows
    else:
        scale = torch.empty(rows * groups, dtype=torch.float32, device=work.device)
        zero_point = torch.empty(rows * groups, dtype=torch.int32, device=work.device)

    perm: torch.Tensor | None = None
    factor_input = dampened.hessian
    if order is not None:
        perm = torch.argsort(hessian.diagonal(), descending=True, stable=True).to(work.device)
        work = work[:, perm]
        factor_input = factor_input[perm][:, perm]
        if support is not None:
            support = support[:, perm]
    factor = inverse_cholesky(factor_input, dampening_frac=dampening_frac)
    factor = factor.to(device=work.device, dtype=torch.float32)

    column_args = attrs.evolve(args, strategy="channel", group_size=None)
    by_row = scale.view(rows, -1) if args.strategy != "tensor" else scale.expand(rows, 1)
    zero_by_row = (
        zero_point.view(rows, -1) if args.strategy != "tensor" else zero_point.expand(rows, 1)
    )
    original_group = (
        None
        if perm is None or args.group_size is None
        else torch.div(perm, args.group_size, rounding_mode="floor").tolist()
    )

    def rule(column: int, values: torch.Tensor, sweep: Sweep) -> torch.Tensor:
        if args.strategy != "group":
            group = 0
        else:
            assert args.group_size is not None
            if fixed_ranges:
                # actorder "weight": the column's group in the original layout
                assert original_group is not None, "fixed group ranges come with a permutation"
                group = original_group[column]
            else:
                group = column // args.group_size
                if column % args.group_size == 0:
                    current = sweep.current(column, column + args.group_size)
                    lo, hi = torch.aminmax(current, dim=1)
                    by_row[:, group], zero_by_row[:, group] = qparams(lo, hi, args)
        column_scale, column_zero = by_row[:, group], zero_by_row[:, group]
        codes = quantize(values.unsqueeze(1), column_scale, column_zero, column_args)
        return dequantize(codes, column_scale, column_zero, column_args).squeeze(1)

    loss = Sweep(work, factor, block_size, support).run(rule)

    g_idx: torch.Tensor | None = None
    if perm is not None:
        work = work[:, torch.argsort(perm)]
        if order == "group" and args.group_size is not None:
            g_idx = torch.empty(columns, dtype=torch.int32, device=work.device)
            g_idx[perm] = torch.div(
                torch.arange(columns, device=work.device), args.group_size, rounding_mode="floor"
            ).to(torch.int32)
    shape = scale_shape(weight, args)
    return GPTQResult(
        weight=work.reshape(weight.shape).to(weight.dtype),
        scale=scale.reshape(shape),
        zero_point=zero_point.reshape(shape),
        g_idx=g_idx,
        perm=perm,
        loss=loss,
    )


def round_to_nearest(
    weight: torch.Tensor, args: QuantizationArgs
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The baseline GPTQ is measured against: each weight rounded to its nearest grid point.

    Returns:
        (quantized weight as floats in ``weight``'s dtype, scale, zero point), the
        scale and zero point shaped as for :func:`gptq_quantize`.
    """
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point() or weight.dim() < 2:
        raise ConfigTypeError(
            "round_to_nearest: weight must be a floating-point tensor of at least 2 dimensions. "
            "To fix, pass a layer's weight.",
            owner="round_to_nearest",
            field="weight",
            value=repr(weight)[:80],
        )
    flat = weight.detach().reshape(weight.shape[0], -1).float()
    check_args(args, flat.shape[1], owner="round_to_nearest")
    scale, zero_point = weight_qparams(flat, args)
    restored = dequantize(quantize(flat, scale, zero_point, args), scale, zero_point, args)
    shape = scale_shape(weight, args)
    return (
        restored.reshape(weight.shape).to(weight.dtype),
        scale.reshape(shape),
        zero_point.reshape(shape),
    )


def _check_mask(mask: Any, weight: torch.Tensor, rows: int, columns: int) -> torch.Tensor | None:
    if mask is None:
        return None
    if (
        not isinstance(mask, torch.Tensor)
        or mask.dtype != torch.bool
        or tuple(mask.shape) != tuple(weight.shape)
    ):
        shown = (
            f"a {mask.dtype} tensor of shape {tuple(mask.shape)}"
            if isinstance(mask, torch.Tensor)
            else repr(mask)
        )
        raise ConfigTypeError(
            f"{_OWNER}: mask must be a bool tensor shaped like the weight "
            f"{tuple(weight.shape)}, got {shown}. To fix, pass the pruning mask (True = kept) "
            "or None.",
            owner=_OWNER,
            field="mask",
            value=shown,
        )
    return mask.reshape(rows, columns).to(weight.device)
