"""AWQ's numerical core: input statistics, the per-channel scale grid and its search.

AWQ (Lin et al., 2023, "AWQ: Activation-aware Weight Quantization for LLM
Compression and Acceleration") protects the input channels that carry large
activations by scaling them up in the weight before it is quantized and down in
the activation, which is free when the activation comes from a layer whose
output can absorb the factor (a norm, or a ``Linear``):

    Q(W · diag(s)) · (diag(s)^-1 · x)   instead of   Q(W) · x

For the balance layers ``W_1 .. W_k`` that read the same input ``x``, the paper
picks ``s`` from a one-parameter family by a grid search on calibration inputs:

    s(a) = mean|x|^a / mean|W|^(1-a)        (duo scaling; ``mean|x|^a`` without)
    L(a) = Σ_j || (Q(W_j · diag(s)) · diag(s)^-1 - W_j) · X ||² / (outputs · tokens)

with ``a`` in ``0, 1/n_grid, ..., (n_grid-1)/n_grid``, ``s`` normalised by
``sqrt(max(s) · min(s))`` (only ratios between channels matter), and the
``a`` of the smallest loss kept. ``mean|W|`` is each input column's mean
magnitude after every quantization row (group, channel or tensor) of every
balance layer is divided by its own largest magnitude, as llm-compressor
computes it. ``Q`` rounds to the nearest point of the scheme's grid, the scale
and zero point taken from the scaled weight's own range (round-to-nearest,
:func:`~modfsm.modifiers.quantization.fake.weight_qparams`).

Theory of operation:

* The loss is the mean squared error of the balance layers' outputs (the
  paper's objective, per linear layer; llm-compressor measures the enclosing
  block's output instead). It is a quadratic form in the weight error ``D``:
  ``||D X||² = Σ (D H) ⊙ D`` with ``H = X^T X``, so the calibration inputs are
  kept as :class:`InputStatistics`: the sums ``Σ |x|`` and ``Σ x x^T``
  (float64) and the token count, ``in + in²`` numbers per mapping, instead of
  the activations themselves. The loss is exact (not an approximation) for
  those inputs.
* The grid always holds the identity ``s = 1`` (with ``duo_scaling`` false it
  is ``a = 0``; with duo scaling it is added, as llm-compressor adds it), whose
  loss is plain round-to-nearest's: the scales chosen never do worse than
  round-to-nearest on the calibration inputs. Ties keep the earlier candidate.
* Balance layers without weight arguments (not quantization targets) are
  rescaled but stay in float: they add no error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import attrs
import torch

from modfsm.modifiers.quantization.args import QuantizationArgs
from modfsm.modifiers.quantization.fake import dequantize, quantize, rows, weight_qparams

__all__ = [
    "Candidate",
    "InputStatistics",
    "SearchResult",
    "candidate_grid",
    "candidate_scales",
    "output_error",
    "round_to_grid",
    "search_scales",
    "weight_means",
]

_FLOOR: Final = 1e-4  # llm-compressor's floor on a scale and on mean|W|'s denominator
_NORMALISE_EPS: Final = 1e-6  # added to each row's largest magnitude in mean|W|


@attrs.frozen
class Candidate:
    """One point of the grid: the exponent ``ratio`` (``a``) and whether ``mean|W|`` enters."""

    ratio: float
    duo: bool


def candidate_grid(n_grid: int, duo_scaling: bool | str) -> tuple[Candidate, ...]:
    """The grid searched: the identity first, then ``a = i / n_grid`` for ``i < n_grid``.

    ``duo_scaling`` true: each ``a`` with ``mean|W|``; false: without (``a = 0`` is the
    identity); ``"both"``: each ``a`` both ways.

    Example:
        >>> [(c.ratio, c.duo) for c in candidate_grid(2, True)]
        [(0.0, False), (0.0, True), (0.5, True)]
        >>> [(c.ratio, c.duo) for c in candidate_grid(2, False)]
        [(0.0, False), (0.5, False)]
    """
    ratios = [index / n_grid for index in range(n_grid)]
    if duo_scaling is False:
        return tuple(Candidate(ratio, False) for ratio in ratios)
    ways = (True,) if duo_scaling is True else (False, True)
    grid = [Candidate(0.0, False)]
    grid += [Candidate(ratio, duo) for ratio in ratios for duo in ways]
    return tuple(dict.fromkeys(grid))  # (0.0, False) once


def candidate_scales(
    x_mean: torch.Tensor, w_mean: torch.Tensor | None, candidate: Candidate
) -> torch.Tensor:
    """The per-channel scales of one grid point, normalised by ``sqrt(max · min)``.

    Non-finite values (a channel that is zero in every input and weight) become 1.
    """
    scales = x_mean.pow(candidate.ratio)
    if candidate.duo:
        assert w_mean is not None, "duo scaling needs the weights' means"
        scales = scales / (w_mean.pow(1.0 - candidate.ratio) + _FLOOR)
    scales = scales.clamp(min=_FLOOR)
    scales = scales / (scales.max() * scales.min()).sqrt()
    return torch.where(torch.isfinite(scales), scales, torch.ones_like(scales))


@attrs.define(eq=False)
class InputStatistics:
    """What the search needs of a mapping's calibration inputs, accumulated batch by batch.

    Attributes:
        abs_sum: ``Σ |x|`` per input channel (float64).
        second_moment: ``Σ x x^T`` (float64, ``in x in``).
        count: the number of input vectors added.
    """

    abs_sum: torch.Tensor
    second_moment: torch.Tensor
    count: int = 0

    @classmethod
    def empty(cls, width: int, device: torch.device | str | None = None) -> InputStatistics:
        """No inputs yet, for ``width`` channels."""
        return cls(
            torch.zeros(width, dtype=torch.float64, device=device),
            torch.zeros(width, width, dtype=torch.float64, device=device),
        )

    def update(self, inputs: torch.Tensor) -> None:
        """Add input vectors (any leading shape, the channels last)."""
        flat = inputs.detach().reshape(-1, inputs.shape[-1]).to(torch.float64)
        self.abs_sum += flat.abs().sum(dim=0)
        self.second_moment += flat.T @ flat
        self.count += int(flat.shape[0])

    @property
    def mean_magnitude(self) -> torch.Tensor:
        """``mean |x|`` per channel (float32)."""
        return (self.abs_sum / max(self.count, 1)).float()

    def state_dict(self) -> dict[str, torch.Tensor | int]:
        """The sums and the count, for a checkpoint."""
        return {
            "abs_sum": self.abs_sum.clone(),
            "second_moment": self.second_moment.clone(),
            "count": self.count,
        }

    @classmethod
    def from_state_dict(
        cls, saved: dict[str, object], width: int, device: torch.device | str | None = None
    ) -> InputStatistics:
        """What :meth:`state_dict` returned, checked against ``width`` channels.

        Raises:
            ValueError: the keys, shapes or count do not fit.
        """
        abs_sum, moment = saved.get("abs_sum"), saved.get("second_moment")
        count = saved.get("count")
        if (
            set(saved) != {"abs_sum", "second_moment", "count"}
            or not isinstance(abs_sum, torch.Tensor)
            or not isinstance(moment, torch.Tensor)
            or tuple(abs_sum.shape) != (width,)
            or tuple(moment.shape) != (width, width)
            or isinstance(count, bool)
            or not isinstance(count, int)
            or count < 0
        ):
            raise ValueError(
                f"input statistics need abs_sum ({width},), second_moment ({width}, {width}) "
                f"and a count >= 0, got keys {sorted(saved)}"
            )
        return cls(
            abs_sum.to(device=device, dtype=torch.float64),
            moment.to(device=device, dtype=torch.float64),
            count,
        )


def round_to_grid(
    weight: torch.Tensor, args: QuantizationArgs
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``weight`` rounded to the nearest point of its grid, scales from its own range.

    Returns:
        (the rounded weight as float32, the scale, the zero point), one scale and
        zero point per row of :func:`~modfsm.modifiers.quantization.fake.rows`.
    """
    flat = weight.detach().float()
    scale, zero_point = weight_qparams(flat, args)
    restored = dequantize(quantize(flat, scale, zero_point, args), scale, zero_point, args)
    return restored, scale, zero_point


