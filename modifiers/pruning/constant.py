"""``ConstantPruningModifier``: keep the weights that are zero at start at zero."""

from __future__ import annotations

from typing import Any

import attrs

from modfsm.engine import Event, EventType, State, handles
from modfsm.modifiers.pruning.base import MaskingBase

__all__ = ["ConstantPruningModifier"]


@attrs.define(eq=False)
class ConstantPruningModifier(MaskingBase):
    """Keep a sparsity pattern through training (fine-tuning a pruned model).

    When its window opens it records which weights of the target layers are zero;
    after every optimizer step inside the window it sets them to zero again.
    When the window closes it forgets the masks.

    Recipe arguments: ``targets``, ``ignore``, ``start``, ``end``.
    """

    def on_start(self, state: State, event: Event, **kwargs: Any) -> None:
        self._masks = {name: weight != 0 for name, weight in self.weights().items()}

    @handles(EventType.OPTIM_POST_STEP)
    def on_update(self, state: State, event: Event, **kwargs: Any) -> None:
        self.apply_masks()

    def on_end(self, state: State, event: Event, **kwargs: Any) -> None:
        self._masks = {}
