"""Quantization: fake-quantized training and one-shot calibration, with integer export;
one-shot GPTQ from calibration inputs (``GPTQModifier``)."""

from typing import TYPE_CHECKING, Any

from modfsm.modifiers.quantization.args import PRESETS, QuantizationArgs, QuantizationScheme
from modfsm.modifiers.quantization.modifier import QuantizationModifier

if TYPE_CHECKING:  # imported on first use at run time: see __getattr__
    from modfsm.modifiers.quantization.gptq import GPTQModifier

__all__ = [
    "PRESETS",
    "GPTQModifier",
    "QuantizationArgs",
    "QuantizationModifier",
    "QuantizationScheme",
]


def __getattr__(name: str) -> Any:
    """``GPTQModifier``, imported on first use (PEP 562).

    Not imported above: the solvers import ``modfsm.modifiers.quantization.args``,
    which runs this ``__init__`` first, and ``GPTQModifier`` imports the solvers
    (through ``modfsm.modifiers.calibration``); when the solvers load first, as they do
    when ``modfsm.modifiers.pruning`` loads, an eager import here would be circular.
    """
    if name == "GPTQModifier":
        from modfsm.modifiers.quantization.gptq import GPTQModifier

        return GPTQModifier
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
