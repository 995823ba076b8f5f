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

from modfsm.engine.kernel.errors import ConfigError
from modfsm.modifiers.quantization.args import QuantizationScheme
from modfsm.modifiers.targets import resolve, weight_of

__all__ = ["ATTRIBUTE", "annotate", "clear", "plan_layers", "scheme_of"]

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


def plan_layers(
    label: str,
    owner: str,
    field: str,
    model: torch.nn.Module,
    schemes: Iterable[QuantizationScheme],
    ignore: list[str],
) -> tuple[dict[str, torch.nn.Module], dict[str, QuantizationScheme]]:
    """The layers ``schemes`` target in ``model`` (less ``ignore``), in model order, each
    with its scheme: what a quantizing modifier resolves at ``initialize``.

    Args:
        label: how messages name the modifier (its lifecycle label).
        owner: the modifier's class name, for the errors.
        field: the recipe field the schemes came from (``scheme`` or ``config_groups``).

    Raises:
        ConfigError: a target matching nothing; a layer two schemes target; a group size
            (``group`` or ``tensor_group`` weights) that does not divide a layer's inputs.
    """
    found: dict[str, torch.nn.Module] = {}
    planned: dict[str, QuantizationScheme] = {}
    owners: dict[str, int] = {}
    groups = "config groups" if field == "config_groups" else "scheme groups"
    for position, scheme in enumerate(schemes):
        for name, layer in resolve(owner, model, list(scheme.targets), ignore).items():
            if name in owners:
                raise ConfigError(
                    f"{label}: layer {name!r} is targeted by {groups} {owners[name]} and "
                    f"{position}. To fix, make each layer match one group (or add it to "
                    "ignore).",
                    owner=owner,
                    field=field,
                    value=name,
                )
            owners[name] = position
            found[name], planned[name] = layer, scheme
    order = {name: index for index, name in enumerate(dict(model.named_modules()))}
    names = sorted(found, key=order.__getitem__)
    for name in names:
        weights = planned[name].weights
        size = None if weights is None else weights.group_size
        width = weight_of(found[name])[0].numel()
        if size is not None and width % size:
            raise ConfigError(
                f"{label}: layer {name!r} has {width} inputs, not a multiple of group_size "
                f"{size}. To fix, pick a group size that divides {width}, or add {name!r} to "
                "ignore.",
                owner=owner,
                field="group_size",
                value=size,
            )
    return {name: found[name] for name in names}, {name: planned[name] for name in names}
