"""The quantization a layer is given, recorded on the layer for the modifiers that adapt to it.

llm-compressor's quantizing modifiers attach their scheme to each target module
(``module.quantization_scheme``); a transform that runs before them, such as 0.14's
``AWQModifier`` without a scheme of its own, reads it there to search its scales for the
grid the layer will be put on. modfsm does the same, under the same attribute name:

* ``QuantizationModifier`` and ``GPTQModifier`` call :func:`annotate` when they resolve
  their target layers (``initialize``, and a resume) and :func:`clear` at finalize;
* a reader calls :func:`scheme_of` once every modifier is initialized (at calibration,
  not at its own ``initialize``: the quantizing modifier usually comes later in the
  recipe).

The attribute is a plain Python attribute: the model's ``state_dict`` and parameters do
not change.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

import torch

from modfsm.modifiers.quantization.args import QuantizationScheme

__all__ = ["ATTRIBUTE", "annotate", "clear", "scheme_of"]

ATTRIBUTE: Final = "quantization_scheme"


def annotate(
    layers: Mapping[str, torch.nn.Module], schemes: Mapping[str, QuantizationScheme]
) -> None:
    """Record ``schemes[name]`` on ``layers[name]`` for every name in both."""
    for name, scheme in schemes.items():
        layer = layers.get(name)
        if layer is not None:
            layer.__dict__[ATTRIBUTE] = scheme


def clear(layers: Iterable[torch.nn.Module], schemes: Iterable[QuantizationScheme]) -> None:
    """Remove the records of ``schemes`` from ``layers`` (another modifier's stay)."""
    mine = {id(scheme) for scheme in schemes}
    for layer in layers:
        if id(layer.__dict__.get(ATTRIBUTE)) in mine:
            del layer.__dict__[ATTRIBUTE]


def scheme_of(layer: torch.nn.Module) -> QuantizationScheme | None:
    """The scheme a quantizing modifier recorded on ``layer`` (None: none did)."""
    scheme = layer.__dict__.get(ATTRIBUTE)
    return scheme if isinstance(scheme, QuantizationScheme) else None
