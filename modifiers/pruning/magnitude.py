"""``MagnitudePruningModifier``: gradual magnitude pruning on the cubic schedule."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from modfsm.engine import ConfigError, Event, EventType, State, handles
from modfsm.modifiers.pruning.base import MaskingBase, check_bool, check_fraction
from modfsm.modifiers.pruning.masks import (
    cubic_sparsity,
    global_masks,
    nm_mask,
    parse_structure,
    unstructured_mask,
)

__all__ = ["MagnitudePruningModifier"]


def _check_structure(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str):
        raise ConfigError(
            f"{type(instance).__name__}.mask_structure must be a string such as 'unstructured' "
            f"or '2:4', got {value!r}.",
            owner=type(instance).__name__,
            field="mask_structure",
            value=value,
        )
    parse_structure(value)


@attrs.define(eq=False)
class MagnitudePruningModifier(MaskingBase):
    """Prune the smallest weights, from ``init_sparsity`` to ``final_sparsity``.

    Between ``start`` and ``end`` the sparsity follows the cubic schedule of
    Zhu & Gupta (2017); the masks are recomputed from the current magnitudes
    every ``update`` steps (at the optimizer step) and the pruned weights are
    zeroed after every optimizer step. At ``end`` every target layer has exactly
    ``round(final_sparsity * numel)`` pruned weights (per layer, or over all
    target layers with ``global_sparsity``); with ``mask_structure: "N:M"``
    exactly N of every M consecutive inputs remain. With ``end`` unset, the
    layers are pruned to ``final_sparsity`` when the window opens.

    With ``leave_enabled`` (default) the masks stay in force after ``end``, until
    finalize: they are applied again after every optimizer step (``on_event``
    sees every event, also after the window). Otherwise they are dropped at ``end``.

    Recipe arguments: ``targets``, ``ignore``, ``init_sparsity``,
    ``final_sparsity``, ``mask_structure``, ``global_sparsity``, ``leave_enabled``,
    ``start``, ``end``, ``update``.
    """

    init_sparsity: float = attrs.field(default=0.0, validator=check_fraction)
    final_sparsity: float = attrs.field(default=0.5, validator=check_fraction)
    mask_structure: str = attrs.field(default="unstructured", validator=_check_structure)
    global_sparsity: bool = attrs.field(default=False, validator=check_bool)
    leave_enabled: bool = attrs.field(default=True, validator=check_bool)
    _sparsity: float = attrs.field(init=False, default=0.0, repr=False)

    def __attrs_post_init__(self) -> None:
        owner = type(self).__name__
        if self.init_sparsity > self.final_sparsity:
            raise ConfigError(
                f"{owner}: init_sparsity ({self.init_sparsity}) is above final_sparsity "
                f"({self.final_sparsity}). To fix, make init_sparsity <= final_sparsity.",
                owner=owner, field="init_sparsity", value=self.init_sparsity,
            )  # fmt: skip
        structure = parse_structure(self.mask_structure)
        if structure is not None:
            keep, group = structure
            if round(self.final_sparsity * group) != group - keep:
                raise ConfigError(
                    f"{owner}: mask_structure {self.mask_structure!r} keeps {keep} of every "
                    f"{group} weights, so final_sparsity must be {(group - keep) / group}, got "
                    f"{self.final_sparsity}. To fix, set final_sparsity: {(group - keep) / group}.",
                    owner=owner, field="final_sparsity", value=self.final_sparsity,
                )  # fmt: skip
            if self.global_sparsity:
                raise ConfigError(
                    f"{owner}: global_sparsity does not apply to an N:M mask_structure. To "
                    "fix, drop global_sparsity or use mask_structure: unstructured.",
                    owner=owner, field="global_sparsity", value=True,
                )  # fmt: skip

    @property
    def current_sparsity(self) -> float:
        """The sparsity of the current masks' schedule point."""
        return self._sparsity

    def target_sparsity(self, event: Event) -> float:
        """The schedule's sparsity at ``event``."""
        start = self.start if self.start is not None else 0
        return cubic_sparsity(
            event.current_index, start, self.end, self.init_sparsity, self.final_sparsity
        )

    def prune_to(self, sparsity: float) -> None:
        """Recompute the masks for ``sparsity`` from the current weights and apply them."""
        weights = self.weights()
        structure = parse_structure(self.mask_structure)
        if self.global_sparsity:
            self._masks = global_masks(weights, sparsity)
        elif structure is not None:
            keep, group = structure
            self._masks = {n: nm_mask(w, keep, group, sparsity) for n, w in weights.items()}
        else:
            self._masks = {n: unstructured_mask(w, sparsity) for n, w in weights.items()}
        self._sparsity = sparsity
        self.apply_masks()

    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        super().on_initialize(state, **kwargs)
        structure = parse_structure(self.mask_structure)
        if structure is not None:  # check every layer's shape now, not at the first update
            keep, group = structure
            for weight in self.weights().values():
                nm_mask(weight, keep, group, 0.0)
        return True

    def on_start(self, state: State, event: Event, **kwargs: Any) -> None:
        self.prune_to(self.target_sparsity(event))

    @handles(EventType.OPTIM_POST_STEP)
    def on_update(self, state: State, event: Event, **kwargs: Any) -> None:
        if event.should_update(self.start, self.end, self.update):
            self.prune_to(self.target_sparsity(event))
        else:
            self.apply_masks()

    def on_end(self, state: State, event: Event, **kwargs: Any) -> None:
        if not self.started:  # the window never opened (ended_unstarted): leave the model alone
            return
        self.prune_to(self.final_sparsity)
        if not self.leave_enabled:
            self._masks = {}

    @handles(EventType.OPTIM_POST_STEP)
    def on_event(self, state: State, event: Event, **kwargs: Any) -> None:
        # After the window, on_update no longer runs; keep the final masks in force.
        if self._masks and self.ended:
            self.apply_masks()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "sparsity": self._sparsity}

    def load_state_dict(self, state_dict: Mapping[str, Any], state: State) -> None:
        self._check_saved(state_dict, {"masks", "sparsity"})
        sparsity = state_dict["sparsity"]
        if not isinstance(sparsity, float | int) or isinstance(sparsity, bool) or not (
            0 <= sparsity < 1
        ):
            raise self._bad_state(f"sparsity {sparsity!r} is not a fraction in [0, 1)", "sparsity")
        super().load_state_dict({"masks": state_dict["masks"]}, state)
        self._sparsity = float(sparsity)
