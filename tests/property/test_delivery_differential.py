"""Every route delivers what the declared table says: a differential test.

Random modifiers — a random subset of hooks overridden, guards overridden or not,
``start`` re-declared in an attrs subclass or not, ``start``/``end`` changed
between steps (by assignment or with ``object.__setattr__``) and inside hooks, a
hook or guard patched onto the class mid-run, a save and resume between batches —
are driven through random loops, legal and illegal, by four runners:

* an untraced :class:`Session`;
* a traced one (``trace=True``, whose replay must then verify);
* a :class:`Session` subclass that overrides ``send`` and ``absorb``;
* the flag-based models in ``specs/reference.py`` (``SpecModifier``,
  ``SpecStage``, ``StepGrammarModel``), which never import modfsm.

All four must log the same hook and guard calls (those the class defines at
that moment: the engine never calls a hook the class keeps empty), reach the
same lifecycle states and positions, and refuse the same calls; the three
sessions must raise the same errors, word for word.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from unittest import mock

import attrs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modfsm.engine import Event, EventType, Modifier, State
from modfsm.engine.kernel.errors import IllegalTransitionError
from modfsm.engine.loop.session import Session
from modfsm.engine.runtime.stage import StageModifiers
from modfsm.engine.tools.replay import verify
from specs.reference import LogEntry, SpecModifier, SpecStage, StepGrammarModel
from tests.property.test_session_grammar import LOOP_EVENTS

HOOKS = ("on_event", "on_start", "on_update", "on_end")
GUARDS = ("should_start", "should_end")
BOUND = st.one_of(st.none(), st.integers(0, 6))
Log = list[tuple[str, str | None, float | None]]


@attrs.frozen
class Change:
    """``field`` of the modifier becomes ``value`` at ``step``: ``how`` = ``assign`` or
    ``raw`` (between batches), or ``hook`` (inside its ``on_event`` of that step's
    ``BATCH_START``)."""

    step: int
    field: str
    value: int | None
    how: str


@attrs.frozen
class Spec:
    """One drawn modifier."""

    start: int | None
    end: int | None
    hooks: frozenset[str]
    guards: frozenset[str]
    redeclared: bool
    changes: tuple[Change, ...]
    patch: tuple[int, str] | None  # (step, hook or guard) patched onto the class then


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    changes = tuple(
        draw(
            st.lists(
                st.builds(
                    Change,
                    step=st.integers(0, 6),
                    field=st.sampled_from(["start", "end"]),
                    value=BOUND,
                    how=st.sampled_from(["assign", "raw", "hook"]),
                ),
                max_size=2,
            )
        )
    )
    hooks = set(draw(st.sets(st.sampled_from(HOOKS))))
    if any(change.how == "hook" for change in changes):
        hooks.add("on_event")  # the change is made from inside on_event
    guards = frozenset(draw(st.sets(st.sampled_from(GUARDS))))
    left = [name for name in (*HOOKS, *GUARDS) if name not in hooks and name not in guards]
    patch = None
    if left:
        patch = draw(st.one_of(st.none(), st.tuples(st.integers(0, 6), st.sampled_from(left))))
    return Spec(draw(BOUND), draw(BOUND), frozenset(hooks), guards, draw(st.booleans()), changes,
                patch)  # fmt: skip


def _start_rule(self: Any, event: Any) -> bool:
    start, end, index = self.start, self.end, event.current_index
    return start is not None and start <= index and (end is None or index < end)


def _end_rule(self: Any, event: Any) -> bool:
    return self.end is not None and event.current_index >= self.end


def _hook_changes(self: Any, event: Any) -> None:
    for change in self.spec.changes:
        if change.how == "hook" and (event.type_, event.current_index) == (
            "batch_start",
            change.step,
        ):
            object.__setattr__(self, change.field, change.value)


def _logging(name: str) -> Callable[..., Any]:
    """A hook or guard for the engine class: logs the call (and, for guards, decides)."""

    if name in GUARDS:
        rule = _start_rule if name == "should_start" else _end_rule

        def guard(self: Any, event: Event) -> bool:
            self.log.append((name, event.type_.value, event.current_index))
            return rule(self, event)

        return guard

    def hook(self: Any, state: State, event: Event, **kwargs: Any) -> None:
        self.log.append((name, event.type_.value, event.current_index))
        if name == "on_event":
            _hook_changes(self, _Seen(event.type_.value, event.current_index))

    return hook


@attrs.frozen
class _Seen:
    type_: str
    current_index: float


def _engine_class(spec: Spec) -> type[Modifier]:
    def on_initialize(self: Any, state: State, **kwargs: Any) -> bool:
        self.log.append(("on_initialize", None, None))
        return True

    def on_finalize(self: Any, state: State, **kwargs: Any) -> bool:
        self.log.append(("on_finalize", None, None))
        return True

    namespace: dict[str, Any] = {
        "__annotations__": {"log": "list[Any]", "spec": "Any"},
        "log": attrs.field(init=False, factory=list),
        "spec": attrs.field(default=None),
        "on_initialize": on_initialize,
        "on_finalize": on_finalize,
    }
    if spec.redeclared:  # the subclass field drops whatever the base field's setters did
        namespace["__annotations__"]["start"] = "float | None"
        namespace["start"] = attrs.field(default=99)
    for name in (*spec.hooks, *spec.guards):
        namespace[name] = _logging(name)
    return attrs.define(eq=False)(type("Drawn", (Modifier,), namespace))


class _Reference(SpecModifier):
    """``SpecModifier`` that logs only what the engine class defines at the moment."""

    def __init__(self, spec: Spec) -> None:
        super().__init__(spec.start, spec.end)
        self.spec = spec
        self.visible = {"on_initialize", "on_finalize", *spec.hooks, *spec.guards}

    def _record(self, name: str, event: Any = None) -> None:
        if name not in self.visible:
            return
        at = None if event is None else event.current_index
        self.log.append(LogEntry(name, None if event is None else _kind(event), at))
        if name == "on_event":
            _hook_changes(self, event)


def _kind(event: Any) -> str:
    kind = event.type_
    return str(getattr(kind, "value", kind))


@attrs.frozen
class _RefEvent:
    type_: str
    current_index: float


@attrs.frozen
class Program:
    per_step: int
    steps_per_epoch: int | None
    specs: tuple[Spec, ...]
    calls: tuple[tuple[str, bool], ...]
    resume_at: int | None  # the call before which a session saves and resumes (if idle)


@st.composite
def programs(draw: st.DrawFn) -> Program:
    legal = ["batch_start", "loss_calculated", "optim_pre_step", "optim_post_step", "batch_end"]
    batch = st.just([(name, False) for name in legal])
    one = st.tuples(st.sampled_from(LOOP_EVENTS), st.booleans()).map(lambda call: [call])
    chunks = draw(st.lists(st.one_of(batch, batch, one), min_size=1, max_size=10))
    calls = tuple(call for chunk in chunks for call in chunk)
    return Program(
        per_step=draw(st.integers(1, 2)),
        steps_per_epoch=draw(st.one_of(st.none(), st.just(2))),
        specs=tuple(draw(st.lists(specs(), min_size=1, max_size=3))),
        calls=calls,
        resume_at=draw(st.one_of(st.none(), st.integers(0, max(len(calls) - 1, 0)))),
    )


class Watching(Session):
    """A subclass on another route: it overrides two of the grammar's hooks."""

    def absorb(self, state: State, event: Event, **kwargs: Any) -> None:
        super().absorb(state, event, **kwargs)

    def send(
        self, state: State, event: Event, batch_data: Any = None, loss: Any = None, **kwargs: Any
    ) -> None:
        super().send(state, event, batch_data, loss, **kwargs)


