"""The column sweep GPTQ and SparseGPT share: fix one column, push its error right.

With ``U`` the upper Cholesky factor of the (dampened) ``H^-1``, fixing
column ``i`` of the working weight to ``q`` (its quantized or pruned value)
and moving the rest of each row to the least-squares optimum is::

    e       = (w_i - q) / U_ii
    w_j    -= e * U_ij          for every column j > i
    loss   += e^2 / 2           (the increase of (1/2) tr(dW H dW^T))

(Frantar et al., 2022, "GPTQ", equations 2-5, with the Cholesky rows in
place of the downdated inverse). The updates of the columns right of the
current block are deferred and applied at the block's end as one matrix
product (the paper's "lazy batch updates"): the arithmetic is the same,
grouped so that most of the work is a matrix multiply.

A solver supplies a *rule*: given a column's index (in processing order)
and its current values, return the values it is fixed to. A rule that
decides several columns at once (a quantization group, an N:M group, an
unstructured block) reads their current values with :meth:`Sweep.current`,
which adds the deferred updates of columns right of the block, so a
decision never depends on where the blocks happen to end.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import torch

__all__ = ["Rule", "Sweep"]

Rule = Callable[[int, torch.Tensor, "Sweep"], torch.Tensor]
"""``rule(column, values, sweep) -> fixed values`` (each shaped ``(rows,)``)."""


@attrs.define(eq=False)
class Sweep:
    """One pass over the columns of ``weight`` (float32, changed in place).

    Attributes:
        weight: the working weight ``(rows, columns)`` in processing order; after
            :meth:`run` every column holds the value its rule fixed.
        factor: ``U``, the upper Cholesky factor of the dampened ``H^-1``, same order.
        block_size: how many columns are updated eagerly before one deferred update.
        support: bool ``(rows, columns)`` or None: entries that are False stay exactly
            zero (no error is pushed into them).
    """

    weight: torch.Tensor
    factor: torch.Tensor
    block_size: int
    support: torch.Tensor | None = None
    _start: int = attrs.field(init=False, default=0)
    _stop: int = attrs.field(init=False, default=0)
    _done: int = attrs.field(init=False, default=0)
    _block: torch.Tensor | None = attrs.field(init=False, default=None)
    _errors: torch.Tensor | None = attrs.field(init=False, default=None)

    def run(self, rule: Rule) -> float:
        """Fix every column by ``rule``; return the loss ``sum (w - q)^2 / (2 U_ii^2)``."""
        weight, factor, support = self.weight, self.factor, self.support
        rows, columns = weight.shape
        total = torch.zeros((), dtype=torch.float64, device=weight.device)
        for start in range(0, columns, self.block_size):
            stop = min(start + self.block_size, columns)
            block = weight[:, start:stop].clone()
            errors = torch.zeros(rows, stop - start, dtype=weight.dtype, device=weight.device)
            inner = factor[start:stop, start:stop]
            inner_support = None if support is None else support[:, start:stop]
            self._start, self._stop, self._block, self._errors = start, stop, block, errors
            for i in range(stop - start):
                self._done = i
                values = block[:, i]
                fixed = rule(start + i, values, self)
                error = (values - fixed).div_(inner[i, i])
                block[:, i] = fixed
                errors[:, i] = error
                if i + 1 < stop - start:
                    if inner_support is None:
                        block[:, i + 1 :].addr_(error, inner[i, i + 1 :], alpha=-1)
                    else:
                        change = torch.outer(error, inner[i, i + 1 :])
                        block[:, i + 1 :] -= change * inner_support[:, i + 1 :]
            weight[:, start:stop] = block
            total += errors.double().square().sum()
            if stop < columns:
                change = errors @ factor[start:stop, stop:]
                if support is not None:
                    change *= support[:, stop:]
                weight[:, stop:] -= change
        self._block = self._errors = None
        return float(total) / 2

    def current(self, start: int, stop: int) -> torch.Tensor:
        """The current values of columns ``[start, stop)``, none of them fixed yet.

        Columns in the current block come with every update so far; columns to
        its right get the updates still deferred from the block's fixed columns.
        """
        assert self._block is not None, "current() is called by a rule, inside run()"
        assert self._errors is not None, "current() is called by a rule, inside run()"
        assert self._start + self._done <= start <= stop <= self.weight.shape[1]
        parts = []
        if start < self._stop:
            parts.append(self._block[:, start - self._start : min(stop, self._stop) - self._start])
        if stop > self._stop:
            first = max(start, self._stop)
            beyond = self.weight[:, first:stop]
            if self._done:
                pending = (
                    self._errors[:, : self._done]
                    @ self.factor[self._start : self._start + self._done, first:stop]
                )
                if self.support is not None:
                    pending *= self.support[:, first:stop]
                beyond = beyond - pending
            parts.append(beyond)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
