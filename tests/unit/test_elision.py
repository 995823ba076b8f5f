"""Per-class lifecycle variants: empty hooks left out, and the ways a hook can still arrive.

``tests/property/test_fast_path.py`` checks, over random events, that a
specialized class calls exactly the hooks the declared table calls; here are the
specific cases: which cells become :data:`~modfsm.engine.kernel.compiler.IGNORE`, hooks
assigned to a class later (``mock.patch.object``), classes whose instances have
a ``__dict__``, moving an instance to another class, and the fan-out of stages
and sessions to classes that override ``update_event``.
"""

from __future__ import annotations

from typing import Any
from unittest import mock

import attrs
import pytest

from modfsm.engine import Event, EventType, LifecycleState, Modifier, State, handles
from modfsm.engine.kernel.compiler import IGNORE, compile_machine, specialize
from modfsm.engine.kernel.declaration import Declaration, HookSpec, StateSpec, TriggerSpec
from modfsm.engine.kernel.errors import ConfigTypeError, DeclarationError
from modfsm.engine.loop.session import Session
from modfsm.engine.runtime.modifier import switch_class
from modfsm.engine.runtime.stage import StageModifiers
from tests.doubles import NoopModifier

STATE = State()
LOSS = Event(EventType.LOSS_CALCULATED)


@attrs.define
class Updates(Modifier):
    seen: list[str] = attrs.field(factory=list)

    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        return True

    def on_update(self, state: State, event: Event, **kwargs: Any) -> None:
        self.seen.append(event.type_.value)


@attrs.define
class UpdatesAndMore(Updates):
    pass


def started(cls: type[Modifier]) -> Any:
    modifier = cls(start=0)
    modifier.initialize(STATE)
    assert modifier.lifecycle_state is LifecycleState.STARTED
    return modifier


def test_a_class_keeping_every_empty_hook_ignores_events_inside_its_window() -> None:
    table = NoopModifier.__compiled_lifecycle__.states["started"]
    assert table[EventType.LOSS_CALCULATED] is IGNORE
    assert table[EventType.BATCH_START] is IGNORE
    # the window can still close: should_end decides a state change
    assert table[EventType.BATCH_END] is not IGNORE
    # waiting: should_start decides whether the window opens
    waiting = NoopModifier.__compiled_lifecycle__.states["initialized"]
    assert waiting[EventType.BATCH_START] is not IGNORE


def test_the_declared_plans_and_the_base_table_are_not_specialized() -> None:
    base = Modifier.__compiled_lifecycle__
    assert NoopModifier.__compiled_lifecycle__.plans is base.plans
    assert base.states["started"][EventType.LOSS_CALCULATED] is not IGNORE
    assert Updates.__compiled_lifecycle__.states["started"][EventType.LOSS_CALCULATED] is not IGNORE


def test_a_hook_patched_onto_the_class_later_is_called_and_unpatching_restores() -> None:
    modifier = started(NoopModifier)
    with mock.patch.object(NoopModifier, "on_update") as on_update:
        modifier.update_event(STATE, LOSS)
        on_update.assert_called_once_with(STATE, LOSS)
    assert (
        NoopModifier.__compiled_lifecycle__.states["started"][EventType.LOSS_CALCULATED] is IGNORE
    )
    modifier.update_event(STATE, LOSS)  # the mock is gone; nothing to call
    on_update.assert_called_once()


def test_a_patch_on_a_base_class_reaches_its_subclasses_and_their_instances() -> None:
    modifier = started(UpdatesAndMore)
    states_before = dict(UpdatesAndMore.__compiled_lifecycle__.states)
    with mock.patch.object(Updates, "on_event") as on_event:
        modifier.update_event(STATE, LOSS)
        on_event.assert_called_once_with(STATE, LOSS)
    assert modifier.seen == ["loss_calculated"]
    # rebuilt in place: the instance kept its state object
    assert dict(UpdatesAndMore.__compiled_lifecycle__.states) == states_before
    assert modifier._lc is states_before["started"]


