"""Model-based tests for stages: the engine's stage stepped with the stage models.

A stage of 1-3 modifiers with random windows receives random stage calls. After
every call, each modifier's hook and guard log and flags, whether the call
raised (and how) and whether the stage is applied must equal the models':
:class:`specs.reference.ReferenceStage` when hooks succeed (the reference rules
applied to each modifier) and :class:`specs.reference.SpecStage` with scripted
declines and failures.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from modfsm.engine import Event, EventType, State
from modfsm.engine.runtime.stage import StageModifiers
from modfsm.engine.tools.testing import strategies as ms
from specs.reference import ReferenceModifier, ReferenceStage, SpecModifier, SpecStage
from tests.doubles import RecordingModifier, error_kind, flags_of
from tests.property import strategies as s

STATE = State()


class Barrier:
    """An accelerator double that counts barrier calls."""

    def __init__(self) -> None:
        self.waits = 0

    def wait_for_everyone(self) -> None:
        self.waits += 1


def outcome(call: Any) -> str | None:
    try:
        call()
    except Exception as exc:
        return error_kind(exc)
    return None


windows = st.lists(st.tuples(ms.schedule_values, ms.schedule_values), min_size=1, max_size=3)


ModelPair = tuple[type[ReferenceStage], type[ReferenceModifier]]


class _StageLockstep(RuleBasedStateMachine):
    engine: StageModifiers
    recorders: list[RecordingModifier]
    models: list[ReferenceStage]

    def build(self, schedule: list[tuple[Any, Any]], model_classes: list[ModelPair]) -> None:
        self.recorders = [RecordingModifier(start=a, end=b) for a, b in schedule]
        self.engine = StageModifiers(list(self.recorders), group="stage", index=0)
        self.models = []
        for stage_cls, modifier_cls in model_classes:
            self.models.append(stage_cls([modifier_cls(a, b) for a, b in schedule]))
        self.barriers = {id(side): Barrier() for side in (self.engine, *self.models)}

    def everyone(self, action: str, *args: Any) -> None:
        def run(side: Any) -> str | None:
            method = getattr(side, action)
            if action in ("initialize", "finalize"):
                return outcome(lambda: method(STATE, accelerator=self.barriers[id(side)]))
            return outcome(lambda: method(STATE, *args))

        expected = run(self.engine)
        for model in self.models:
            assert run(model) == expected, f"{type(model).__name__} disagrees on {action}"

    @rule()
    def initialize_(self) -> None:
        self.everyone("initialize")

    @rule()
    def finalize_(self) -> None:
        self.everyone("finalize")

    @rule(type_=ms.event_types, step=ms.steps)
    def update(self, type_: EventType, step: int) -> None:
        self.everyone("update_event", Event(type_, global_step=step))

    @invariant()
    def same_modifiers_and_stage(self) -> None:
        engine_waits = self.barriers[id(self.engine)].waits
        for model in self.models:
            assert model.applied == self.engine.applied
            assert self.barriers[id(model)].waits == engine_waits
            for ours, theirs in zip(self.recorders, model.modifiers, strict=True):
                assert flags_of(theirs) == flags_of(ours)
                assert theirs.log == ours.log
            if isinstance(model, SpecStage):
                assert model.state == self.engine.stage_state


class StageAgainstReference(_StageLockstep):
    """Hooks succeed: the stage equals the reference rules applied to each modifier."""

    @initialize(schedule=windows)
    def setup(self, schedule: list[tuple[Any, Any]]) -> None:
        self.build(schedule, [(ReferenceStage, ReferenceModifier), (SpecStage, SpecModifier)])


class StageAgainstSpecification(_StageLockstep):
    """Modifiers decline and raise: the stage equals the specification's stage."""

    @initialize(schedule=windows)
    def setup(self, schedule: list[tuple[Any, Any]]) -> None:
        self.build(schedule, [(SpecStage, SpecModifier)])

    @rule(
        data=st.data(),
        hook=st.sampled_from(["on_initialize", "on_finalize"]),
        value=st.booleans(),
    )
    def script_gate(self, data: st.DataObject, hook: str, value: bool) -> None:
        position = data.draw(st.integers(0, len(self.recorders) - 1))
        self.recorders[position].returns[hook] = value
        for model in self.models:
            model.modifiers[position].returns[hook] = value

    @rule(data=st.data(), name=s.failing_names, after=st.integers(0, 2))
    def arm_failure(self, data: st.DataObject, name: str, after: int) -> None:
        position = data.draw(st.integers(0, len(self.recorders) - 1))
        self.recorders[position].fail[name] = after
        for model in self.models:
            model.modifiers[position].fail[name] = after


TestStageAgainstReference = StageAgainstReference.TestCase
TestStageAgainstSpecification = StageAgainstSpecification.TestCase
