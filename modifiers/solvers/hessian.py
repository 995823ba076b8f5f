"""A linear layer's input second moment (its "Hessian"), dampening and the inverse factor.

One-shot compression of a linear layer ``y = W x`` (Frantar et al., 2022,
"GPTQ"; Frantar & Alistarh, 2023, "SparseGPT") replaces ``W`` by a
constrained ``Q`` (on a quantization grid, or with zeros) that keeps the
layer's outputs on calibration inputs ``x_1 .. x_n``::

    E(Q) = (2/n) * sum_t ||(W - Q) x_t||^2 = tr((W - Q) H (W - Q)^T),
    H    = (2/n) * sum_t x_t x_t^T.

Every output row is a separate least-squares problem with the same matrix
``H``: the Hessian of the squared error, which only depends on the inputs.
:class:`HessianAccumulator` collects it batch by batch; :func:`reconstruction_error`
evaluates ``E``.

Accumulation. The accumulator keeps the plain sum ``S = sum_t x_t x_t^T``
and the integer count ``n`` and divides once, in :meth:`HessianAccumulator.hessian`.
The result is the same average however the samples were split into batches
(llm-compressor instead rescales a running average by ``n / (n + b)`` at
every batch, one more rounding per batch). ``S`` is held in float64 by
default: the product of two float32 (or bfloat16) inputs is exact in
float64, and a sum of a million tokens keeps a relative error near
``1e-10``, where float32 could lose several digits over long calibration
runs. The cost is memory, ``8 * inputs**2`` bytes (128 MiB at 4096 inputs);
``dtype=torch.float32`` halves it.

``n`` counts input vectors: every position of every sequence (all leading
dimensions flattened). llm-compressor divides by the number of sequences
instead; the two Hessians differ by a constant factor, which changes no
solver's result (both are invariant to scaling ``H``), only the scale of
their reported loss.

Dead inputs and dampening (:func:`dampen`). An input that was zero in every
sample has ``H_ii = 0``: its weights never affect the output, so the solvers
set them to zero and ``H_ii = 1`` (keeping ``H`` invertible without changing
the problem). Then ``dampening_frac * mean(diag(H))`` is added to the
diagonal, the usual ridge that keeps ``H`` well conditioned when the inputs
span few directions.

The inverse factor (:func:`inverse_cholesky`). Both solvers walk the columns
in order and need, at column ``i``, row ``i`` of the inverse Hessian of the
columns not yet fixed. Those rows are the rows of the upper Cholesky factor
``U`` of ``H^-1`` (``U^T U = H^-1``), divided by their diagonal: computing
``U`` once replaces one rank-one downdate of ``H^-1`` per column. It runs in
the Hessian's own precision (at least float32): float64 from the
accumulator by default, robust for badly conditioned inputs; pass
``hessian.float()`` to trade that for a factorization about twice as fast on
a CPU. A Hessian that still has no Cholesky factor after dampening raises
:class:`~modfsm.modifiers.solvers.errors.HessianNotPositiveDefiniteError`
rather than falling back silently: the caller decides whether to retry with
more dampening.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import torch

from modfsm.engine.kernel.errors import ConfigError, ConfigTypeError
from modfsm.engine.kernel.validate import check_int
from modfsm.modifiers.solvers._checks import check_number
from modfsm.modifiers.solvers.errors import CalibrationError, HessianNotPositiveDefiniteError

__all__ = [
    "Dampened",
    "HessianAccumulator",
    "dampen",
    "inverse_cholesky",
    "reconstruction_error",
]

_ACCUMULATION_DTYPES = (torch.float32, torch.float64)
_OWNER = "HessianAccumulator"


@attrs.define(eq=False)
class HessianAccumulator:
    """Collects ``H = (2/n) * sum x x^T`` of a linear layer's inputs, batch by batch.

    Example:
        >>> acc = HessianAccumulator(3)
        >>> acc.update(torch.ones(2, 5, 3))  # (batch, sequence, inputs)
        >>> acc.count
        10
        >>> acc.hessian()[0].tolist()
        [2.0, 2.0, 2.0]

    Attributes:
        columns: the layer's number of inputs (the last dimension of its input).
        dtype: the accumulation precision, float64 (default) or float32.
    """

    columns: int
    dtype: torch.dtype = torch.float64
    device: torch.device | str | None = None
    _sum: torch.Tensor = attrs.field(init=False, repr=False)
    _count: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        check_int(_OWNER, "columns", self.columns, minimum=1)
        if self.dtype not in _ACCUMULATION_DTYPES:
            raise ConfigError(
                f"{_OWNER}.dtype must be torch.float64 or torch.float32, got {self.dtype!r}. "
                "To fix, pass torch.float64 (exact products) or torch.float32 (half the memory).",
                owner=_OWNER,
                field="dtype",
                value=self.dtype,
            )
        self._sum = torch.zeros(self.columns, self.columns, dtype=self.dtype, device=self.device)

    @property
    def count(self) -> int:
        """The number of input vectors seen (all leading dimensions of every batch)."""
        return self._count

    def update(self, inputs: torch.Tensor) -> None:
        """Add a batch of inputs, shaped ``(..., columns)``, to the sum.

        Raises:
            ConfigError: ``inputs`` is not a floating tensor whose last dimension is
                ``columns``.
        """
        if (
            not isinstance(inputs, torch.Tensor)
            or not inputs.is_floating_point()
            or inputs.dim() < 1
            or inputs.shape[-1] != self.columns
        ):
            shown = (
                f"a {inputs.dtype} tensor of shape {tuple(inputs.shape)}"
                if isinstance(inputs, torch.Tensor)
                else repr(inputs)
            )
            raise ConfigTypeError(
                f"{_OWNER}.update: inputs must be a floating tensor shaped (..., {self.columns}), "
                f"got {shown}. To fix, pass the layer's input (its last dimension is the "
                "layer's number of inputs).",
                owner=_OWNER,
                field="inputs",
                value=shown,
            )
        rows = inputs.detach().reshape(-1, self.columns).to(self._sum.device, self.dtype)
        self._sum.addmm_(rows.T, rows)
        self._count += rows.shape[0]

    def hessian(self) -> torch.Tensor:
        """``(2/n) * sum x x^T`` over every input seen, a new symmetric tensor in ``dtype``.

        Raises:
            CalibrationError: no input was seen, or the sum is not finite.
        """
        if self._count == 0:
            raise CalibrationError(
                f"{_OWNER}: no calibration inputs were seen, so there is no Hessian. To fix, "
                "run calibration batches through the layer (update() each input) before "
                "compressing it, or leave the layer out.",
                problem="no samples",
            )
        if not bool(torch.isfinite(self._sum).all()):
            raise CalibrationError(
                f"{_OWNER}: the accumulated Hessian is not finite: an input held inf or nan, "
                "or overflowed. To fix, check the calibration data and the model's "
                "activations for inf/nan.",
                problem="not finite",
            )
        total = self._sum + self._sum.T  # 2 * sum, made exactly symmetric
        return total.div_(self._count)

    def state_dict(self) -> dict[str, Any]:
        """The sum (a tensor) and the count (an int), for a checkpoint."""
        return {"sum": self._sum.clone(), "count": self._count}

    def load_state_dict(self, saved: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (cast to ``dtype``, moved to ``device``).

        Raises:
            ConfigError: the keys, the sum's shape, or the count do not fit, or the sum is
                not finite; nothing is changed.
        """
        total, count = saved.get("sum"), saved.get("count")
        if (
            set(saved) != {"sum", "count"}
            or not isinstance(total, torch.Tensor)
            or not total.is_floating_point()
            or tuple(total.shape) != (self.columns, self.columns)
            or not bool(torch.isfinite(total).all())
            or isinstance(count, bool)
            or not isinstance(count, int)
            or count < 0
            or (count == 0 and bool(total.any()))
        ):
            keys = sorted(map(str, saved))
            raise ConfigError(
                f"{_OWNER}.load_state_dict: a saved state holds 'sum', a finite "
                f"({self.columns}, {self.columns}) float tensor, and 'count', an int >= 0 "
                f"(0 only with a zero sum); got keys {keys}. To fix, load the state_dict() of "
                f"an accumulator for a layer with {self.columns} inputs.",
                owner=_OWNER,
                field="state_dict",
                value=keys,
            )
        self._sum = total.detach().to(self._sum.device, self.dtype).clone()
        self._count = count