def test_instances_with_a_dict_are_not_specialized() -> None:
    class Plain(Modifier):  # no attrs.define: instances have a __dict__
        def on_initialize(self, state: State, **kwargs: Any) -> bool:
            return True

    assert Plain.__compiled_lifecycle__.states["started"][EventType.LOSS_CALCULATED] is not IGNORE
    modifier = started(Plain)
    with mock.patch.object(modifier, "on_update") as on_update:
        stage = StageModifiers([modifier])
        stage.update_event(STATE, LOSS)
    on_update.assert_called_once_with(STATE, LOSS)


SAID: list[str] = []


@attrs.define
class Louder(NoopModifier):
    """The same layout as NoopModifier, with an update hook."""

    def on_update(self, state: State, event: Event, **kwargs: Any) -> None:
        SAID.append(event.type_.value)


def test_switch_class_moves_the_instance_to_the_new_class_table() -> None:
    SAID.clear()
    modifier = started(NoopModifier)
    switch_class(modifier, Louder)
    assert type(modifier) is Louder
    assert modifier._lc is Louder.__compiled_lifecycle__.states["started"]
    modifier.update_event(STATE, LOSS)
    assert SAID == ["loss_calculated"]
    switch_class(modifier, NoopModifier)
    assert modifier._lc is NoopModifier.__compiled_lifecycle__.states["started"]
    modifier.update_event(STATE, LOSS)
    assert SAID == ["loss_calculated"]
    assert modifier.lifecycle_state is LifecycleState.STARTED


def test_switch_class_to_a_class_with_another_lifecycle_is_refused() -> None:
    other = Declaration(
        name="elision-test-other",
        flags=("done",),
        states=(StateSpec("created", {"done": False}), StateSpec("started", {"done": True})),
        initial="created",
        guards=(),
        hooks=(),
        triggers=(TriggerSpec("initialize", "initialize", None, "initialize"),),
        event_triggers={},
        transitions=(
            {"trigger": "initialize", "source": ["created", "started"], "dest": "started"},
        ),
        rejections=(),
    )

    @attrs.define
    class Elsewhere(NoopModifier):
        __lifecycle__ = other

    modifier = started(NoopModifier)
    before = modifier._lc
    with pytest.raises(ConfigTypeError, match=r"Elsewhere does not run the lifecycle") as caught:
        switch_class(modifier, Elsewhere)
    assert "To fix, switch to a class with the same __lifecycle__." in str(caught.value)
    assert (caught.value.owner, caught.value.field, caught.value.value) == (
        "Elsewhere",
        "__lifecycle__",
        Modifier.__lifecycle__.name,
    )
    assert type(modifier) is NoopModifier
    assert modifier._lc is before


def _event_cells(machine: Any) -> list[Any]:
    return [state[kind] for state in machine.states.values() for kind in EventType]


def _another_update(self: Modifier, state: State, event: Event, **kwargs: Any) -> None:
    return None


def test_patching_a_hook_of_modifier_itself_leaves_its_declared_table_whole() -> None:
    base = Modifier.__compiled_lifecycle__
    assert not any(cell is IGNORE for cell in _event_cells(base))
    with mock.patch.object(Modifier, "on_update", _another_update):
        assert not any(cell is IGNORE for cell in _event_cells(Modifier.__compiled_lifecycle__))
    assert Modifier.__compiled_lifecycle__ is base
    assert not any(cell is IGNORE for cell in _event_cells(base))


def test_a_hook_assigned_after_the_lifecycle_was_replaced_compiles_the_new_lifecycle() -> None:
    @attrs.define
    class Replaced(NoopModifier):
        def check(self, event: Event) -> bool:
            return True

        def noisy(self, state: State, event: Event, **kwargs: Any) -> None:
            pass

    old = Replaced.__compiled_lifecycle__
    Replaced.__lifecycle__ = _guarded("elision-test-replaced")  # not watched: nothing yet
    assert Replaced.__compiled_lifecycle__ is old
    Replaced.on_update = _another_update  # type: ignore[method-assign]
    assert Replaced.__compiled_lifecycle__.declaration.name == "elision-test-replaced"
    assert NoopModifier.__compiled_lifecycle__.declaration.name == Modifier.__lifecycle__.name


