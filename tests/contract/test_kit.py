"""The test kit itself: its expectations, streams, spy and plugin are right.

The kit derives what a call must do from the declared lifecycle (the compiled
plans); here that reading is checked against the independent specification
model ``specs.reference.SpecModifier``, and its generated loops against the
procedural ``specs.reference.StepGrammarModel``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

import attrs
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from modfsm.engine import LIFECYCLE, Event, HookReturnError, IllegalTransitionError, Modifier, State
from modfsm.engine.tools.testing import LifecycleSpy, Stream, expect
from modfsm.engine.tools.testing import strategies as ms
from modfsm.engine.tools.testing.expected import trigger_of
from specs.reference import HookFailure, SpecModifier, StepGrammarModel
from tests.contract.shrink import Shrink
from tests.doubles import RecordingModifier
from tests.property import strategies as s

MACHINE = Modifier.__compiled_lifecycle__
STATE_OF_FLAGS = {
    tuple(spec.flags[flag] for flag in LIFECYCLE.flags): spec.name for spec in LIFECYCLE.states
}
# modfsm's own hook, which the reference and its specification model do not have.
ENGINE_ONLY = {"release_hooks"}

calls = st.one_of(
    st.just(("initialize", None)),
    st.just(("finalize", None)),
    st.tuples(st.just("update_event"), ms.events()),
)


def answers(model: SpecModifier, event: Event | None) -> Callable[[str], Any]:
    """What the model's gates and guards answer for a call with ``event``."""
    probe = event if event is not None else Event("batch_start")  # initialize asks about step 0

    def answer(name: str) -> Any:
        if name in model.returns:
            return model.returns[name]
        return model._start_rule(probe) if name == "should_start" else model._end_rule(probe)

    return answer


@settings(max_examples=300)
@given(
    schedule=ms.schedules(),
    script=st.lists(st.tuples(calls, s.gate_results, s.gate_results), max_size=12),
)
def test_the_kit_expects_what_the_specification_model_does(
    schedule: Any, script: list[tuple[tuple[str, Event | None], object, object]]
) -> None:
    model = SpecModifier(schedule.start, schedule.end)
    for (call, event), on_initialize, on_finalize in script:
        model.returns.update(on_initialize=on_initialize, on_finalize=on_finalize)
        state = STATE_OF_FLAGS[tuple(model.flags())]
        answer = answers(model, event)
        expected = expect(MACHINE, state, trigger_of(MACHINE, call, event), answer)
        logged = len(model.log)
        raised: type[BaseException] | None = None
        try:
            if call == "update_event":
                model.update_event(None, event)
            else:
                getattr(model, call)(None)
        except TypeError:
            raised = HookReturnError
        except RuntimeError:
            raised = IllegalTransitionError
        ran = tuple(entry.name for entry in model.log[logged:])
        assert ran == tuple(h for h in expected.hooks if h not in ENGINE_ONLY), (state, call, event)
        assert raised is expected.raises
        assert STATE_OF_FLAGS[tuple(model.flags())] == expected.after


@given(stream=ms.event_streams(max_batches=10))
def test_generated_streams_follow_the_step_grammar_and_its_counters(stream: Stream) -> None:
    model = StepGrammarModel(stream.batches_per_step)
    for call, event, position in zip(stream.calls, stream.events, stream.positions, strict=True):
        assert model.position == position
        partial = call == "partial_step"
        name = "optim_pre_step" if partial else call
        assert model.apply(name, partial) == (event.global_step, event.global_batch)
        assert event.type_.value == name
        assert (event.batches_per_step, event.steps_per_epoch) == (
            stream.batches_per_step, stream.steps_per_epoch,
        )  # fmt: skip
    assert model.position == "idle"  # the stream ends where finalize is allowed


def test_streams_shrink_to_the_usual_loop() -> None:
    from hypothesis import find

    stream = find(ms.event_streams(), lambda found: found.calls.count("optim_post_step") >= 2)
    assert stream.batches_per_step == 1
    assert stream.calls == ("batch_start", "loss_calculated", "optim_pre_step",
                            "optim_post_step", "batch_end") * 2  # fmt: skip


