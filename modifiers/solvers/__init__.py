"""The numerical cores of one-shot compression: GPTQ, SparseGPT and the Hessian they share.

Plain functions on tensors, with no engine wiring: a modifier collects each
layer's :class:`HessianAccumulator` during calibration, then calls
:func:`gptq_quantize` or :func:`sparsegpt_prune` on the layer's weight.
:func:`round_to_nearest` and :func:`gptq_reference` (GPTQ without its
optimizations) are the baselines to compare GPTQ against.
"""

from modfsm.modifiers.solvers.errors import CalibrationError, HessianNotPositiveDefiniteError
from modfsm.modifiers.solvers.gptq import ACTORDERS, GPTQResult, gptq_quantize, round_to_nearest
from modfsm.modifiers.solvers.hessian import (
    Dampened,
    HessianAccumulator,
    dampen,
    inverse_cholesky,
    reconstruction_error,
)
from modfsm.modifiers.solvers.reference import gptq_reference
from modfsm.modifiers.solvers.sparsegpt import (
    SparseGPTResult,
    parse_mask_structure,
    sparsegpt_prune,
)

__all__ = [
    "ACTORDERS",
    "CalibrationError",
    "Dampened",
    "GPTQResult",
    "HessianAccumulator",
    "HessianNotPositiveDefiniteError",
    "SparseGPTResult",
    "dampen",
    "gptq_quantize",
    "gptq_reference",
    "inverse_cholesky",
    "parse_mask_structure",
    "reconstruction_error",
    "round_to_nearest",
    "sparsegpt_prune",
]
