"""Every (state x input x guard outcome x gate result) cell of the lifecycle.

For each cell, four readings must agree:

1. the declaration, read directly from its rows by :func:`expected_from_rows`
   (this test's own interpreter, independent of the compiler);
2. the compiled table (the engine);
3. ``transitions``' dispatch of the same declaration;
4. the spec model (and, where gates return True, the reference model), placed
   in the same flags.

Illegal cells must raise and change nothing: no hook, no guard, same state.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import attrs
import pytest

from modfsm.engine import LIFECYCLE, EventType, State
from modfsm.engine.model.lifecycle import LifecycleState
from modfsm.engine.runtime.modifier import Modifier
from specs.reference import Flags, ReferenceModifier, SpecModifier
from tests.doubles import RecordingModifier, apply, flags_of, put_in_state
from tests.exhaustive.sides import ABSTRACT, DriverSide, EngineSide, Letter, ModelSide

STATES = [s.name for s in LIFECYCLE.states]
FLAGS = {s.name: Flags(*(s.flags[f] for f in LIFECYCLE.flags)) for s in LIFECYCLE.states}
INPUTS: list[tuple[str, EventType | None]] = [
    ("initialize", None),
    ("finalize", None),
    *(("update", t) for t in EventType),
]
VALUATIONS = [
    {"should_start": a, "should_end": b} for a, b in itertools.product([True, False], repeat=2)
]
GATE_RESULTS: list[Any] = [True, False, None]
#: hooks modfsm adds that the reference has no counterpart for; the recording
#: double and the models do not log them (their effect is tested in test_hooks.py).
ENGINE_ONLY_HOOKS = {"release_hooks"}


class Expected(NamedTuple):
    error: str | None
    calls: tuple[str, ...]
    state: str


def _listed(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def expected_from_rows(state: str, trigger: str, guards: dict[str, bool], gate: Any) -> Expected:
    """Read the declaration literally: rejection, prelude, matching row, hooks, dest."""
    for rule in LIFECYCLE.rejections:
        if state in rule.states and trigger in rule.triggers:
            return Expected("illegal", (), state)
    spec = next(t for t in LIFECYCLE.triggers if t.name == trigger)
    calls: list[str] = []
    if spec.prelude is not None:
        calls.append(spec.prelude)
        if next(h for h in LIFECYCLE.hooks if h.name == spec.prelude).gate:
            if gate is False:
                return Expected(None, tuple(calls), state)
            if gate is not True:
                return Expected("bad-return", tuple(calls), state)
    matching = []
    for row in LIFECYCLE.transitions:
        if row["trigger"] != trigger or state not in _listed(row["source"]):
            continue
        conditions, unless = _listed(row.get("conditions")), _listed(row.get("unless"))
        consulted = [*conditions, *unless]
        if all(guards[g] for g in conditions) and not any(guards[g] for g in unless):
            matching.append((consulted, row))
    assert len(matching) == 1, f"declaration is not deterministic at ({state}, {trigger})"
    consulted, row = matching[0]
    calls.extend(consulted)
    calls.extend(h for h in _listed(row.get("before")) if h not in ENGINE_ONLY_HOOKS)
    return Expected(None, tuple(calls), row["dest"] or state)


def letter_for(kind: str, type_: EventType | None, guards: dict[str, bool], gate: Any) -> Letter:
    from modfsm.engine import Event

    returns = {"on_initialize": gate, "on_finalize": gate}
    call = (kind, None) if type_ is None else (kind, Event(type_, global_step=0))
    return Letter(call, guards, returns)


def trigger_of(kind: str, type_: EventType | None) -> str:
    return kind if type_ is None else LIFECYCLE.event_triggers[type_]


def place_model(model: ReferenceModifier, state: str) -> None:
    model.initialized_, model.started_, model.ended_, model.finalized_ = FLAGS[state]


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize(("kind", "type_"), INPUTS, ids=lambda v: getattr(v, "name", v))
def test_cell_agrees_across_declaration_engine_transitions_and_models(
    state: str, kind: str, type_: EventType | None
) -> None:
    compiled = Modifier.__compiled_lifecycle__
    trigger = trigger_of(kind, type_)
    for guards, gate in itertools.product(VALUATIONS, GATE_RESULTS):
        expected = expected_from_rows(state, trigger, guards, gate)
        letter = letter_for(kind, type_, guards, gate)

        engine = EngineSide()
        put_in_state(engine.modifier, compiled.states[state])
        got = engine.apply(letter)
        where = f"({state}, {letter}, gate={gate})"
        assert (got.error, tuple(e.name for e in got.log)) == expected[:2], where
        assert engine.modifier.lifecycle_state == expected.state, where
        assert got.flags == FLAGS[expected.state], where

        driver = DriverSide()
        driver.driver.machine.set_state(state, model=driver.driver)
        assert driver.apply(letter) == got, f"transitions dispatch differs at {where}"

        spec = ModelSide(SpecModifier())
        place_model(spec.model, state)
        assert spec.apply(letter) == got, f"spec model differs at {where}"

        if gate is True:
            reference = ModelSide(ReferenceModifier())
            place_model(reference.model, state)
            assert reference.apply(letter) == got, f"reference model differs at {where}"


def test_every_finalize_into_a_finalized_state_releases_hooks() -> None:
    finals = [row for row in LIFECYCLE.transitions if row["trigger"] == "finalize"]
    assert finals
    for row in finals:
        assert str(row["dest"]).startswith("finalized_")
        assert "release_hooks" in _listed(row.get("before")), row


def test_illegal_cells_are_exactly_the_declared_rejections() -> None:
    plans = Modifier.__compiled_lifecycle__.plans
    illegal = {key for key, plan in plans.items() if plan.rejection is not None}
    declared = {(s, t) for rule in LIFECYCLE.rejections for s in rule.states for t in rule.triggers}
    assert illegal == declared
    assert len(plans) == len(STATES) * len(LIFECYCLE.triggers)


def reference_reachable_flags() -> set[Flags]:
    """Every flag combination the reference model reaches with hooks that succeed.

    A breadth-first search over the abstract alphabet (each call with each outcome
    of the guard it may consult), from a new model. With the guards forced, the
    model's flags are its whole state, so each combination is expanded once.
    """
    frontier = [ReferenceModifier().flags()]
    reached = set(frontier)
    while frontier:
        flags = frontier.pop(0)
        for letter in ABSTRACT:
            model = ReferenceModifier()
            model.initialized_, model.started_, model.ended_, model.finalized_ = flags
            after = ModelSide(model).apply(letter).flags
            if after not in reached:
                reached.add(after)
                frontier.append(after)
    return reached


def test_states_and_their_flags_cover_every_combination_the_reference_reaches() -> None:
    reached = reference_reachable_flags()
    declared = [FLAGS[s] for s in STATES]
    assert set(declared) == reached
    assert len(set(declared)) == len(declared)  # one state per combination
    assert [s.value for s in LifecycleState] == STATES


def test_the_illegal_cell_leaves_the_modifier_untouched() -> None:
    compiled = Modifier.__compiled_lifecycle__
    for (state, trigger), plan in compiled.plans.items():
        if plan.rejection is None:
            continue
        engine = EngineSide()
        put_in_state(engine.modifier, compiled.states[state])
        kind = trigger if trigger in ("initialize", "finalize") else "update"
        type_ = {"batch_start": EventType.BATCH_START, "batch_end": EventType.BATCH_END,
                 "other_event": EventType.OPTIM_PRE_STEP}.get(trigger)  # fmt: skip
        outcome = engine.apply(letter_for(kind, type_, VALUATIONS[0], True))
        assert outcome.error == "illegal"
        assert outcome.log == ()
        assert engine.modifier.lifecycle_state == state


# --- what hooks read (specs/lifecycle.md, D5) ----------------------------------------------

SPEC_TEXT = (Path(__file__).resolve().parents[2] / "specs" / "lifecycle.md").read_text("utf-8")
PRELUDES_AND_GUARDS = {
    *(t.prelude for t in LIFECYCLE.triggers if t.prelude is not None),
    *LIFECYCLE.guards,
}


@attrs.define(eq=False)
class FlagReadingModifier(RecordingModifier):
    """Records, for each hook and guard call, the flags as the call reads them."""

    seen: list[tuple[str, Flags]] = attrs.field(factory=list)

    def _record(self, name: str, event: Any = None) -> None:
        self.seen.append((name, flags_of(self)))
        super()._record(name, event)

    def release_hooks(self, state: State, event: Any, **kwargs: Any) -> None:
        self.seen.append(("release_hooks", flags_of(self)))
        super().release_hooks(state, event, **kwargs)


class FlagReadingReference(ReferenceModifier):
    """The reference model, recording the flags each hook and guard call reads."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, Flags]] = []

    def _record(self, name: str, event: Any = None) -> None:
        self.seen.append((name, self.flags()))
        super()._record(name, event)


