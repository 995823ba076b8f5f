"""Quantization: fake-quantized training and one-shot calibration, with integer export."""

from modfsm.modifiers.quantization.args import PRESETS, QuantizationArgs, QuantizationScheme
from modfsm.modifiers.quantization.modifier import QuantizationModifier

__all__ = ["PRESETS", "QuantizationArgs", "QuantizationModifier", "QuantizationScheme"]