Outcome = tuple[list[Log], list[str], list[str | None], str]  # logs, flags, errors, position


def _between_batches_changes(program: Program, step: int, modifiers: list[Any]) -> None:
    for spec, modifier in zip(program.specs, modifiers, strict=True):
        for change in spec.changes:
            if change.step == step and change.how == "assign":
                setattr(modifier, change.field, change.value)
            elif change.step == step and change.how == "raw":
                object.__setattr__(modifier, change.field, change.value)


def _patches(program: Program, step: int, classes: list[type[Any]]) -> list[Any]:
    started = []
    for spec, cls in zip(program.specs, classes, strict=True):
        if spec.patch is not None and spec.patch[0] == step:
            patch = mock.patch.object(cls, spec.patch[1], _logging(spec.patch[1]))
            patch.start()
            started.append(patch)
    return started


def run_engine(program: Program, kind: str) -> Outcome:
    classes = [_engine_class(spec) for spec in program.specs]

    def build() -> list[Modifier]:
        built = []
        for spec, cls in zip(program.specs, classes, strict=True):
            modifier = cls(start=spec.start, end=spec.end, spec=spec)  # type: ignore[call-arg]
            built.append(modifier)
        return built

    def new_session() -> Session:
        session = Watching() if kind == "subclass" else Session()
        return session

    modifiers = build()
    session = new_session()
    options: dict[str, Any] = {
        "batches_per_step": program.per_step,
        "steps_per_epoch": program.steps_per_epoch,
        "trace": kind == "traced",
    }
    session.initialize(recipe=[StageModifiers(modifiers, group="s")], **options)
    errors: list[str | None] = []
    positions: list[str] = []
    patches: list[Any] = []
    applied: set[int] = set()
    traces = [session.trace]
    try:
        for number, (name, partial) in enumerate(program.calls):
            step = session.global_step
            if session.position.value == "idle" and step not in applied:
                applied.add(step)
                _between_batches_changes(program, step, modifiers)
                patches += _patches(program, step, classes)
            if number == program.resume_at and session.position.value == "idle":
                saved = session.state_dict()
                old, modifiers = modifiers, build()
                session = new_session()
                session.load_state_dict(saved)
                session.initialize(recipe=[StageModifiers(modifiers, group="s")], **options)
                for modifier, before in zip(modifiers, old, strict=True):
                    # what a load_state_dict that keeps the schedule would restore
                    object.__setattr__(modifier, "start", before.start)
                    object.__setattr__(modifier, "end", before.end)
                    modifier.log = before.log  # type: ignore[attr-defined]
                traces.append(session.trace)
            try:
                session.event(EventType(name), partial=partial and name == "optim_pre_step")
            except IllegalTransitionError as error:
                errors.append(f"{type(error).__name__}: {error}")
            else:
                errors.append(None)
            positions.append(session.position.value)
        finalized = "finalized"
        try:
            session.finalize()
        except IllegalTransitionError:
            finalized = "refused"
    finally:
        for patch in patches:
            patch.stop()
    for trace in traces:
        if trace is not None:
            result = verify(trace.records)
            assert result.ok, result
    states = [f"{(m.initialized, m.started, m.ended, m.finalized)}:{finalized}" for m in modifiers]
    return [list(m.log) for m in modifiers], states, errors, positions[-1] if positions else ""  # type: ignore[attr-defined]


