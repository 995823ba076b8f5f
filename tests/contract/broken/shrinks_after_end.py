"""Keeps changing the weights after its window closed."""

from __future__ import annotations

from typing import Any

import attrs

from modfsm.engine import Event, EventType, State
from tests.contract.shrink import Shrink


@attrs.define(eq=False)
class ShrinksAfterEnd(Shrink):
    """Shrinks after every optimizer step once started, checking ``started`` but not ``ended``."""

    def on_update(self, state: State, event: Event, **kwargs: Any) -> None:
        pass

    def on_event(self, state: State, event: Event, **kwargs: Any) -> None:
        if event.type_ is EventType.OPTIM_POST_STEP and self.started:  # wrong: and not ended
            self.shrink(state)
