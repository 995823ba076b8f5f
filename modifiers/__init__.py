"""Real torch modifiers for modfsm; ``ModifierFactory`` finds each by its class name.

* :class:`~modifiers.pruning.ConstantPruningModifier` keeps a sparsity pattern;
* :class:`~modifiers.pruning.MagnitudePruningModifier` prunes gradually by magnitude;
* :class:`~modifiers.quantization.QuantizationModifier` trains with fake quantization
  (or calibrates once) and exports integer weights.

Experimental modifiers live in :mod:`modifiers.experimental`.
"""

from modifiers.pruning import ConstantPruningModifier, MagnitudePruningModifier
from modifiers.quantization import QuantizationModifier

__all__ = ["ConstantPruningModifier", "MagnitudePruningModifier", "QuantizationModifier"]
