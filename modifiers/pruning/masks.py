"""Pruning masks and the gradual sparsity schedule, as pure functions on tensors.

A mask is a bool tensor shaped like the weight: True keeps, False prunes. Masks
prune an exact number of elements — ``round(sparsity * numel)`` per layer, or
over all layers together for a global mask — choosing the smallest magnitudes,
with ties broken by position (a stable sort), so the same weights always give
the same mask. Weights already at zero sort first, so a mask only grows as the
sparsity rises.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from modfsm.engine.kernel.errors import ConfigError

__all__ = ["cubic_sparsity", "global_masks", "nm_mask", "parse_structure", "unstructured_mask"]


def cubic_sparsity(
    index: float, start: float, end: float | None, initial: float, final: float
) -> float:
    """The sparsity at ``index`` on the cubic schedule of Zhu & Gupta (2017).

    ``final + (initial - final) * (1 - p) ** 3`` with ``p`` the progress from
    ``start`` to ``end`` clamped to [0, 1]; ``final`` from the start when ``end``
    is None or not after ``start``.
    """
    if end is None or end <= start:
        return final
    progress = min(1.0, max(0.0, (index - start) / (end - start)))
    return final + (initial - final) * (1.0 - progress) ** 3


def _count(sparsity: float, total: int) -> int:
    return min(total, max(0, round(sparsity * total)))


def unstructured_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune exactly ``round(sparsity * numel)`` smallest-magnitude elements of ``weight``."""
    flat = weight.detach().abs().flatten()
    pruned = _count(sparsity, flat.numel())
    mask = torch.ones_like(flat, dtype=torch.bool)
    if pruned:
        order = torch.sort(flat, stable=True).indices
        mask[order[:pruned]] = False
    return mask.view_as(weight)


def parse_structure(structure: str) -> tuple[int, int] | None:
    """``"unstructured"`` -> None; ``"N:M"`` -> (N, M) with 0 < N < M.

    Raises:
        ConfigError: anything else.
    """
    if structure == "unstructured":
        return None
    match = re.fullmatch(r"(\d+):(\d+)", structure)
    if match:
        keep, group = int(match.group(1)), int(match.group(2))
        if 0 < keep < group:
            return keep, group
    raise ConfigError(
        f"mask_structure {structure!r} is not 'unstructured' or 'N:M' with 0 < N < M. To fix, "
        "write e.g. 'unstructured' or '2:4'.",
        owner="pruning",
        field="mask_structure",
        value=structure,
    )


def nm_mask(weight: torch.Tensor, keep: int, group: int, sparsity: float) -> torch.Tensor:
    """Prune ``round(sparsity * group)`` of every ``group`` consecutive inputs of each output.

    At ``sparsity == (group - keep) / group`` exactly ``keep`` of every ``group``
    remain: the N:M pattern. The weight's inputs (all but the first dimension)
    must be a multiple of ``group``.
    """
    rows = weight.detach().abs().reshape(weight.shape[0], -1)
    if rows.shape[1] % group:
        raise ConfigError(
            f"an N:M mask with M={group} needs the layer's inputs to be a multiple of {group}; "
            f"this layer has {rows.shape[1]}. To fix, ignore the layer or pick another M.",
            owner="pruning",
            field="mask_structure",
            value=f"{keep}:{group}",
        )
    groups = rows.reshape(-1, group)
    pruned = min(group - keep, _count(sparsity, group))
    mask = torch.ones_like(groups, dtype=torch.bool)
    if pruned:
        order = torch.sort(groups, dim=1, stable=True).indices
        mask.scatter_(1, order[:, :pruned], False)
    return mask.reshape(weight.shape)


def global_masks(weights: Mapping[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """Prune ``round(sparsity * total)`` smallest magnitudes across all ``weights`` together."""
    names = list(weights)
    flat = torch.cat([weights[n].detach().abs().flatten() for n in names])
    combined = torch.ones_like(flat, dtype=torch.bool)
    pruned = _count(sparsity, flat.numel())
    if pruned:
        order = torch.sort(flat, stable=True).indices
        combined[order[:pruned]] = False
    masks, offset = {}, 0
    for name in names:
        size = weights[name].numel()
        masks[name] = combined[offset : offset + size].view_as(weights[name])
        offset += size
    return masks
