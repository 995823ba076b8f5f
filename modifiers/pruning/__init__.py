"""Pruning modifiers: constant (keep a sparsity pattern) and gradual magnitude pruning."""

from modifiers.pruning.constant import ConstantPruningModifier
from modifiers.pruning.magnitude import MagnitudePruningModifier

__all__ = ["ConstantPruningModifier", "MagnitudePruningModifier"]
