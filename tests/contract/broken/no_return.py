"""Forgets ``return True`` at the end of ``on_initialize``."""

from __future__ import annotations

from typing import Any

import attrs

from modfsm.engine import State
from tests.contract.shrink import Shrink


@attrs.define(eq=False)
class ForgetsReturn(Shrink):
    """Sets up, then returns None."""

    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        self.updates = 0  # wrong: no 'return True'
        return None  # type: ignore[return-value]  # the mistake this modifier demonstrates
