"""A one-shot modifier that keeps changing the weights on training steps after its calibration."""

from __future__ import annotations

from typing import Any

import attrs

from modfsm.engine import CALIBRATION_LIFECYCLE, Event, EventType, State
from tests.contract.shrink import Shrink


@attrs.define(eq=False)
class ActsAfterCalibration(Shrink):
    """Shrinks the weights at ``CALIBRATION_END`` (allowed: the table runs its hook there),
    then again on every optimizer step, checking ``started`` but not ``ended``."""

    __lifecycle__ = CALIBRATION_LIFECYCLE

    def on_update(self, state: State, event: Event, **kwargs: Any) -> None:
        pass

    def on_calibration_end(self, state: State, event: Event, **kwargs: Any) -> None:
        self.shrink(state)
        self.on_end(state, event)  # its window closes here: the input hook goes

    def on_event(self, state: State, event: Event, **kwargs: Any) -> None:
        if event.type_ is EventType.OPTIM_POST_STEP and self.started:  # wrong: and not ended
            self.shrink(state)
