"""Resets its state in an ``initialize`` override, before the engine refuses a second call."""

from __future__ import annotations

from typing import Any

import attrs

from modfsm.engine import State
from tests.contract.shrink import Shrink


@attrs.define(eq=False)
class ResetsOnInitialize(Shrink):
    """Starts every initialize from a clean count, even one the lifecycle rejects."""

    def initialize(self, state: State, **kwargs: Any) -> None:
        self.updates = 0  # wrong: runs even when the call is illegal
        super().initialize(state, **kwargs)
