"""Per-class specialization and untraced delivery do what the declared cells do.

* each ``attrs`` modifier class runs a variant of the lifecycle that leaves out
  the calls to the hooks it keeps empty, and to hooks decorated with
  ``@handles`` for the other event types (``modfsm.engine.kernel.compiler.specialize``), and a
  stage skips a modifier whose cell is then :data:`~modfsm.engine.kernel.compiler.IGNORE`;
* a session without a trace must deliver exactly what a traced one does (both run
  the grammar's compiled cell and ``StageModifiers.deliver``; the trace only records).

Here both are compared, call by call: a modifier class against the same instance on
the unspecialized table, and a session without a trace against one with a trace,
with a modifier that reschedules another from inside an event, stage subclasses and
modifiers that override ``update_event``.
"""

from __future__ import annotations

import itertools
from typing import Any

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from modfsm.engine import Event, EventType, Modifier, State, handles
from modfsm.engine.kernel.compiler import IGNORE
from modfsm.engine.loop.session import Session
from modfsm.engine.model.session_grammar import SessionState
from modfsm.engine.runtime.stage import StageModifiers
from tests.doubles import put_in_state
from tests.property.test_session_grammar import LOOP_EVENTS

EMPTY_HOOKS = ("on_event", "on_start", "on_update", "on_end")


def _recording(name: str) -> Any:
    def hook(self: Any, state: State, event: Event, **kwargs: Any) -> None:
        call = (name, *_seen(state, event, kwargs))
        self.calls.append(call)
        if self.fail_at is not None and (name, event.global_step) == self.fail_at:
            raise RuntimeError(f"{name} failed at step {event.global_step}")

    hook.__name__ = name
    return hook


