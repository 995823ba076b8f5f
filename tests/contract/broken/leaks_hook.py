"""Registers its torch hook directly with torch, so nothing removes it."""

from __future__ import annotations

import attrs

from modfsm.engine import State
from tests.contract.shrink import Shrink, first_layer, halve_input


@attrs.define(eq=False)
class LeaksHook(Shrink):
    """Bypasses ``register_hook``: the engine never learns of the hook."""

    def attach(self, state: State) -> None:
        first_layer(state.model).register_forward_pre_hook(halve_input)  # wrong