def weight_means(
    weights: Sequence[torch.Tensor], arguments: Sequence[QuantizationArgs | None]
) -> torch.Tensor:
    """``mean|W|`` per input column over the quantized balance layers (float32).

    Each quantization row (a group, an output channel, or the whole tensor) is
    divided by its largest magnitude first; layers without arguments are left out.

    Raises:
        ValueError: no layer has arguments.
    """
    total: torch.Tensor | None = None
    count = 0
    for weight, args in zip(weights, arguments, strict=True):
        if args is None:
            continue
        magnitude = weight.detach().float().abs()
        view = rows(magnitude, args)
        normalised = (view / (view.amax(dim=1, keepdim=True) + _NORMALISE_EPS)).reshape(
            magnitude.shape
        )
        column_sum = normalised.sum(dim=0, dtype=torch.float64)
        total = column_sum if total is None else total + column_sum
        count += int(magnitude.shape[0])
    if total is None:
        raise ValueError("weight_means needs at least one layer with weight arguments")
    return (total / count).float()


def output_error(
    weight: torch.Tensor, quantized: torch.Tensor, second_moment: torch.Tensor
) -> float:
    """``|| (quantized - weight) X ||²`` summed over outputs and inputs, from ``H = X^T X``."""
    difference = (quantized.to(torch.float64) - weight.detach().to(torch.float64)).to(
        second_moment.device
    )
    return float(((difference @ second_moment) * difference).sum())


