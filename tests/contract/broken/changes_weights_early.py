"""Changes the weights in ``on_initialize``, before its window opens."""

from __future__ import annotations

from typing import Any

import attrs
import torch

from modfsm.engine import State
from tests.contract.shrink import Shrink, first_layer


@attrs.define(eq=False)
class ZeroesEarly(Shrink):
    """Prepares the layer at initialize by zeroing its first input column."""

    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        with torch.no_grad():
            first_layer(state.model).weight[:, 0] = 0.0  # wrong: before the window
        return True