def run_reference(program: Program) -> Outcome:
    modifiers = [_Reference(spec) for spec in program.specs]
    stage = SpecStage(list(modifiers))
    grammar = StepGrammarModel(program.per_step)
    stage.initialize(None)
    errors: list[str | None] = []
    positions: list[str] = []
    patched: set[int] = set()
    for name, partial in program.calls:
        step = grammar.global_step
        if grammar.position == "idle" and step not in patched:
            patched.add(step)
            _between_batches_changes(program, step, modifiers)
            for spec, modifier in zip(program.specs, modifiers, strict=True):
                if spec.patch is not None and spec.patch[0] == step:
                    modifier.visible.add(spec.patch[1])
        try:
            at_step, _ = grammar.apply(name, partial and name == "optim_pre_step")
        except RuntimeError as error:
            errors.append(str(error))
        else:
            errors.append(None)
            epoch = program.steps_per_epoch
            stage.update_event(None, _RefEvent(name, at_step if epoch is None else at_step / epoch))
        positions.append(grammar.position)
    finalized = "finalized"
    try:
        grammar.apply("finalize")
    except RuntimeError:
        finalized = "refused"
    else:
        stage.finalize(None)
    states = [f"{tuple(m.flags())}:{finalized}" for m in modifiers]
    return [list(m.log) for m in modifiers], states, errors, positions[-1] if positions else ""


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=programs())
def test_untraced_traced_subclass_and_the_reference_deliver_alike(program: Program) -> None:
    untraced = run_engine(program, "untraced")
    assert run_engine(program, "traced") == untraced
    assert run_engine(program, "subclass") == untraced
    logs, states, errors, position = run_reference(program)
    assert untraced[0] == logs
    assert untraced[1] == states
    assert [e is None for e in untraced[2]] == [e is None for e in errors]
    assert untraced[3] == position
