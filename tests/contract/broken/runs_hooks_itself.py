"""Overrides ``update_event`` and runs ``on_update`` itself, outside the lifecycle."""

from __future__ import annotations

from typing import Any

import attrs

from modfsm.engine import Event, EventType, State
from tests.contract.shrink import Shrink


@attrs.define(eq=False)
class ShrinksOnEveryStep(Shrink):
    """Means to shrink after every optimizer step, so it bypasses the window."""

    def update_event(self, state: State, event: Event, **kwargs: Any) -> None:
        if event.type_ is EventType.OPTIM_POST_STEP:
            self.on_update(state, event, **kwargs)  # wrong: the lifecycle decides
        super().update_event(state, event, **kwargs)