def _guarded(name: str) -> Declaration:
    """A guard whose two branches differ only by a hook that may be left out."""
    return Declaration(
        name=name,
        flags=("on",),
        states=(StateSpec("off", {"on": False}),),
        initial="off",
        guards=("check",),
        hooks=(HookSpec("noisy"),),
        triggers=(TriggerSpec("go", "go", None, "go"),),
        event_triggers={"go": "go"},
        transitions=(
            {
                "trigger": "go",
                "source": "off",
                "dest": None,
                "conditions": "check",
                "before": "noisy",
            },
            {"trigger": "go", "source": "off", "dest": None, "unless": "check"},
        ),
        rejections=(),
    )


def test_a_guard_is_left_out_only_when_known_pure_and_its_branches_became_equal() -> None:
    machine = compile_machine(_guarded("elision-test-guard"), state_attr="_lc")
    kept = specialize(machine, noop_hooks=frozenset({"noisy"}))
    assert kept.states["off"]["go"] is not IGNORE  # the guard may have effects: still asked
    dropped = specialize(machine, noop_hooks=frozenset({"noisy"}), pure_guards=frozenset({"check"}))
    assert dropped.states["off"]["go"] is IGNORE
    full = specialize(machine, noop_hooks=frozenset(), pure_guards=frozenset({"check"}))
    assert full.states["off"]["go"] is not IGNORE  # the branches differ: the guard decides

    asked: list[str] = []

    class Obj:
        _lc = kept.states["off"]

        def check(self, event: Any) -> bool:
            asked.append("check")
            return True

        def noisy(self, state: Any, event: Any, **kwargs: Any) -> None:
            asked.append("noisy")

    kept.states["off"]["go"](Obj(), None, None)
    assert asked == ["check"]


def test_specialize_into_a_variant_of_another_declaration_is_refused() -> None:
    one = compile_machine(_guarded("elision-test-one"), state_attr="_lc")
    two = compile_machine(_guarded("elision-test-two"), state_attr="_lc")
    with pytest.raises(
        ValueError, match=r"^specialize: 'into' must be a variant of the same declaration$"
    ):
        specialize(one, noop_hooks=frozenset(), into=specialize(two, noop_hooks=frozenset()))


@attrs.define
class OwnDispatch(NoopModifier):
    """Overrides update_event: stages must call it, not its table."""

    received: list[str] = attrs.field(factory=list)

    def update_event(self, state: State, event: Event, **kwargs: Any) -> None:
        self.received.append(event.type_.value)
        super().update_event(state, event, **kwargs)


def test_a_stage_calls_an_overridden_update_event() -> None:
    modifier = OwnDispatch(start=0)
    stage = StageModifiers([modifier])
    stage.initialize(STATE)
    stage.update_event(STATE, LOSS)
    assert modifier.received == ["loss_calculated"]


def test_a_session_subclass_runs_the_declared_cells() -> None:
    absorbed: list[str] = []

    @attrs.define(eq=False)
    class Watching(Session):
        def absorb(self, state: State, event: Event, **kwargs: Any) -> None:
            absorbed.append(event.type_.value)
            super().absorb(state, event, **kwargs)

    session = Watching()
    session.initialize(recipe=[OwnDispatch(start=0)])
    session.batch_start("x")
    session.loss_calculated(1.5)
    assert absorbed == ["batch_start", "loss_calculated"]
    assert (session.state.batch_data, session.state.loss) == ("x", 1.5)
    assert session.modifiers[0][1].received == ["batch_start", "loss_calculated"]  # type: ignore[attr-defined]


@attrs.define
class OwnEnd(NoopModifier):
    """Overrides should_end: the engine cannot know when it holds."""

    def should_end(self, event: Event) -> bool:
        return event.global_step >= 2