class FlagReadingSpec(FlagReadingReference, SpecModifier):
    """The specification model, recording the flags each hook and guard call reads."""


def _shown_flags(text: str) -> Flags | None:
    if text == "(no such hook)":
        return None
    true = set() if text == "none" else {name.strip() for name in text.split(",")}
    assert true <= set(LIFECYCLE.flags), text
    return Flags(*(name in true for name in LIFECYCLE.flags))


def hook_flags_table() -> dict[str, set[tuple[str, str, str, str, Flags]]]:
    """The D5 table: side ("modfsm" or "reference") -> {(state, trigger, guard, hook, flags)}."""
    lines = SPEC_TEXT[SPEC_TEXT.index("<!-- hook-flags-table") :].splitlines()[1:]
    rows = []
    for line in lines:
        if not line.strip().startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    shown: dict[str, set[tuple[str, str, str, str, Flags]]] = {"modfsm": set(), "reference": set()}
    for state, trigger, guard, hook, ours, theirs in rows[2:]:
        for side, text in (("modfsm", ours), ("reference", theirs)):
            flags = _shown_flags(text)
            if flags is not None:
                shown[side].add((state, trigger, guard, hook, flags))
    return shown


def read_in_every_cell(
    make: Callable[[], FlagReadingModifier | FlagReadingReference],
) -> set[tuple[str, str, str, str, Flags]]:
    """Run every legal cell with succeeding hooks; return what the row's hooks read.

    Checks on the way that every prelude and guard reads the flags of the state the
    call is made in (but for the reference's ``should_start`` during ``initialize``,
    which reads ``initialized`` as True).
    """
    compiled = Modifier.__compiled_lifecycle__
    read = set()
    for state, (kind, type_), guards in itertools.product(STATES, INPUTS, VALUATIONS):
        trigger = trigger_of(kind, type_)
        if compiled.plans[(state, trigger)].rejection is not None:
            continue
        side = make()
        if isinstance(side, FlagReadingModifier):
            put_in_state(side, compiled.states[state])
        else:
            place_model(side, state)
        letter = letter_for(kind, type_, guards, True)
        side.forced = dict(letter.forced)
        outcome = apply(side, letter.call)
        assert outcome.error is None, (state, letter)
        consulted = [name for name, _ in side.seen if name in LIFECYCLE.guards]
        guard = "—"
        if consulted:
            guard = consulted[0] if guards[consulted[0]] else f"not {consulted[0]}"
        for name, flags in side.seen:
            if name in PRELUDES_AND_GUARDS:
                expected = FLAGS[state]
                if type(side) is FlagReadingReference and name in LIFECYCLE.guards:
                    # already True in live states; initialize sets it before should_start
                    expected = expected._replace(initialized=True)
                assert flags == expected, (type(side).__name__, state, letter, name)
            else:
                read.add((state, trigger, guard, name, flags))
    return read


def test_every_hook_reads_the_flags_the_specification_table_gives() -> None:
    shown = hook_flags_table()
    assert len(shown["modfsm"]) == 16
    assert read_in_every_cell(FlagReadingModifier) == shown["modfsm"]
    spec_read = read_in_every_cell(FlagReadingSpec)
    assert spec_read == {row for row in shown["modfsm"] if row[3] != "release_hooks"}
    assert read_in_every_cell(FlagReadingReference) == shown["reference"]
