"""What the pruning modifiers share: target layers, masks, and their checkpoints."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import torch

from modfsm.engine import ConfigError, Modifier, State
from modfsm.engine.kernel.validate import check_optional_number
from modfsm.modifiers.targets import ALL, as_names, check_target_names, resolve, weight_of

__all__ = ["MaskingBase", "check_bool", "check_fraction"]


def check_fraction(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """attrs validator for a sparsity: a number in [0, 1)."""
    owner = type(instance).__name__
    check_optional_number(owner, attribute.name, value, minimum=0)
    if value is None or value >= 1:
        raise ConfigError(
            f"{owner}.{attribute.name} must be a fraction in [0, 1), got {value!r}. To fix, "
            "write e.g. 0.75 for 75% of the weights pruned.",
            owner=owner,
            field=attribute.name,
            value=value,
        )


def check_bool(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """attrs validator for a flag."""
    if not isinstance(value, bool):
        owner = type(instance).__name__
        raise ConfigError(
            f"{owner}.{attribute.name} must be true or false, got {value!r}.",
            owner=owner,
            field=attribute.name,
            value=value,
        )


@attrs.define(eq=False)
class MaskingBase(Modifier):
    """Resolves the target layers at initialize and keeps a mask per layer.

    Attributes:
        targets: the layers to prune (see :mod:`modfsm.modifiers.targets`).
        ignore: layers to leave alone, in the same syntax.
    """

    targets: str | list[str] = attrs.field(default=ALL, validator=check_target_names)
    ignore: str | list[str] = attrs.field(factory=list, validator=check_target_names)
    _layers: dict[str, torch.nn.Module] = attrs.field(init=False, factory=dict, repr=False)
    _masks: dict[str, torch.Tensor] = attrs.field(init=False, factory=dict, repr=False)

    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        self._bind(state)
        return True

    def on_finalize(self, state: State, **kwargs: Any) -> bool:
        self.apply_masks()
        self._masks = {}
        return True

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """The current masks by layer name (True keeps a weight)."""
        return dict(self._masks)

    @property
    def layer_names(self) -> list[str]:
        """The target layers, as resolved at initialize."""
        return list(self._layers)

    def _bind(self, state: State) -> None:
        if state.model is None:
            raise ConfigError(
                f"{self.lifecycle_label} needs a model: state.model is None. To fix, pass "
                "model=... to Session.initialize.",
                owner=type(self).__name__,
                field="model",
                value=None,
            )
        owner = type(self).__name__
        self._layers = resolve(owner, state.model, as_names(self.targets), as_names(self.ignore))

    def _check_saved(self, state_dict: Mapping[str, Any], keys: set[str]) -> None:
        """Refuse a saved state without exactly ``keys``."""
        if set(state_dict) != keys:
            raise self._bad_state(
                f"its keys are {sorted(map(str, state_dict))}, expected {sorted(keys)}",
                "state_dict",
            )

    def _bad_state(self, problem: str, field: str) -> ConfigError:
        return ConfigError(
            f"{self.lifecycle_label}.load_state_dict: {problem}. To fix, resume with the state "
            "this modifier saved, on the same model and targets.",
            owner=type(self).__name__,
            field=field,
            value=None,
        )

    def weights(self) -> dict[str, torch.Tensor]:
        """The target layers' weights by name."""
        return {name: weight_of(layer) for name, layer in self._layers.items()}

    def apply_masks(self) -> None:
        """Zero every pruned weight."""
        with torch.no_grad():
            for name, mask in self._masks.items():
                weight_of(self._layers[name]).mul_(mask)

    def state_dict(self) -> dict[str, Any]:
        return {"masks": {name: mask.clone() for name, mask in self._masks.items()}}

    def load_state_dict(self, state_dict: Mapping[str, Any], state: State) -> None:
        if self.initialized:
            self._bind(state)
        self._check_saved(state_dict, {"masks"})
        masks = state_dict["masks"]
        problem = ""
        if not isinstance(masks, Mapping):
            problem = f"masks is a {type(masks).__name__}, not a dict of layer name to mask"
        elif masks and set(masks) != set(self._layers):
            problem = (
                f"masks are saved for {sorted(map(str, masks))}, but the target layers are "
                f"{sorted(self._layers)}"
            )
        elif not masks and self.started and not self.ended:
            problem = "no masks are saved, but the window is open"
        else:
            for name, mask in masks.items():
                shape = tuple(weight_of(self._layers[name]).shape)
                if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
                    problem = f"the mask of {name!r} is not a bool tensor"
                elif tuple(mask.shape) != shape:
                    problem = f"the mask of {name!r} has shape {tuple(mask.shape)}, not {shape}"
                if problem:
                    break
        if problem:
            raise self._bad_state(problem, "masks")
        # A checkpoint loaded with map_location="cpu" holds CPU masks: put each
        # where its layer's weights are (a CUDA model's masks must be on CUDA).
        self._masks = {
            name: mask.to(device=weight_of(self._layers[name]).device, dtype=torch.bool)
            for name, mask in masks.items()
        }
