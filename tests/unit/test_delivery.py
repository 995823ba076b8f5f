"""One delivery routine: every route an event takes to a modifier is ``StageModifiers.deliver``,
which reads each modifier's cell from its current state and asks every guard; nothing is
cached, so a schedule changed by any means is seen at the next event."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from unittest import mock

import attrs
import pytest

from modfsm.engine import Event, EventType, LifecycleState, Modifier, State
from modfsm.engine.loop.session import Session
from modfsm.engine.runtime.stage import StageModifiers
from modfsm.engine.tools.replay import verify


@attrs.define(eq=False)
class Moving(Modifier):
    """Re-declares ``start`` (an attrs subclass field drops the base field's setters)."""

    start: float | None = 10
    log: list[tuple[str, float]] = attrs.field(factory=list)

    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        return True

    def on_start(self, state: State, event: Event, **kwargs: Any) -> None:
        self.log.append(("start", event.current_index))

    def on_update(self, state: State, event: Event, **kwargs: Any) -> None:
        pass


@attrs.define(eq=False)
class Quiet(Modifier):
    """Keeps every hook empty: its cells inside the window are IGNORE."""

    log: list[tuple[str, float]] = attrs.field(factory=list)

    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        return True


@attrs.define(eq=False)
class Traced(Session):
    """A subclass that changes nothing."""


def _step(session: Session) -> None:
    session.batch_start()
    session.optim_pre_step()
    session.optim_post_step()
    session.batch_end()


ROUTES: dict[str, Callable[[], tuple[Session, dict[str, Any]]]] = {
    "untraced": lambda: (Session(), {}),
    "traced": lambda: (Session(), {"trace": True}),
    "subclass": lambda: (Traced(), {}),
}


def _run(route: str, change: Callable[[Modifier], None], modifier: Moving) -> Moving:
    session, extra = ROUTES[route]()
    session.initialize(recipe=[modifier], **extra)
    for step in range(8):
        if step == 2:
            change(modifier)
        _step(session)
    return modifier


def _set_start(modifier: Modifier) -> None:
    modifier.start = 4


def _set_start_raw(modifier: Modifier) -> None:
    object.__setattr__(modifier, "start", 4)


@pytest.mark.parametrize("route", sorted(ROUTES))
@pytest.mark.parametrize("change", [_set_start, _set_start_raw], ids=["assigned", "raw"])
def test_a_redeclared_start_moved_from_10_to_4_opens_the_window_at_4_on_every_route(
    route: str, change: Callable[[Modifier], None]
) -> None:
    # Pinned: the untraced session used to keep a stale plan and never start it.
    modifier = _run(route, change, Moving())
    assert modifier.log == [("start", 4)]
    assert modifier.lifecycle_state is LifecycleState.STARTED


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_a_window_end_set_with_object_setattr_closes_a_quiet_modifier(route: str) -> None:
    def close_at_5(modifier: Modifier) -> None:
        object.__setattr__(modifier, "end", 5)

    modifier = Quiet(start=0)
    _run(route, close_at_5, modifier)  # type: ignore[arg-type]  # Quiet logs nothing
    assert modifier.lifecycle_state is LifecycleState.ENDED


@attrs.define(eq=False)
class Restored(Moving):
    def state_dict(self) -> dict[str, Any]:
        return {"start": self.start}

    def load_state_dict(self, state_dict: Any, state: State) -> None:
        object.__setattr__(self, "start", state_dict["start"])


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_a_start_restored_by_load_state_dict_is_the_one_the_guard_reads(route: str) -> None:
    first = Session()
    first.initialize(recipe=[Restored(start=10)])
    _step(first)
    saved = first.state_dict()
    saved["modifiers"]["default_stage.0"]["state"] = {"start": 3}
    session, extra = ROUTES[route]()
    modifier = Restored(start=10)
    session.load_state_dict(saved)
    session.initialize(recipe=[modifier], **extra)
    for _ in range(4):
        _step(session)
    assert modifier.log == [("start", 3)]


SPIED: list[str] = []


@attrs.define(eq=False)
class SpiedStage(StageModifiers):
    """A stage whose ``deliver`` (the lifecycle's hook) records each event, then delivers."""

    def deliver(self, state: State, event: Event, **kwargs: Any) -> None:
        SPIED.append(event.type_.value)
        super().deliver(state, event, **kwargs)


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_every_route_delivers_through_the_stage(route: str) -> None:
    SPIED.clear()
    session, extra = ROUTES[route]()
    modifier = Moving(start=0)
    session.initialize(recipe=[SpiedStage([modifier], group="spied")], **extra)
    _step(session)
    assert SPIED == ["batch_start", "optim_pre_step", "optim_post_step", "batch_end"]
    assert modifier.log == [("start", 0)]


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_a_guard_patched_mid_run_is_asked_from_the_next_event(route: str) -> None:
    def patch_guard(modifier: Modifier) -> None:
        def early(self: Modifier, event: Event) -> bool:
            return event.global_step >= 3

        mock.patch.object(type(modifier), "should_start", early).start()

    @attrs.define(eq=False)
    class Patched(Moving):
        pass

    try:
        modifier = _run(route, patch_guard, Patched(start=None))
    finally:
        mock.patch.stopall()
    assert modifier.log == [("start", 3)]


def test_a_stage_reads_the_next_modifier_cell_after_an_earlier_hook_moved_it() -> None:
    @attrs.define(eq=False)
    class Opens(Modifier):
        victim: Modifier | None = None

        def on_initialize(self, state: State, **kwargs: Any) -> bool:
            return True

        def on_update(self, state: State, event: Event, **kwargs: Any) -> None:
            if self.victim is not None and event.type_ is EventType.BATCH_START:
                self.victim.start = event.current_index

    victim = Moving(start=None)
    stage = StageModifiers([Opens(start=0, victim=victim), victim])
    stage.initialize(State())
    stage.update_event(State(), Event(EventType.BATCH_START, global_step=6))
    assert victim.log == [("start", 6)]


@attrs.define(eq=False)
class OwnStage(StageModifiers):
    """A stage class that overrides ``update_event``: the session must call it."""

    seen: list[tuple[Any, ...]] = attrs.field(factory=list)

    def update_event(self, state: State, event: Event, **kwargs: Any) -> None:
        self.seen.append((state, event.type_.value, event.global_step, dict(kwargs)))
        super().update_event(state, event, **kwargs)


class PlainOwnStage(StageModifiers):
    """The same, without ``@attrs.define`` (instances have a ``__dict__``)."""

    seen: list[tuple[Any, ...]]

    def update_event(self, state: State, event: Event, **kwargs: Any) -> None:
        self.seen.append((state, event.type_.value, event.global_step, dict(kwargs)))
        super().update_event(state, event, **kwargs)


@pytest.mark.parametrize("route", sorted(ROUTES))
@pytest.mark.parametrize("kind", [OwnStage, PlainOwnStage])
def test_a_stage_that_overrides_update_event_gets_every_event_with_its_arguments(
    route: str, kind: type[StageModifiers]
) -> None:
    modifier = Moving(start=1)
    stage = kind([modifier], group="own")
    if kind is PlainOwnStage:
        stage.seen = []  # type: ignore[attr-defined]
    session, extra = ROUTES[route]()
    session.initialize(recipe=[stage], **extra)
    session.batch_start(note=7)
    session.optim_pre_step()
    session.optim_post_step()
    session.batch_end()
    session.batch_start()
    state = session.state
    assert stage.seen == [  # type: ignore[attr-defined]
        (state, "batch_start", 0, {"note": 7}),
        (state, "optim_pre_step", 0, {}),
        (state, "optim_post_step", 1, {}),
        (state, "batch_end", 1, {}),
        (state, "batch_start", 1, {}),
    ]
    assert modifier.log == [("start", 1)]  # and the events went on to its modifiers


@pytest.mark.parametrize(
    ("saved", "built", "same"),
    [
        (True, True, True),
        (1, True, False),  # equal, but not the same type
        (1.0, 1, False),
        ([1, [2, "a"]], [1, [2, "a"]], True),
        ([1, [2, "a"]], [1, [2, "b"]], False),
        ([1, 2], [1, 2, 3], False),
        ({"a": 1, "b": [2]}, {"a": 1, "b": [2]}, True),
        ({"a": 1, "b": [2]}, {"a": 1, "b": [3]}, False),  # same keys, another value
        ({"a": 1}, {"a": 1, "b": 2}, False),
        ({"a": 1, "c": 2}, {"a": 1, "b": 2}, False),
        (None, None, True),
    ],
)
def test_saved_arguments_must_equal_the_recipe_with_the_same_types(
    saved: Any, built: Any, same: bool
) -> None:
    from modfsm.engine.loop.session import _identical

    assert _identical(saved, built) is same


def test_a_tensor_argument_is_not_the_bool_it_equals() -> None:
    import torch

    from modfsm.engine.loop.session import _identical

    assert not _identical(torch.tensor(1.0), True)


def test_stage_and_session_cells_call_the_class_functions_resolved_when_it_was_made() -> None:
    # The stage's update cell is its declared hook itself: StageModifiers.deliver.
    table = StageModifiers.__compiled_stage__.states["initialized"]
    assert table[EventType.LOSS_CALCULATED] is StageModifiers.deliver
    assert SpiedStage.__compiled_stage__.states["initialized"][EventType.BATCH_END] is (
        SpiedStage.deliver
    )
    # A hook assigned to Session afterwards is not seen by its (slotted) instances ...
    absorbed: list[str] = []

    def spy(self: Session, state: State, event: Event, **kwargs: Any) -> None:
        absorbed.append(event.type_.value)

    class Loose(Session):
        """Written without @attrs.define: instances have a __dict__."""

    session = Session()
    session.initialize(recipe=[])
    with mock.patch.object(Session, "absorb", spy):
        session.batch_start()
        assert absorbed == []
        # ... but by those of a subclass written without @attrs.define (they may hold
        # hooks of their own, so their cells look the hooks up at each call).
        plain = Loose()
        plain.initialize(recipe=[])
        plain.batch_start()
    assert absorbed == ["batch_start"]


def test_the_session_runs_each_stage_cell_directly_not_through_update_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A speed path that changes nothing observable: pinned here, since the differential
    # tests cannot tell it from the update_event call it saves.
    session = Session()
    session.initialize(recipe=[Moving(start=0)])

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("StageModifiers.update_event was called")

    monkeypatch.setattr(StageModifiers, "update_event", refuse)
    _step(session)
    assert session.global_step == 1


def test_a_schedule_that_is_not_a_finite_number_is_traced_as_its_repr() -> None:
    import math

    modifier = Quiet(start=0)
    session = Session()
    session.initialize(recipe=[modifier], trace=True)
    object.__setattr__(modifier, "end", math.inf)
    _step(session)
    assert session.trace is not None
    calls = [r for r in session.trace.records if r.get("kind") == "call"]
    assert calls[1]["schedules"] == {
        "default_stage.0": {"start": 0, "end": "inf", "default_guards": True}
    }
    assert verify(session.trace.records).ok


def test_a_stage_runs_each_modifier_cell_directly_not_through_update_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    session = Session()
    session.initialize(recipe=[Moving(start=0)])

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("Modifier.update_event was called")

    monkeypatch.setattr(Modifier, "update_event", refuse)
    _step(session)
    assert session.global_step == 1


def test_update_event_assigned_to_a_class_during_a_run_gets_the_next_events() -> None:
    @attrs.define(eq=False)
    class Later(Moving):
        pass

    seen: list[str] = []
    base = Modifier.update_event

    def record(self: Modifier, state: State, event: Event, **kwargs: Any) -> None:
        seen.append(event.type_.value)
        base(self, state, event, **kwargs)

    session = Session()
    session.initialize(recipe=[Later(start=0)])
    _step(session)
    with mock.patch.object(Later, "update_event", record):
        session.batch_start()
    session.loss_calculated()
    assert seen == ["batch_start"]


def test_a_modifier_whose_lifecycle_lacks_the_event_refuses_it_naming_the_event() -> None:
    from modfsm.engine.kernel.declaration import Declaration, StateSpec, TriggerSpec
    from modfsm.engine.kernel.errors import ConfigTypeError

    @attrs.define(eq=False)
    class Elsewhere(Modifier):
        __lifecycle__ = Declaration(
            name="delivery-test-elsewhere",
            flags=("initialized", "started", "ended", "finalized"),
            states=(
                StateSpec(
                    "on", {"initialized": True, "started": True, "ended": False, "finalized": False}
                ),
            ),
            initial="on",
            guards=(),
            hooks=(),
            triggers=(TriggerSpec("initialize", "initialize"), TriggerSpec("go", "go")),
            event_triggers={"go": "go"},
            transitions=(
                {"trigger": "initialize", "source": "on", "dest": None},
                {"trigger": "go", "source": "on", "dest": None},
            ),
            rejections=(),
        )

        def on_initialize(self, state: State, **kwargs: Any) -> bool:
            return True

    stage = StageModifiers([Elsewhere()])
    event = Event(EventType.LOSS_CALCULATED, global_step=2)
    with pytest.raises(ConfigTypeError, match=r"got Event\(type_=<EventType.LOSS_CALCULATED"):
        stage.deliver(State(), event)


def test_a_slotted_class_cells_are_its_functions_and_its_route_is_its_table() -> None:
    # Speed paths that change nothing observable, pinned: a one-hook cell is the class's
    # hook function, and a class that keeps update_event is delivered its table itself.
    table = Moving.__compiled_lifecycle__.states["started"]
    assert table[EventType.LOSS_CALCULATED] is Moving.on_update
    assert table.route is table

    @attrs.define(eq=False)
    class Own(Moving):
        def update_event(self, state: State, event: Event, **kwargs: Any) -> None:
            super().update_event(state, event, **kwargs)

    own = Own.__compiled_lifecycle__.states["started"]
    assert own.route is not own
    assert set(own.route) == set(own)


@attrs.define(eq=False)
class Watchful(Modifier):
    """Records the state each on_event gets, and whether should_start was asked."""

    states: list[Any] = attrs.field(factory=list)
    asked: list[float] = attrs.field(factory=list)

    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        return True

    def on_event(self, state: State, event: Event, **kwargs: Any) -> None:
        self.states.append(state)

    def should_start(self, event: Event) -> bool:
        self.asked.append(event.current_index)
        return False


def test_a_guarded_resolved_cell_passes_the_state_to_its_prelude_and_asks_its_guard() -> None:
    modifier = Watchful(start=3)
    state = State()
    modifier.initialize(state)
    modifier.update_event(state, Event(EventType.BATCH_START, global_step=1))
    assert modifier.states == [state]
    assert modifier.asked == [0, 1]  # at initialize, then for the event


def test_a_resolved_guarded_cell_with_one_hook_and_no_move_still_asks_its_guard() -> None:
    from modfsm.engine.kernel.compiler import compile_machine, specialize
    from tests.unit.test_elision import _guarded  # go: noisy when check holds, else stay

    machine = compile_machine(_guarded("delivery-test-guarded-stay"), state_attr="_lc")
    calls: list[str] = []

    class Obj:
        __slots__ = ()

        def check(self, event: Any) -> bool:
            calls.append("check")
            return False

        def noisy(self, state: Any, event: Any, **kwargs: Any) -> None:
            calls.append("noisy")

    resolved = specialize(machine, noop_hooks=frozenset(), owner=Obj)
    resolved.states["off"]["go"](Obj(), None, None)
    assert calls == ["check"]


class Foreign:
    """An event of no declared type: no table has a cell for it."""

    type_ = "custom"
    global_step = 0


@attrs.define(eq=False)
class RawStage(StageModifiers):
    seen: list[tuple[Any, ...]] = attrs.field(factory=list)

    def update_event(self, state: State, event: Event, **kwargs: Any) -> None:
        self.seen.append((state, event, kwargs))


@attrs.define(eq=False)
class RawModifier(Modifier):
    seen: list[tuple[Any, ...]] = attrs.field(factory=list)

    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        return True

    def update_event(self, state: State, event: Event, **kwargs: Any) -> None:
        self.seen.append((state, event, kwargs))


def test_an_event_without_a_cell_reaches_update_event_with_all_its_arguments() -> None:
    modifier = RawModifier()
    stage = RawStage([modifier])
    session = Session()
    session.initialize(recipe=[stage])
    state, event = session.state, Foreign()
    session.send(state, event, note=7)  # type: ignore[arg-type]
    assert stage.seen == [(state, event, {"note": 7})]
    stage.deliver(state, event, note=8)  # type: ignore[arg-type]
    assert modifier.seen == [(state, event, {"note": 8})]
