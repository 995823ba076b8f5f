"""``Shrink``: a small, correct modifier that the broken ones in ``broken/`` each break once.

Inside its window it halves the first layer's input (a forward-pre hook
registered through ``register_hook``, removed when the window closes) and,
after each optimizer step, shrinks the first layer's weights by 1% per update
so far. Its update count is its checkpointed state, and ``load_state_dict``
re-attaches the hook when the window is open, so a resumed run is the
uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import torch

from modfsm.engine import Event, EventType, Modifier, State

__all__ = ["Shrink", "first_layer"]


def first_layer(model: torch.nn.Module) -> torch.nn.Linear:
    """The model's first ``Linear`` layer."""
    return next(m for m in model.modules() if isinstance(m, torch.nn.Linear))


def halve_input(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """A forward-pre hook: the layer sees half its input."""
    return (args[0] * 0.5, *args[1:])


@attrs.define(eq=False)
class Shrink(Modifier):
    """Halves the first layer's input and shrinks its weights, inside the window only."""

    updates: int = attrs.field(default=0, init=False)
    _handle: Any = attrs.field(default=None, init=False, repr=False)

    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        return True

    def on_start(self, state: State, event: Event, **kwargs: Any) -> None:
        self.attach(state)

    def attach(self, state: State) -> None:
        """Register the input hook on the first layer."""
        self._handle = self.register_hook(first_layer(state.model), halve_input, "forward_pre")

    def shrink(self, state: State) -> None:
        """Count an update and shrink the first layer's weights by 1% per update."""
        self.updates += 1
        with torch.no_grad():
            first_layer(state.model).weight.mul_(1.0 - 0.01 * self.updates)

    def on_update(self, state: State, event: Event, **kwargs: Any) -> None:
        if event.type_ is EventType.OPTIM_POST_STEP:
            self.shrink(state)

    def on_end(self, state: State, event: Event, **kwargs: Any) -> None:
        if self._handle is not None:
            self.remove_hooks([self._handle])
            self._handle = None

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates}

    def load_state_dict(self, state_dict: Mapping[str, Any], state: State) -> None:
        self.updates = int(state_dict["updates"])
        if self.started and not self.ended and not self.finalized:
            self.attach(state)