@attrs.frozen(eq=False)
class Dampened:
    """A Hessian ready to factorize, and which inputs were dead.

    Attributes:
        hessian: a new tensor: ``H`` with ``H_ii = 1`` for dead inputs, plus
            ``dampening_frac * mean(diag)`` on the diagonal.
        dead: bool, one per input: True where ``H_ii`` was 0. The caller zeroes
            those columns of the weight.
    """

    hessian: torch.Tensor
    dead: torch.Tensor


def dampen(hessian: torch.Tensor, dampening_frac: float) -> Dampened:
    """Mark dead inputs (``H_ii = 0`` becomes 1) and add ``dampening_frac * mean(diag(H))``.

    ``hessian`` itself is left unchanged.

    Example:
        >>> d = dampen(torch.tensor([[4.0, 0.0], [0.0, 0.0]]), 0.1)
        >>> d.hessian.tolist(), d.dead.tolist()
        ([[4.25, 0.0], [0.0, 1.25]], [False, True])

    Raises:
        ConfigError: ``dampening_frac`` is not a finite number >= 0.
    """
    dampening_frac = check_number(
        "dampen",
        "dampening_frac",
        dampening_frac,
        low=0.0,
        fix="pass a fraction of the mean diagonal >= 0, e.g. 0.01",
    )
    out = hessian.detach().clone()
    diagonal = out.diagonal()
    dead = diagonal == 0
    diagonal[dead] = 1.0
    diagonal += dampening_frac * diagonal.mean()
    return Dampened(hessian=out, dead=dead)


