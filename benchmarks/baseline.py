"""The baseline the benchmarks compare against: the reference's flag-based dispatch.

``FlagModifier`` keeps the lifecycle in four booleans and ``if`` chains, as
llm-compressor's ``Modifier`` does, on the same attrs machinery and the same
:class:`modfsm.engine.Event` as modfsm, so a comparison measures only the dispatch.
"""

from __future__ import annotations

from typing import Any

import attrs

from modfsm.engine import Event, EventType, State

_PROBE = Event(EventType.BATCH_START, global_step=0)

TALLY: list[int] = [0, 0]
"""What the benchmarks' hooks count (``on_event``, ``on_update``): the same work on both
sides, and no write to a field (see ``benchmarks/README.md`` on attrs' ``__setattr__``)."""


@attrs.define(kw_only=True, eq=False)
class FlagModifier:
    """A no-op modifier with the reference's flag logic."""

    index: int | None = None
    group: str | None = None
    start: float | None = None
    end: float | None = None
    update: float | None = None
    initialized_: bool = False
    started_: bool = False
    ended_: bool = False
    finalized_: bool = False

    def initialize(self, state: State, **kwargs: Any) -> None:
        if self.initialized_:
            raise RuntimeError("Cannot initialize a modifier that has already been initialized")
        if self.finalized_:
            raise RuntimeError("Cannot initialize a modifier that has already been finalized")
        self.initialized_ = self.on_initialize(state, **kwargs)
        if self.should_start(_PROBE):
            self.on_start(state, _PROBE, **kwargs)
            self.started_ = True

    def update_event(self, state: State, event: Event, **kwargs: Any) -> None:
        if not self.initialized_:
            raise RuntimeError("Cannot update an uninitialized modifier")
        if self.finalized_:
            raise RuntimeError("Cannot update a finalized modifier")
        self.on_event(state, event, **kwargs)
        if event.type_ == EventType.BATCH_START and not self.started_ and self.should_start(event):
            self.on_start(state, event, **kwargs)
            self.started_ = True
            self.on_update(state, event, **kwargs)
            return
        if event.type_ == EventType.BATCH_END and not self.ended_ and self.should_end(event):
            self.on_end(state, event, **kwargs)
            self.ended_ = True
            self.on_update(state, event, **kwargs)
            return
        if self.started_ and not self.ended_:
            self.on_update(state, event, **kwargs)

    def finalize(self, state: State, **kwargs: Any) -> None:
        if self.finalized_:
            raise RuntimeError("cannot finalize a modifier twice")
        if not self.initialized_:
            raise RuntimeError("cannot finalize an uninitialized modifier")
        self.finalized_ = self.on_finalize(state, **kwargs)

    def should_start(self, event: Event) -> bool:
        if self.start is None:
            return False
        current = event.current_index
        return self.start <= current and (self.end is None or current < self.end)

    def should_end(self, event: Event) -> bool:
        return self.end is not None and event.current_index >= self.end

    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        return True

    def on_finalize(self, state: State, **kwargs: Any) -> bool:
        return True

    def on_start(self, state: State, event: Event, **kwargs: Any) -> None:
        pass

    def on_update(self, state: State, event: Event, **kwargs: Any) -> None:
        pass

    def on_end(self, state: State, event: Event, **kwargs: Any) -> None:
        pass

    def on_event(self, state: State, event: Event, **kwargs: Any) -> None:
        pass


@attrs.define(kw_only=True, eq=False)
class FlagHooked(FlagModifier):
    """The baseline of a real modifier: an attrs class overriding ``on_event`` and ``on_update``
    (bodies equal to :class:`benchmarks.dispatch.Hooked`'s)."""

    def on_event(self, state: State, event: Event, **kwargs: Any) -> None:
        TALLY[0] += 1

    def on_update(self, state: State, event: Event, **kwargs: Any) -> None:
        TALLY[1] += 1


class FlagUndecorated(FlagModifier):
    """The same hooks (the same functions) in a subclass written without ``@attrs.define``
    (instances get a ``__dict__``)."""

    on_event = FlagHooked.on_event
    on_update = FlagHooked.on_update
