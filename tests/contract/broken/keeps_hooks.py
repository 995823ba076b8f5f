"""Overrides ``release_hooks`` so that its hooks outlive ``finalize``."""

from __future__ import annotations

from typing import Any

import attrs

from modfsm.engine import Event, State
from tests.contract.shrink import Shrink


@attrs.define(eq=False)
class KeepsHooks(Shrink):
    """Wants its effect to last after the run, so it keeps its hooks."""

    def release_hooks(self, state: State, event: Event | None, **kwargs: Any) -> None:
        pass  # wrong: finalize must remove every hook
