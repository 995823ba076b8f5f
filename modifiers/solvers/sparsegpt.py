"""SparseGPT: prune a linear layer's weight column by column, correcting the rest as it goes.

SparseGPT (Frantar & Alistarh, 2023, "SparseGPT: Massive Language Models Can
Be Accurately Pruned in One-Shot") runs GPTQ's sweep (:mod:`.gptq`) with
"set to zero" in place of "round to the grid": the columns are visited in
order, a column's pruned entries become 0 and the columns to its right move
to the least-squares optimum given that error, so the kept weights absorb
what the pruned ones did. Which entries to prune is decided from the
current, already corrected weights, by the Optimal Brain Surgeon saliency
``w^2 / [H^-1]_cc``, here ``w^2 / U_cc^2`` with ``U`` the upper Cholesky
factor of the dampened ``H^-1`` (the diagonal of the inverse Hessian of the
columns not yet fixed): the error that pruning the entry alone would cost.

``mask_structure``:

* ``"0:0"`` (or ``"unstructured"``): the adaptive mask of the paper. At the
  first column of every block of ``block_size`` columns, the block's entries
  with the lowest saliency are pruned, the same fraction in every block. The
  count is exact: the blocks up to column ``c`` prune
  ``round(sparsity * rows * c)`` entries in all (Python's ``round``, as
  :mod:`modfsm.modifiers.pruning.masks` counts), so the layer loses exactly
  ``round(sparsity * rows * columns)`` and each block within one entry of its
  proportional share. (llm-compressor prunes every entry at or below the
  ``int(sparsity * block entries)``-th smallest saliency of each block, one
  more than that share, and more on ties.)
* ``"N:M"``: at every ``M``-th column, each row prunes the ``N`` entries of
  lowest saliency among the ``M`` columns starting there, as llm-compressor
  and the SparseGPT code read ``N:M`` (``N`` pruned of every ``M``; for
  ``"2:4"`` the same as NVIDIA's "2 kept of 4"). Every row of every aligned
  group of ``M`` inputs then has exactly ``N`` zeros in the mask.
  ``sparsity`` must equal ``N/M``: one argument cannot say two things.
  (Note: :func:`modfsm.modifiers.pruning.masks.parse_structure` reads ``N``
  as *kept*; both agree on ``"2:4"``.)

Ties in saliency are broken by position (a stable sort), so equal inputs give
equal masks. A group or block whose columns reach past the current block of
the sweep is decided from values that include the updates still deferred,
so ``block_size`` changes the unstructured blocks but never the N:M choice.
Pruned entries are exactly zero; the returned mask is False exactly there
(a kept weight may still be zero, e.g. that of a dead input). The ``loss``
is the sum of the steps' costs, ``(1/2) tr((W' - P) H' (W' - P)^T)`` for the
dampened ``H'`` and ``W'`` with dead inputs zeroed.
"""

from __future__ import annotations

import re
from typing import Any, Final

import attrs
import torch

from modfsm.engine.kernel.errors import ConfigError
from modfsm.modifiers.solvers._checks import (
    check_block_size,
    check_dampening,
    check_number,
    check_weight_and_hessian,
)
from modfsm.modifiers.solvers._sweep import Sweep
from modfsm.modifiers.solvers.hessian import dampen, inverse_cholesky

__all__ = ["SparseGPTResult", "parse_mask_structure", "sparsegpt_prune"]

_OWNER: Final = "sparsegpt_prune"


@attrs.frozen(eq=False)
class SparseGPTResult:
    """A weight pruned by :func:`sparsegpt_prune`.

    Attributes:
        weight: the pruned and corrected weight, with the input's shape and dtype.
        mask: bool, the weight's shape: True where kept, False where pruned (0).
        loss: the summed cost of the pruning steps (see the module docstring).
    """

    weight: torch.Tensor
    mask: torch.Tensor
    loss: float


