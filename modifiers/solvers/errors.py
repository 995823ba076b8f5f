"""Errors of the one-shot solvers: calibration data that cannot drive them.

Bad arguments (a negative ``dampening_frac``, a malformed ``mask_structure``)
raise :class:`~modfsm.engine.kernel.errors.ConfigError` like every other
modfsm value check. What is left are problems of the calibration data itself,
found only when a solver runs; they derive from :class:`CalibrationError`, a
``RuntimeError``. A Hessian that cannot be factorized is also a
``torch.linalg.LinAlgError``, so code written against llm-compressor (which
lets torch's error through) catches it unchanged.
"""

from __future__ import annotations

import torch

from modfsm.engine.kernel.errors import LifecycleError

__all__ = ["CalibrationError", "HessianNotPositiveDefiniteError"]


class CalibrationError(LifecycleError, RuntimeError):
    """The calibration inputs cannot drive a solver (none were seen, or they are not finite).

    Attributes:
        problem: a short name of what is wrong: ``"no samples"``, ``"not finite"``
            or ``"not positive definite"``.
    """

    def __init__(self, message: str, *, problem: str) -> None:
        super().__init__(message)
        self.problem = problem


# torch ships no type stub for LinAlgError (torch._C._LinAlgError, a RuntimeError subclass):
# mypy sees neither the name nor a class.
class HessianNotPositiveDefiniteError(CalibrationError, torch.linalg.LinAlgError):  # type: ignore[misc,name-defined]
    """The dampened Hessian has no Cholesky factor: it is singular or nearly so.

    Attributes:
        dampening_frac: the dampening that was applied.
        column: the first column (in processing order) where the factorization broke down.
    """

    def __init__(self, message: str, *, dampening_frac: float, column: int) -> None:
        super().__init__(message, problem="not positive definite")
        self.dampening_frac = dampening_frac
        self.column = column
