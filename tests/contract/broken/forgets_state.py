"""Leaves its update count out of ``state_dict``, so a resumed run starts counting again."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from modfsm.engine import State
from tests.contract.shrink import Shrink


@attrs.define(eq=False)
class ForgetsCount(Shrink):
    """Saves nothing; the update count restarts at 0 after a resume."""

    def state_dict(self) -> dict[str, Any]:
        return {}  # wrong: the count decides how much the weights shrink

    def load_state_dict(self, state_dict: Mapping[str, Any], state: State) -> None:
        if self.started and not self.ended and not self.finalized:
            self.attach(state)
