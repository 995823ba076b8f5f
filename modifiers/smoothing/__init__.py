"""Smoothing modifiers: move activation outliers into the weights before quantizing.

* :class:`~modfsm.modifiers.smoothing.SmoothQuantModifier` (Xiao et al., 2022);
* :mod:`modfsm.modifiers.smoothing.mappings`: which layers are rescaled together
  (shared with AWQ).
"""

from modfsm.modifiers.smoothing.mappings import (
    LLAMA_SMOOTHQUANT_MAPPINGS,
    Mapping,
    ResolvedMapping,
    apply_smoothing,
    parse_mappings,
    resolve_mappings,
)
from modfsm.modifiers.smoothing.smoothquant import SmoothQuantModifier, smoothing_scales

__all__ = [
    "LLAMA_SMOOTHQUANT_MAPPINGS",
    "Mapping",
    "ResolvedMapping",
    "SmoothQuantModifier",
    "apply_smoothing",
    "parse_mappings",
    "resolve_mappings",
    "smoothing_scales",
]