def test_a_session_notices_a_window_bound_changed_between_events() -> None:
    modifier = NoopModifier(start=0)
    session = Session()
    session.initialize(recipe=[modifier])
    for _ in range(2):  # plans are built with end=None: every event is inert
        for call in ("batch_start", "loss_calculated", "optim_pre_step", "optim_post_step"):
            getattr(session, call)()
        session.batch_end()
    modifier.end = 3
    for call in ("batch_start", "loss_calculated", "optim_pre_step", "optim_post_step"):
        getattr(session, call)()
    session.batch_end()
    assert modifier.lifecycle_state is LifecycleState.ENDED


POSTED: list[str] = []


@attrs.define
class PostOnly(NoopModifier):
    @handles(EventType.OPTIM_POST_STEP)
    def on_update(self, state: State, event: Event, **kwargs: Any) -> None:
        POSTED.append(event.type_.value)


def test_a_hook_decorated_with_handles_runs_only_for_its_event_types() -> None:
    POSTED.clear()
    modifier = started(PostOnly)
    for kind in (EventType.BATCH_START, EventType.LOSS_CALCULATED, EventType.OPTIM_POST_STEP):
        modifier.update_event(STATE, Event(kind))
    PostOnly.on_update(modifier, STATE, Event(EventType.LOSS_CALCULATED))  # called directly
    assert POSTED == ["optim_post_step"]


def test_handles_leaves_the_hook_out_of_the_other_event_types_cells() -> None:
    table = PostOnly.__compiled_lifecycle__.states["started"]
    assert table[EventType.LOSS_CALCULATED] is IGNORE
    assert table[EventType.BATCH_START] is IGNORE
    assert table[EventType.OPTIM_POST_STEP] is not IGNORE
    assert table[EventType.OPTIM_PRE_STEP] is IGNORE
    assert table[EventType.BATCH_END] is not IGNORE  # should_end is asked: it may close


@pytest.mark.parametrize("arguments", [(), ("optim_post_step",), (EventType.BATCH_END, 3)])
def test_handles_needs_event_types(arguments: tuple[Any, ...]) -> None:
    with pytest.raises(ConfigTypeError, match=r"name one or more EventType members") as caught:
        handles(*arguments)
    shown = ", ".join(map(repr, arguments))
    assert str(caught.value).startswith(
        f"handles({shown}): name one or more EventType members. "
        "To fix, write e.g. @handles(EventType.OPTIM_POST_STEP)."
    )
    assert (caught.value.owner, caught.value.field, caught.value.value) == (
        "handles",
        "event_types",
        arguments,
    )


def test_handles_on_a_hook_called_without_an_event_is_refused_when_the_class_is_defined() -> None:
    with pytest.raises(
        DeclarationError, match=r"Gated.on_initialize is decorated with @handles"
    ) as caught:

        @attrs.define
        class Gated(Modifier):
            @handles(EventType.BATCH_START)
            def on_initialize(self, state: State, **kwargs: Any) -> bool:
                return True

    assert "To fix, decorate only event hooks (on_event, on_start, on_update, on_end)." in str(
        caught.value
    )
    assert (caught.value.declaration, caught.value.where) == (
        Modifier.__lifecycle__.name,
        "on_initialize",
    )


@attrs.define
class AsksToStart(NoopModifier):
    asked: list[int] = attrs.field(factory=list)

    def should_start(self, event: Event) -> bool:
        self.asked.append(event.global_step)
        return False


def test_an_overridden_guard_is_asked_even_when_no_hook_would_run() -> None:
    modifier = AsksToStart(start=0)
    modifier.initialize(STATE)
    modifier.update_event(STATE, Event(EventType.BATCH_START, global_step=4))
    assert modifier.asked == [0, 4]  # at initialize (step 0), then for the event


def test_a_session_wakes_a_quiet_modifier_at_its_start_and_end() -> None:
    modifier = EventLogged(start=2, end=4)
    session = Session()
    session.initialize(recipe=[modifier])
    for _ in range(5):
        for call in ("batch_start", "loss_calculated", "optim_pre_step", "optim_post_step"):
            getattr(session, call)()
        session.batch_end()
    assert modifier.hooks == [("on_start", "batch_start", 2), ("on_end", "batch_end", 4)]


