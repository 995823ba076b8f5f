"""Pruning modifiers: constant (keep a sparsity pattern), gradual magnitude pruning, and
one-shot SparseGPT from calibration inputs."""

from modfsm.modifiers.pruning.constant import ConstantPruningModifier
from modfsm.modifiers.pruning.magnitude import MagnitudePruningModifier
from modfsm.modifiers.pruning.sparsegpt import SparseGPTModifier

__all__ = ["ConstantPruningModifier", "MagnitudePruningModifier", "SparseGPTModifier"]
