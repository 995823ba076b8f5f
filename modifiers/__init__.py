"""Real torch modifiers for modfsm; ``ModifierFactory`` finds each by its class name.

* :class:`~modfsm.modifiers.pruning.ConstantPruningModifier` keeps a sparsity pattern;
* :class:`~modfsm.modifiers.pruning.MagnitudePruningModifier` prunes gradually by magnitude;
* :class:`~modfsm.modifiers.quantization.QuantizationModifier` trains with fake quantization
  (or calibrates once) and exports integer weights;
* :class:`~modfsm.modifiers.distillation.OutputDistillationModifier` trains the model toward
  a teacher's layer outputs (it replaces the loss);
* one-shot, from calibration data: ``GPTQModifier`` (:mod:`modfsm.modifiers.quantization`),
  ``SparseGPTModifier`` (:mod:`modfsm.modifiers.pruning`),
  :class:`~modfsm.modifiers.smoothing.SmoothQuantModifier` moves activation outliers into
  the weights, :class:`~modfsm.modifiers.awq.AWQModifier` scales salient channels before
  4-bit rounding.

Experimental modifiers live in :mod:`modfsm.modifiers.experimental`.
"""

from modfsm.modifiers.awq import AWQModifier
from modfsm.modifiers.distillation import OutputDistillationModifier
from modfsm.modifiers.pruning import ConstantPruningModifier, MagnitudePruningModifier
from modfsm.modifiers.quantization import QuantizationModifier
from modfsm.modifiers.smoothing import SmoothQuantModifier

__all__ = [
    "AWQModifier",
    "ConstantPruningModifier",
    "MagnitudePruningModifier",
    "OutputDistillationModifier",
    "QuantizationModifier",
    "SmoothQuantModifier",
]
