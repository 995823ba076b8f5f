"""Model-based tests: the engine stepped together with the independent models.

``specs/reference.py`` holds a flag-based model of the reference and a model of
modfsm's specification (the reference plus deviations D1-D5). Hypothesis drives
random call sequences into the engine and the models side by side and compares,
after every call, whether it raised (and how), the hook and guard calls it made
(name, event type, current_index, in order) and the four flags.
"""

from __future__ import annotations

from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from modfsm.engine import Event, EventType
from modfsm.engine.tools.testing import strategies as ms
from specs.reference import ReferenceModifier, SpecModifier
from tests.doubles import FINALIZE, INITIALIZE, Call, RecordingModifier, apply, flags_of
from tests.property import strategies as s


class _Lockstep(RuleBasedStateMachine):
    """Applies each call to the engine and to every model; subclasses pick the models."""

    engine: RecordingModifier
    models: list[ReferenceModifier]
    steps_per_epoch: int | None

    def build(self, start: float | None, end: float | None, steps_per_epoch: int | None) -> None:
        self.engine = RecordingModifier(start=start, end=end)
        self.models = self.make_models(start, end)
        self.steps_per_epoch = steps_per_epoch

    def make_models(self, start: float | None, end: float | None) -> list[ReferenceModifier]:
        raise NotImplementedError

    def everyone(self, call: Call) -> None:
        expected = apply(self.engine, call)
        for model in self.models:
            outcome = apply(model, call)
            assert outcome == expected, (
                f"{type(model).__name__} disagrees on {call}: {outcome} != engine {expected}"
            )

    @rule()
    def initialize_(self) -> None:
        self.everyone(INITIALIZE)

    @rule()
    def finalize_(self) -> None:
        self.everyone(FINALIZE)

    @rule(type_=ms.event_types, step=ms.steps)
    def update(self, type_: EventType, step: int) -> None:
        event = Event(type_, global_step=step, steps_per_epoch=self.steps_per_epoch)
        self.everyone(("update", event))

    @invariant()
    def same_flags_and_history(self) -> None:
        for model in self.models:
            assert flags_of(model) == flags_of(self.engine)
            assert model.log == self.engine.log


class AgainstReference(_Lockstep):
    """Hooks all succeed: the engine must equal the reference, quirks included."""

    @initialize(start=ms.schedule_values, end=ms.schedule_values, spe=ms.steps_per_epoch)
    def setup(self, start: float | None, end: float | None, spe: int | None) -> None:
        self.build(start, end, spe)

    def make_models(self, start: float | None, end: float | None) -> list[ReferenceModifier]:
        return [ReferenceModifier(start, end), SpecModifier(start, end)]


class AgainstSpecification(_Lockstep):
    """Gates return scripted values, hooks and guards raise: the engine must equal the spec."""

    @initialize(start=ms.schedule_values, end=ms.schedule_values, spe=ms.steps_per_epoch)
    def setup(self, start: float | None, end: float | None, spe: int | None) -> None:
        self.build(start, end, spe)

    def make_models(self, start: float | None, end: float | None) -> list[ReferenceModifier]:
        return [SpecModifier(start, end)]

    @rule(hook=st.sampled_from(["on_initialize", "on_finalize"]), value=s.gate_results)
    def script_gate(self, hook: str, value: object) -> None:
        for side in (self.engine, *self.models):
            side.returns[hook] = value

    @rule(name=s.failing_names, after=st.integers(min_value=0, max_value=2))
    def arm_failure(self, name: str, after: int) -> None:
        for side in (self.engine, *self.models):
            side.fail[name] = after


TestAgainstReference = AgainstReference.TestCase
TestAgainstSpecification = AgainstSpecification.TestCase