@attrs.define
class EventLogged(NoopModifier):
    hooks: list[tuple[str, str, float]] = attrs.field(factory=list)

    def on_start(self, state: State, event: Event, **kwargs: Any) -> None:
        self.hooks.append(("on_start", event.type_.value, event.current_index))

    def on_end(self, state: State, event: Event, **kwargs: Any) -> None:
        self.hooks.append(("on_end", event.type_.value, event.current_index))


# --- the session's shortcuts are taken (they change only speed, so the
# --- differential tests cannot tell if they were not)


def _batch(session: Session) -> None:
    session.batch_start()
    session.loss_calculated()
    session.optim_pre_step()
    session.optim_post_step()
    session.batch_end()


@attrs.define
class QuietUntilPatched(NoopModifier):
    seen: list[str] = attrs.field(factory=list)


@attrs.define(eq=False)
class EndsOnce(NoopModifier):
    """Quiet inside an open window (only ``on_end`` is overridden); records its end."""

    ended_on: list[tuple[str, int]] = attrs.field(factory=list)

    def on_end(self, state: State, event: Event, **kwargs: Any) -> None:
        self.ended_on.append((event.type_.value, event.global_step))


@attrs.define(eq=False)
class Closer(NoopModifier):
    """From inside the ``BATCH_END`` of step ``at``, moves another modifier's end to ``at``."""

    victim: Modifier | None = None
    at: int = 3

    def on_update(self, state: State, event: Event, **kwargs: Any) -> None:
        if self.victim is not None and (event.type_, event.global_step) == (
            EventType.BATCH_END,
            self.at,
        ):
            self.victim.end = self.at


def test_a_modifier_a_hook_wakes_mid_event_receives_the_rest_of_that_event() -> None:
    # A window closes only on a BATCH_END: the one in which the closer moves the
    # victim's end must reach the victim, although its plan was made without it.
    victim = EndsOnce(start=0)
    closer = Closer(start=0, victim=victim, at=3)
    session = Session()
    session.initialize(recipe=[closer, victim])
    _batch(session)
    _batch(session)
    _batch(session)  # its BATCH_END carries step 3
    assert (session.global_step, victim.end) == (3, 3)
    assert victim.ended_on == [("batch_end", 3)]  # ended by that same BATCH_END
    assert victim.lifecycle_state is LifecycleState.ENDED


def test_a_hook_assigned_to_a_class_during_a_run_is_called_from_the_next_event() -> None:
    modifier = QuietUntilPatched(start=0)
    session = Session()
    session.initialize(recipe=[modifier])
    _batch(session)
    assert modifier.seen == []

    def record(self: QuietUntilPatched, state: State, event: Event, **kwargs: Any) -> None:
        self.seen.append(event.type_.value)

    with mock.patch.object(QuietUntilPatched, "on_update", record):
        session.batch_start()
    assert modifier.seen == ["batch_start"]


def test_compiled_and_specialized_machines_keep_the_plans_their_cells_run() -> None:
    machine = compile_machine(_guarded("elision-test-plans"), state_attr="_lc")
    assert machine.cell_plans == machine.plans
    quiet = specialize(machine, noop_hooks=frozenset({"noisy"}))
    assert quiet.cell_plans[("off", "go")].when_true is not None
    assert quiet.cell_plans[("off", "go")].when_true.hooks == ()
    assert quiet.plans == machine.plans  # the declared plans, as declared


def test_a_hook_only_the_new_lifecycle_calls_recompiles_when_assigned() -> None:
    @attrs.define
    class Swapped(NoopModifier):
        def check(self, event: Event) -> bool:
            return True

        def noisy(self, state: State, event: Event, **kwargs: Any) -> None:
            pass

    Swapped.__lifecycle__ = _guarded("elision-test-swapped")
    Swapped.noisy = _another_noisy  # type: ignore[method-assign]
    assert Swapped.__compiled_lifecycle__.declaration.name == "elision-test-swapped"


def _another_noisy(self: Any, state: State, event: Event, **kwargs: Any) -> None:
    pass
