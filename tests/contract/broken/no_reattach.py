"""Restores its count on resume but does not re-attach its hook to the new model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from modfsm.engine import State
from tests.contract.shrink import Shrink


@attrs.define(eq=False)
class ForgetsHookOnResume(Shrink):
    """Forgets that no lifecycle hook runs on resume: nothing calls on_start again."""

    def load_state_dict(self, state_dict: Mapping[str, Any], state: State) -> None:
        self.updates = int(state_dict["updates"])  # wrong: the hook is not re-attached