def inverse_cholesky(hessian: torch.Tensor, *, dampening_frac: float) -> torch.Tensor:
    """The upper Cholesky factor ``U`` of ``hessian^-1`` (``U^T U = hessian^-1``).

    ``hessian`` is a dampened Hessian (see :func:`dampen`); ``dampening_frac``
    only names the dampening in the error message. The factor is computed in
    ``hessian``'s precision, at least float32.

    Raises:
        HessianNotPositiveDefiniteError: ``hessian`` (or its inverse, numerically)
            has no Cholesky factor.
    """
    dtype = torch.promote_types(hessian.dtype, torch.float32)
    lower: torch.Tensor  # torch.linalg has no type stubs
    upper: torch.Tensor
    lower, info = torch.linalg.cholesky_ex(hessian.to(dtype))
    if int(info) == 0:
        upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
        if int(info) == 0:
            return upper
    column, size = int(info) - 1, hessian.shape[0]
    suggestion = max(0.1, 10 * dampening_frac)
    raise HessianNotPositiveDefiniteError(
        f"the dampened Hessian is not positive definite (its Cholesky factorization in {dtype} "
        f"broke down at column {column} of {size}, with dampening_frac={dampening_frac:g}): the "
        "calibration inputs span too few directions, or are numerically degenerate. To fix, "
        f"raise dampening_frac (e.g. to {suggestion:g}), or calibrate on more, and more varied, "
        "samples.",
        dampening_frac=dampening_frac,
        column=column,
    )


def reconstruction_error(
    weight: torch.Tensor, approximation: torch.Tensor, hessian: torch.Tensor
) -> float:
    """``tr((W - Q) H (W - Q)^T)``: the mean squared output error ``(2/n) sum ||(W - Q) x||^2``.

    Computed in float64; weights of more than two dimensions are flattened
    to (outputs, inputs) as the solvers read them.
    """
    delta = (weight.detach().double() - approximation.detach().double()).reshape(
        weight.shape[0], -1
    )
    delta = delta.to(hessian.device)
    return float(((delta @ hessian.double()) * delta).sum())