@given(schedule=ms.schedules(), events=st.lists(ms.events(), max_size=10))
def test_a_spied_modifier_behaves_exactly_as_an_unspied_one(
    schedule: Any, events: list[Event]
) -> None:
    plain, spied = (RecordingModifier(start=schedule.start, end=schedule.end) for _ in "ab")
    spy = LifecycleSpy(spied)
    state = State()
    for modifier in (plain, spied):
        modifier.initialize(state)
        for event in events:
            modifier.update_event(state, event)
        modifier.finalize(state)
    spy.detach()
    assert type(spied) is RecordingModifier
    assert spied.log == plain.log
    assert spied.lifecycle_state == plain.lifecycle_state
    recorded = [hook.name for hook in spy.hooks_seen() if hook.name not in ENGINE_ONLY]
    assert recorded == [entry.name for entry in plain.log]


def test_the_spy_records_each_call_with_its_states_hooks_events_and_answers() -> None:
    modifier = RecordingModifier(start=0, end=1)
    state = State()
    with LifecycleSpy(modifier) as spy:
        modifier.initialize(state)
        modifier.update_event(state, Event("batch_end", global_step=1))
        with pytest.raises(IllegalTransitionError):
            modifier.initialize(state)
    first, second, third = spy.calls
    assert (first.call, first.before, first.after) == ("initialize", "created", "started")
    assert [(h.name, h.result) for h in first.hooks] == [
        ("on_initialize", True), ("should_start", True), ("on_start", None),
    ]  # fmt: skip
    assert first.hooks[1].event == Event("batch_start")  # initialize asks about step 0
    assert (second.before, second.after) == ("started", "ended")
    assert [h.name for h in second.hooks] == ["on_event", "should_end", "on_end", "on_update"]
    assert all(h.event == Event("batch_end", global_step=1) for h in second.hooks)
    assert isinstance(third.raised, IllegalTransitionError)
    assert third.hooks == ()


def test_hooks_a_hook_calls_itself_are_not_recorded_and_a_raising_hook_is() -> None:
    @attrs.define(eq=False)
    class Nested(RecordingModifier):
        def on_start(self, state: Any, event: Any, **kwargs: Any) -> None:
            super().on_start(state, event)
            self.on_update(state, event)  # the modifier's own business

    modifier = Nested(start=0)
    modifier.fail["on_event"] = 0
    with LifecycleSpy(modifier) as spy:
        modifier.initialize(State())
        with pytest.raises(HookFailure):
            modifier.update_event(State(), Event("batch_start"))
    assert [h.name for h in spy.calls[0].hooks] == ["on_initialize", "should_start", "on_start"]
    assert spy.calls[1].hooks[0].raised == "HookFailure"
    assert isinstance(spy.calls[1].raised, HookFailure)


def test_a_modifier_takes_one_spy_at_a_time() -> None:
    modifier = RecordingModifier()
    with LifecycleSpy(modifier), pytest.raises(ValueError, match="already has a spy"):
        LifecycleSpy(modifier)
    assert type(modifier) is RecordingModifier


def test_the_plugin_is_registered_for_pytest() -> None:
    (plugin,) = [e for e in entry_points(group="pytest11") if e.name == "modfsm"]
    assert plugin.value == "modfsm.engine.tools.testing.plugin"


def test_the_plugin_fixtures_give_the_contract_the_spy_and_the_hook_count(
    modfsm_contract: Callable[..., Any],
    modfsm_spy: Callable[[Modifier], LifecycleSpy],
    modfsm_torch_hooks: Callable[..., Any],
) -> None:
    contract = modfsm_contract(lambda start, end: Shrink(start=start, end=end), max_examples=5)
    contract.check_lifecycle()
    modifier = Shrink(start=0)
    spy = modfsm_spy(modifier)
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    modifier.initialize(State(model=model))
    assert [h.name for h in spy.calls[0].hooks] == ["on_initialize", "should_start", "on_start"]
    assert modfsm_torch_hooks(model) == {"forward_pre hook on module '0'": 1}
    modifier.finalize(State(model=model))
    assert not modfsm_torch_hooks(model)


