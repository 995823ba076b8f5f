"""Distillation: train the model toward a teacher model's outputs."""

from modfsm.modifiers.distillation.output import OutputDistillationModifier

__all__ = ["OutputDistillationModifier"]