def parse_mask_structure(structure: Any) -> tuple[int, int] | None:
    """``"0:0"`` or ``"unstructured"`` -> None; ``"N:M"`` -> (N pruned, M) with 0 < N < M.

    Raises:
        ConfigError: anything else.
    """
    if structure in ("0:0", "unstructured"):
        return None
    match = re.fullmatch(r"(\d+):(\d+)", structure) if isinstance(structure, str) else None
    if match:
        pruned, group = int(match.group(1)), int(match.group(2))
        if 0 < pruned < group:
            return pruned, group
    raise ConfigError(
        f"{_OWNER}.mask_structure {structure!r} is not '0:0' (unstructured) or 'N:M' with "
        "0 < N < M (N pruned of every M inputs). To fix, write e.g. '0:0' or '2:4'.",
        owner=_OWNER,
        field="mask_structure",
        value=structure,
    )


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    *,
    sparsity: float,
    mask_structure: str = "0:0",
    block_size: int = 128,
    dampening_frac: float = 0.01,
) -> SparseGPTResult:
    """Prune ``weight`` by SparseGPT for inputs whose second moment is ``hessian``.

    Args:
        weight: ``(outputs, inputs, ...)``, any float dtype; not modified.
        hessian: ``(inputs, inputs)``, e.g. :meth:`HessianAccumulator.hessian`.
        sparsity: the fraction of weights to prune, in [0, 1); ``N/M`` for ``"N:M"``.
        mask_structure: ``"0:0"`` (unstructured) or ``"N:M"``.
        block_size: columns per block (the unstructured mask is chosen per block; >= 1).
        dampening_frac: added to ``diag(H)``, as a fraction of its mean (>= 0).

    Raises:
        ConfigError: an invalid argument (the message names it and the fix).
        CalibrationError: a non-finite Hessian, or one that is not positive
            definite after dampening (``HessianNotPositiveDefiniteError``).
    """
    sparsity = check_number(
        _OWNER,
        "sparsity",
        sparsity,
        low=0.0,
        high=1.0,
        fix="pass the fraction of weights to prune, e.g. 0.5",
    )
    structure = parse_mask_structure(mask_structure)
    block_size = check_block_size(_OWNER, block_size)
    dampening_frac = check_dampening(_OWNER, dampening_frac)
    flat, hessian = check_weight_and_hessian(_OWNER, weight, hessian)
    rows, columns = flat.shape
    if structure is not None:
        _check_structure(structure, sparsity, columns, mask_structure)

    work = flat.to(torch.float32, copy=True)
    dampened = dampen(hessian, dampening_frac)
    work[:, dampened.dead.to(work.device)] = 0.0
    factor = inverse_cholesky(dampened.hessian, dampening_frac=dampening_frac)
    factor = factor.to(device=work.device, dtype=torch.float32)
    saliency_scale = factor.diagonal().square()
    pruned = torch.zeros(rows, columns, dtype=torch.bool, device=work.device)

    def decide(start: int, stop: int, sweep: Sweep) -> torch.Tensor:
        """The saliency of columns ``[start, stop)``, from their current values."""
        return sweep.current(start, stop).square() / saliency_scale[start:stop]

    def rule(column: int, values: torch.Tensor, sweep: Sweep) -> torch.Tensor:
        if structure is None:
            if column % block_size == 0:
                stop = min(column + block_size, columns)
                count = round(sparsity * rows * stop) - round(sparsity * rows * column)
                if count:
                    order = torch.sort(decide(column, stop, sweep).flatten(), stable=True)
                    chosen = torch.zeros(
                        rows * (stop - column), dtype=torch.bool, device=work.device
                    )
                    chosen[order.indices[:count]] = True
                    pruned[:, column:stop] = chosen.view(rows, stop - column)
        elif column % structure[1] == 0:
            number, group = structure
            order = torch.sort(decide(column, column + group, sweep), dim=1, stable=True)
            pruned[:, column : column + group].scatter_(1, order.indices[:, :number], True)
        return values.masked_fill(pruned[:, column], 0.0)

    loss = Sweep(work, factor, block_size).run(rule)
    return SparseGPTResult(
        weight=work.reshape(weight.shape).to(weight.dtype),
        mask=(~pruned).reshape(weight.shape),
        loss=loss,
    )


def _check_structure(structure: tuple[int, int], sparsity: float, columns: int, text: str) -> None:
    number, group = structure
    if abs(sparsity - number / group) > 1e-9:
        raise ConfigError(
            f"{_OWNER}: mask_structure {text!r} prunes {number} of every {group} weights "
            f"(sparsity {number / group:g}), but sparsity={sparsity:g}. To fix, pass "
            f"sparsity={number / group:g}, or mask_structure='0:0' for unstructured pruning.",
            owner=_OWNER,
            field="sparsity",
            value=sparsity,
        )
    if columns % group:
        raise ConfigError(
            f"{_OWNER}: an N:M mask with M={group} needs the layer's inputs to be a multiple "
            f"of {group}; this layer has {columns}. To fix, leave the layer out or pick another M.",
            owner=_OWNER,
            field="mask_structure",
            value=text,
        )