def test_the_kit_without_hypothesis_names_the_extra_to_install() -> None:
    code = (
        "import sys; sys.modules['hypothesis'] = None\n"
        "import modfsm.engine, modfsm.engine.tools.testing, modfsm.engine.tools.testing.plugin\n"
        "try:\n"
        "    from modfsm.engine.tools.testing import strategies\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "pip install 'modfsm[test]'" in done.stdout, done.stdout + done.stderr


@given(stream=ms.calibration_streams())
def test_one_shot_streams_follow_the_step_grammar_with_both_pipelines(stream: Stream) -> None:
    model = StepGrammarModel(stream.batches_per_step)
    for call, position in zip(stream.calls, stream.positions, strict=True):
        assert model.position == position
        model.apply(call, False)
    assert model.position == "idle"
    assert stream.calls.count("calibration_epoch_start") >= 1
    assert stream.calls.count("calibration_epoch_start") == stream.calls.count(
        "calibration_epoch_end"
    )


def test_one_shot_streams_draw_the_pipeline_asked_for() -> None:
    from hypothesis import find

    one = {"max_epochs": 1, "max_batches": 0}  # one calibration epoch, no training steps
    basic = find(ms.calibration_streams(pipeline="basic", **one), lambda found: True)
    assert basic.calls == ("calibration_epoch_start", "calibration_epoch_end")
    layered = find(ms.calibration_streams(pipeline="sequential", max_layers=3, **one),
                   lambda found: found.calls.count("sequential_epoch_end") == 3)  # fmt: skip
    assert layered.calls == ("calibration_epoch_start", *["sequential_epoch_end"] * 3,
                             "calibration_epoch_end")  # fmt: skip
    mixed = find(ms.calibration_streams(pipeline="basic", max_epochs=2),
                 lambda found: found.calls.count("calibration_epoch_start") == 2)  # fmt: skip
    assert "sequential_epoch_end" not in mixed.calls
    with pytest.raises(ValueError, match="pipeline must be one of"):
        find(ms.calibration_streams(pipeline="fast"), lambda found: True)


def test_the_loop_runs_calibration_data_and_passes_the_block_that_ended() -> None:
    from modfsm.engine import CALIBRATION_LIFECYCLE
    from modfsm.engine.tools.testing.loop import LoopParts, Run

    @attrs.define(eq=False)
    class Seen(Modifier):
        __lifecycle__ = CALIBRATION_LIFECYCLE
        log: list[Any] = attrs.field(factory=list)

        def on_initialize(self, state: State, **kwargs: Any) -> bool:
            return True

        def on_sequential_epoch_end(self, state: State, event: Event, **kwargs: Any) -> None:
            self.log.append(("layer", kwargs.get("modules")))

        def on_calibration_end(self, state: State, event: Event, **kwargs: Any) -> None:
            self.log.append(("end", None))

    forwards: list[bool] = []

    def make_model() -> torch.nn.Module:
        model = torch.nn.Linear(3, 2)
        model.register_forward_pre_hook(lambda m, args: forwards.append(m.training))
        return model

    parts = LoopParts(
        make_model=make_model,
        make_optimizer=lambda m: torch.optim.SGD(m.parameters(), lr=0.1),
        make_batch=lambda index: torch.ones(2, 3),
        loss=lambda output: output.sum(),
        make_calib_data=lambda: None,
        make_teacher_model=lambda: None,
    )
    modifier = Seen()
    stream = Stream.from_calls(["calibration_epoch_start", "sequential_epoch_end",
                                "calibration_epoch_end"])  # fmt: skip
    run = Run(parts, stream, modifier)
    run.initialize()
    for index in range(len(stream)):
        run.call(index)
    assert modifier.log == [("layer", [run.model]), ("end", None)]
    assert forwards == [False, False]  # a forward in eval mode before each of the two
    run.finalize()
    run.close()