def _seen(state: State, event: Event, kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """What a hook can observe of a delivery: the event, the keyword arguments, the state."""
    return (
        event.type_.value,
        event.global_step,
        event.global_batch,
        sorted(kwargs),
        state.batch_data,
        state.loss,
    )


def _initialize(self: Any, state: State, **kwargs: Any) -> bool:
    return True


def _class(name: str, hooks: dict[str, Any]) -> type[Modifier]:
    """An attrs modifier class with ``hooks``, recording ``calls``; the others stay empty."""
    namespace: dict[str, Any] = {
        "__annotations__": {
            "calls": "list[tuple[Any, ...]]",
            "fail_at": "Any",
        },
        "calls": attrs.field(factory=list),
        "fail_at": attrs.field(default=None),
        "on_initialize": _initialize,
        **hooks,
    }
    return attrs.define(eq=False)(type(name, (Modifier,), namespace))


#: one class for each subset of the empty hooks it overrides
CLASSES = {
    subset: _class(
        f"Keeps_{'_'.join(subset) or 'none'}", {name: _recording(name) for name in subset}
    )
    for size in range(len(EMPTY_HOOKS) + 1)
    for subset in itertools.combinations(EMPTY_HOOKS, size)
}

#: and one whose every hook is decorated with @handles for some event types only
_FILTERS = {
    "on_event": (EventType.OPTIM_POST_STEP, EventType.LOSS_CALCULATED),
    "on_start": (EventType.BATCH_START,),
    "on_update": (EventType.OPTIM_POST_STEP, EventType.BATCH_END),
    "on_end": (EventType.BATCH_END,),
}
CLASSES[("filtered",)] = _class(
    "Filtered", {name: handles(*types)(_recording(name)) for name, types in _FILTERS.items()}
)

EVENTS = [t for t in EventType if t not in (EventType.INITIALIZE, EventType.FINALIZE)]
bounds = st.one_of(st.none(), st.integers(-1, 6))


@settings(max_examples=150)
@given(
    subset=st.sampled_from(sorted(CLASSES)),
    start=bounds,
    end=bounds,
    events=st.lists(st.tuples(st.sampled_from(EVENTS), st.integers(0, 8)), max_size=25),
)
def test_a_specialized_class_calls_the_hooks_the_declared_table_calls(
    subset: tuple[str, ...], start: int | None, end: int | None, events: list[tuple[Any, int]]
) -> None:
    cls = CLASSES[subset]
    fast, full = cls(start=start, end=end), cls(start=start, end=end)
    fast.initialize(State())
    full.initialize(State())
    base = Modifier.__compiled_lifecycle__  # the unspecialized table: every hook is called
    put_in_state(full, base.states[full._lc.name])
    for kind, step in events:
        event = Event(kind, global_step=step)
        fast.update_event(State(), event)
        full.update_event(State(), event)
        assert fast.calls == full.calls  # type: ignore[attr-defined]  # added by _class
        assert fast._lc.name == full._lc.name
        assert full._lc is base.states[full._lc.name]  # stayed on the declared table
    if not subset:
        assert all(fast._lc[kind] is IGNORE for kind in (EventType.LOSS_CALCULATED,))


@attrs.define(eq=False)
class Meddler(Modifier):
    """Reschedules another modifier from inside an event (the plans must notice)."""

    at: int = 0
    start: int | None = None
    value: int | None = None
    victim: Modifier | None = None
    calls: list[tuple[Any, ...]] = attrs.field(factory=list)

    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        return True

    def on_event(self, state: State, event: Event, **kwargs: Any) -> None:
        self.calls.append(("on_event", *_seen(state, event, kwargs)))
        if self.victim is not None and event.global_step == self.at:
            self.victim.end = self.value


@attrs.define(eq=False)
class Dispatching(Modifier):
    """Overrides update_event: it must get every event, as the stage would send it."""

    calls: list[tuple[Any, ...]] = attrs.field(factory=list)

    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        return True

    def update_event(self, state: State, event: Event, **kwargs: Any) -> None:
        self.calls.append(("update_event", *_seen(state, event, kwargs)))
        super().update_event(state, event, **kwargs)


class RecordingStage(StageModifiers):
    """A stage subclass: the session must call its ``update_event``, not forward past it."""

    def update_event(self, state: State, event: Event, **kwargs: Any) -> None:
        self.calls.append(("stage", *_seen(state, event, kwargs)))
        super().update_event(state, event, **kwargs)

    @property
    def calls(self) -> list[tuple[Any, ...]]:
        found: list[tuple[Any, ...]] = self.__dict__.setdefault("_calls", [])
        return found


class FastSessionAgainstCells(RuleBasedStateMachine):
    """One recipe in two sessions: ``fast`` (no trace) and ``cells`` (traced).

    The first stage holds a :class:`Meddler` that changes the ``end`` of the
    stage's last modifier at a drawn step, a :class:`Dispatching` modifier (no
    window), then the drawn modifiers; the second
    stage, a :class:`RecordingStage` (a subclass: delivered to as a whole),
    holds a :class:`Dispatching` modifier, whose start changes a state in the
    middle of an event; the third holds a modifier that records every hook. Or
    (``alone``) the drawn modifiers only, so that events no modifier receives
    (their ``last_event`` built only when read) are compared too.
    """

    fast: Session
    cells: Session

    @initialize(
        per_step=st.integers(1, 3),
        steps_per_epoch=st.one_of(st.none(), st.integers(1, 4)),
        windows=st.lists(st.tuples(bounds, bounds, st.sampled_from(sorted(CLASSES))), max_size=3),
        # from step 1: initialize (step 0) must succeed; the loop's failures are what is compared
        fail_at=st.one_of(st.none(), st.tuples(st.sampled_from(EMPTY_HOOKS), st.integers(1, 4))),
        meddle=st.tuples(st.integers(0, 4), bounds),
        dispatching=bounds,
        alone=st.booleans(),
    )
    def setup(
        self,
        per_step: int,
        steps_per_epoch: int | None,
        windows: list[tuple[int | None, int | None, tuple[str, ...]]],
        fail_at: tuple[str, int] | None,
        meddle: tuple[int, int | None],
        dispatching: int | None,
        alone: bool,
    ) -> None:
        def recipe() -> list[StageModifiers]:
            modifiers = [
                CLASSES[subset](start=start, end=end, fail_at=fail_at)  # type: ignore[call-arg]
                for start, end, subset in windows
            ]
            if alone:
                return [StageModifiers(modifiers, group="only")] if modifiers else []
            meddler = Meddler(
                start=0, at=meddle[0], value=meddle[1], victim=modifiers[-1] if modifiers else None
            )
            last = CLASSES[EMPTY_HOOKS](start=dispatching)
            return [
                StageModifiers([meddler, Dispatching(), *modifiers], group="first"),
                RecordingStage([Dispatching(start=dispatching)], group="second"),
                StageModifiers([last], group="third"),
            ]

        self.fast, self.cells = Session(), Session()
        for session, trace in ((self.fast, False), (self.cells, True)):
            session.initialize(
                recipe=recipe(),
                batches_per_step=per_step,
                steps_per_epoch=steps_per_epoch,
                trace=trace,
            )

    @rule(
        name=st.sampled_from(LOOP_EVENTS),
        partial=st.booleans(),
        extra=st.dictionaries(st.sampled_from(["batch_data", "loss", "note"]), st.integers(0, 3)),
    )
    def send(self, name: str, partial: bool, extra: dict[str, int]) -> None:
        partial = partial and name == "optim_pre_step"
        outcomes: list[tuple[str, str, list[str]] | None] = []
        for session in (self.fast, self.cells):
            try:
                session.event(EventType(name), partial=partial, **extra)
            except Exception as error:  # compared below, type and text
                outcomes.append((type(error).__name__, str(error), getattr(error, "__notes__", [])))
            else:
                outcomes.append(None)
        assert outcomes[0] == outcomes[1]

    @rule(data=st.integers(0, 3))
    def a_whole_batch(self, data: int) -> None:
        """A legal batch, so that runs reach the drawn windows' steps."""
        self.send("batch_start", False, {"batch_data": data})
        self.send("loss_calculated", False, {"loss": data})
        if self.fast.position is SessionState.STEP_DUE_LOSS:
            self.send("optim_pre_step", False, {})
            self.send("optim_post_step", False, {})
        self.send("batch_end", False, {})

    @rule(name=st.sampled_from(["batch_start", "loss_calculated"]), value=st.integers(0, 3))
    def callback(self, name: str, value: int) -> None:
        outcomes: list[tuple[str, str] | None] = []
        for session in (self.fast, self.cells):
            try:
                getattr(session, name)(value, note=value)
            except Exception as error:  # compared below, type and text
                outcomes.append((type(error).__name__, str(error)))
            else:
                outcomes.append(None)
        assert outcomes[0] == outcomes[1]

    @rule(which=st.integers(0, 4), start=bounds, end=bounds)
    def reschedule(self, which: int, start: int | None, end: int | None) -> None:
        for session in (self.fast, self.cells):
            modifiers = [modifier for _, modifier in session.modifiers]
            if not modifiers:
                return
            modifier = modifiers[which % len(modifiers)]
            modifier.start, modifier.end = start, end

    @invariant()
    def the_same_everywhere(self) -> None:
        fast, cells = self.fast, self.cells
        assert fast.position == cells.position
        assert (fast.global_step, fast.global_batch, fast.batches_since_step) == (
            cells.global_step,
            cells.global_batch,
            cells.batches_since_step,
        )
        for attribute in ("last_event", "batch_data", "loss"):
            assert getattr(fast.state, attribute) == getattr(cells.state, attribute)
        for x, y in zip(fast.stages, cells.stages, strict=True):
            assert getattr(x, "calls", None) == getattr(y, "calls", None)
        for (_, a), (_, b) in zip(fast.modifiers, cells.modifiers, strict=True):
            assert a.calls == b.calls  # type: ignore[attr-defined]  # added by _class
            assert a.lifecycle_state == b.lifecycle_state


FastSessionAgainstCells.TestCase.settings = settings(max_examples=80, stateful_step_count=30)
test_the_fast_session_path_matches_the_cells = FastSessionAgainstCells.TestCase
