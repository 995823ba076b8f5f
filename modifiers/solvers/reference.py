"""A plain GPTQ, written straight from the equations: the baseline to compare against.

:func:`gptq_reference` makes the same choices as
:func:`~modfsm.modifiers.solvers.gptq.gptq_quantize` (dead inputs, dampening,
activation order, when each group's range is taken) but none of its
optimizations: it works in float64, keeps the inverse Hessian ``H^-1``
explicitly and, after each column, removes that column from it by the
rank-one downdate of Optimal Brain Surgeon (Hassibi & Stork, 1993), as
Optimal Brain Quantization (Frantar & Alistarh, 2022, "Optimal Brain
Compression") does; and it pushes each column's error into every later
column at once, without blocks. That costs ``O(columns^3)`` work in
``columns`` rank-one steps, where GPTQ needs one Cholesky factorization and
matrix products. It is the slow, obviously right version: the tests check
that GPTQ agrees with it (to float32 rounding: a group range taken from the
corrected weights may differ in its last bits, and with it the group's grid),
and ``benchmarks/`` can time GPTQ against it.
"""

from __future__ import annotations

import attrs
import torch

from modfsm.modifiers.quantization.args import QuantizationArgs
from modfsm.modifiers.quantization.fake import (
    dequantize,
    qparams,
    quantize,
    scale_shape,
    weight_qparams,
)
from modfsm.modifiers.solvers._checks import (
    check_dampening,
    check_quantization_inputs,
)
from modfsm.modifiers.solvers.errors import HessianNotPositiveDefiniteError
from modfsm.modifiers.solvers.gptq import GPTQResult
from modfsm.modifiers.solvers.hessian import dampen

__all__ = ["gptq_reference"]

_OWNER = "gptq_reference"


def gptq_reference(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    args: QuantizationArgs,
    *,
    dampening_frac: float = 0.01,
    actorder: str | None = None,
) -> GPTQResult:
    """GPTQ without its optimizations (see the module docstring); same arguments and result.

    Raises:
        ConfigError: an invalid argument.
        HessianNotPositiveDefiniteError: the dampened Hessian cannot be inverted.
    """
    dampening_frac = check_dampening(_OWNER, dampening_frac)
    order, flat, hessian = check_quantization_inputs(_OWNER, weight, hessian, args, actorder)
    rows, columns = flat.shape
    size = args.group_size or columns
    work = flat.double()  # a copy
    dampened = dampen(hessian.double(), dampening_frac)
    work[:, dampened.dead] = 0.0

    ranges_first = args.strategy != "group" or order == "weight"
    scale, zero_point = weight_qparams(work.float(), args)  # one per row of fake.rows
    if args.strategy == "tensor":
        by_row, zero_by_row = scale.expand(rows, 1), zero_point.expand(rows, 1)
    else:
        by_row, zero_by_row = scale.view(rows, -1), zero_point.view(rows, -1)

    perm = torch.arange(columns, device=work.device)
    if order is not None:
        perm = torch.argsort(hessian.diagonal(), descending=True, stable=True).to(work.device)
    work, inverse = work[:, perm], dampened.hessian[perm][:, perm]
    inverse, info = torch.linalg.inv_ex(inverse)
    if int(info) != 0 or not bool(inverse.diagonal().gt(0).all()):
        raise HessianNotPositiveDefiniteError(
            f"{_OWNER}: the dampened Hessian cannot be inverted. To fix, raise dampening_frac.",
            dampening_frac=dampening_frac,
            column=max(int(info) - 1, 0),
        )

    column_args = attrs.evolve(args, strategy="channel", group_size=None)
    loss = 0.0
    for position in range(columns):
        if ranges_first:
            group = 0 if args.strategy != "group" else int(perm[position]) // size
        else:
            group = position // size
            if position % size == 0:
                lo, hi = torch.aminmax(work[:, position : position + size], dim=1)
                by_row[:, group], zero_by_row[:, group] = qparams(lo.float(), hi.float(), args)
        column_scale, column_zero = by_row[:, group], zero_by_row[:, group]
        values = work[:, position]
        codes = quantize(values.float().unsqueeze(1), column_scale, column_zero, column_args)
        fixed = dequantize(codes, column_scale, column_zero, column_args)[:, 0].double()
        pivot = inverse[position, position]
        error = (values - fixed) / pivot
        loss += float((values - fixed).square().sum() / pivot) / 2
        rest = slice(position + 1, columns)
        work[:, rest] -= torch.outer(error, inverse[position, rest])
        work[:, position] = fixed
        # Optimal Brain Surgeon: the inverse Hessian of the columns still free
        inverse[rest, rest] -= torch.outer(inverse[rest, position], inverse[position, rest] / pivot)

    g_idx = None
    if order == "group" and args.strategy == "group":
        g_idx = torch.empty(columns, dtype=torch.int32, device=work.device)
        g_idx[perm] = torch.div(
            torch.arange(columns, device=work.device), size, rounding_mode="floor"
        ).to(torch.int32)
    shape = scale_shape(weight, args)
    return GPTQResult(
        weight=work[:, torch.argsort(perm)].reshape(weight.shape).to(weight.dtype),
        scale=scale.reshape(shape),
        zero_point=zero_point.reshape(shape),
        g_idx=g_idx,
        perm=None if order is None else perm,
        loss=loss,
    )
