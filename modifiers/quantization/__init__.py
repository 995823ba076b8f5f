"""Quantization: fake-quantized training and one-shot calibration, with integer export."""

from modifiers.quantization.args import PRESETS, QuantizationArgs, QuantizationScheme
from modifiers.quantization.modifier import QuantizationModifier

__all__ = ["PRESETS", "QuantizationArgs", "QuantizationModifier", "QuantizationScheme"]
