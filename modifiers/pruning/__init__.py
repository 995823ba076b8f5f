"""Pruning modifiers: constant (keep a sparsity pattern) and gradual magnitude pruning."""

from modfsm.modifiers.pruning.constant import ConstantPruningModifier
from modfsm.modifiers.pruning.magnitude import MagnitudePruningModifier

__all__ = ["ConstantPruningModifier", "MagnitudePruningModifier"]