@attrs.frozen
class SearchResult:
    """The grid search's outcome for one mapping.

    Attributes:
        scales: the chosen per-channel scales (float32).
        ratio: the chosen ``a``.
        duo: whether the chosen point used ``mean|W|``.
        loss: its mean squared output error.
        identity_loss: the identity's (plain round-to-nearest's) error.
        losses: every grid point's error, in grid order.
    """

    scales: torch.Tensor
    ratio: float
    duo: bool
    loss: float
    identity_loss: float
    losses: tuple[float, ...]


def search_scales(
    statistics: InputStatistics,
    weights: Sequence[torch.Tensor],
    arguments: Sequence[QuantizationArgs | None],
    n_grid: int,
    duo_scaling: bool | str,
) -> SearchResult:
    """Grid-search the scales of one mapping (see the module docstring).

    Args:
        statistics: the balance layers' (shared) calibration inputs.
        weights: the balance layers' weights, in float, before any scaling.
        arguments: each layer's weight arguments (None: not quantized).
        n_grid: the number of ``a`` values.
        duo_scaling: True, False or ``"both"`` (:func:`candidate_grid`).

    Raises:
        ValueError: no inputs were seen, or every grid point's loss is not finite.
    """
    if statistics.count == 0:
        raise ValueError("search_scales needs calibration inputs (the count is 0)")
    device = weights[0].device
    x_mean = statistics.mean_magnitude.to(device)
    grid = candidate_grid(n_grid, duo_scaling)
    w_mean = None
    if any(candidate.duo for candidate in grid):
        w_mean = weight_means(weights, arguments).to(device)
    outputs = sum(int(w.shape[0]) for w, a in zip(weights, arguments, strict=True) if a)
    denominator = float(max(outputs, 1) * statistics.count)
    losses: list[float] = []
    best: tuple[float, int, torch.Tensor] | None = None
    for index, candidate in enumerate(grid):
        scales = candidate_scales(x_mean, w_mean, candidate)
        error = 0.0
        for weight, args in zip(weights, arguments, strict=True):
            if args is None:
                continue
            scaled = weight.detach().float() * scales.view(1, -1)
            restored, _, _ = round_to_grid(scaled, args)
            error += output_error(weight, restored / scales.view(1, -1), statistics.second_moment)
        loss = error / denominator
        losses.append(loss)
        if loss == loss and loss != float("inf") and (best is None or loss < best[0]):
            best = (loss, index, scales)
    if best is None:
        raise ValueError(f"no grid point gave a finite loss ({losses[:4]}...)")
    loss, index, scales = best
    return SearchResult(
        scales=scales.float(),
        ratio=grid[index].ratio,
        duo=grid[index].duo,
        loss=loss,
        identity_loss=losses[0],
        losses=tuple(losses),
    )
