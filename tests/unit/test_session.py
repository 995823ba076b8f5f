"""Session: real step numbers, the step grammar's errors, optimizer wrapping, checkpoints."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import attrs
import pytest
import torch

from modfsm.engine import (
    ConfigError,
    ConfigTypeError,
    Event,
    EventType,
    IllegalTransitionError,
    LifecycleError,
    LifecycleState,
    Modifier,
    State,
)
from modfsm.engine.config.factory import ModifierFactory
from modfsm.engine.config.recipe import Recipe
from modfsm.engine.loop.session import Session, SessionMismatchError, active_session
from modfsm.engine.runtime.stage import StageError, StageModifiers
from modfsm.engine.tools.replay import verify
from tests.doubles import EventLog, RecordingModifier
from tests.recipes.doubles import DOUBLES

L = LifecycleState


def started(*modifiers: Any, **config: Any) -> Session:
    session = Session()
    session.initialize(recipe=list(modifiers), **config)
    return session


def full_batch(session: Session, *, step: bool = True) -> None:
    session.batch_start()
    session.loss_calculated(1.0)
    if step:
        session.optim_pre_step()
        session.optim_post_step()
    session.batch_end()


def test_modifiers_see_the_real_step_and_start_when_the_recipe_says() -> None:
    log = EventLog(start=3, end=5)
    session = started(log)
    for _ in range(6):
        full_batch(session)
    starts = [index for name, _, index in log.hooks if name == "on_start"]
    ends = [index for name, _, index in log.hooks if name == "on_end"]
    assert (starts, ends) == ([3], [5])
    assert log.seen[:5] == [
        ("batch_start", 0, 0, 0), ("loss_calculated", 0, 0, 0), ("optim_pre_step", 0, 0, 0),
        ("optim_post_step", 1, 0, 1), ("batch_end", 1, 1, 1),
    ]  # fmt: skip


def test_gradient_accumulation_counts_batches_and_steps() -> None:
    log = EventLog()
    session = started(log, batches_per_step=3)
    for batch in range(7):
        session.batch_start()
        if session.position == "step_due":
            session.optim_pre_step()
            session.optim_post_step()
        session.batch_end()
        assert session.global_batch == batch + 1
    assert (session.global_step, session.batches_since_step) == (2, 1)
    steps_seen = [step for name, step, _, _ in log.seen if name == "optim_post_step"]
    assert steps_seen == [1, 2]


def test_epoch_schedules_read_fractional_epochs() -> None:
    log = EventLog(start=0.5, end=1.5)
    session = started(log, steps_per_epoch=4)
    for _ in range(8):
        full_batch(session)
    assert [(n, i) for n, _, i in log.hooks if n in ("on_start", "on_end")] == [
        ("on_start", 0.5), ("on_end", 1.5),
    ]  # fmt: skip


def test_batch_and_loss_are_stored_on_the_state() -> None:
    session = started()
    session.batch_start({"x": 1})
    session.loss_calculated(0.25)
    assert (session.state.batch_data, session.state.loss) == ({"x": 1}, 0.25)
    assert session.state.last_event is not None
    assert session.state.last_event.type_ is EventType.LOSS_CALCULATED


def test_a_partial_step_is_allowed_on_purpose_only() -> None:
    session = started(batches_per_step=4)
    session.batch_start()
    with pytest.raises(IllegalTransitionError, match=r"rule G8"):
        session.optim_pre_step()
    session.optim_pre_step(partial=True)
    session.optim_post_step()
    session.batch_end()
    assert (session.global_step, session.global_batch, session.batches_since_step) == (1, 1, 0)


def test_calibration_events_reach_the_modifiers_without_counting() -> None:
    log = EventLog()
    session = started(log)
    session.event(EventType.CALIBRATION_EPOCH_START)
    session.event("sequential_epoch_end")
    session.event(EventType.CALIBRATION_EPOCH_END)
    assert [name for name, *_ in log.seen] == [
        "calibration_epoch_start", "sequential_epoch_end", "calibration_epoch_end",
    ]  # fmt: skip
    assert (session.global_step, session.global_batch) == (0, 0)


def _at(position: str) -> Callable[[Session], None]:
    """Drive a fresh session (batches_per_step=2, a step due on odd batches) to ``position``."""

    def drive(session: Session) -> None:
        moves = {
            "idle": [],
            "accumulating": ["batch_start"],
            "accumulating_loss": ["batch_start", "loss_calculated"],
            "step_due": ["batch_start", "batch_end", "batch_start"],
            "step_due_loss": ["batch_start", "batch_end", "batch_start", "loss_calculated"],
            "stepping": ["batch_start", "batch_end", "batch_start", "optim_pre_step"],
            "stepped": ["batch_start", "batch_end", "batch_start", "optim_pre_step",
                        "optim_post_step"],
            "calibrating": ["calibration_epoch_start"],
        }[position]  # fmt: skip
        for name in moves:
            session.event(EventType(name))
        assert session.position == position

    return drive


GRAMMAR_ERRORS = [
    ("idle", "batch_end", "G5", "no batch is open"),
    ("idle", "loss_calculated", "G5", "no batch is open"),
    ("accumulating", "batch_start", "G6", "has not ended"),
    ("accumulating_loss", "loss_calculated", "G7", "already reported"),
    ("accumulating", "optim_post_step", "G8", "no optimizer step is due"),
    ("step_due", "optim_post_step", "G10", "optim_pre_step was not reported"),
    ("stepping", "batch_end", "G11", "optim_post_step was not"),
    ("stepped", "optim_pre_step", "G12", "already stepped"),
    ("idle", "calibration_epoch_end", "G13", "no calibration epoch is open"),
    ("stepped", "calibration_epoch_start", "G14", "a batch is open"),
    ("calibrating", "calibration_epoch_start", "G15", "already open"),
    ("calibrating", "batch_start", "G6", "calibration epoch has not ended"),
    ("idle", "initialize", "G2", "not loop events"),
]


@pytest.mark.parametrize(("position", "event", "rule", "reason"), GRAMMAR_ERRORS)
def test_an_out_of_order_event_names_itself_the_position_and_what_is_expected(
    position: str, event: str, rule: str, reason: str
) -> None:
    log = EventLog(start=0)
    session = started(log, batches_per_step=2)
    _at(position)(session)
    counters = (session.global_step, session.global_batch, session.batches_since_step)
    seen = len(log.seen)
    with pytest.raises(IllegalTransitionError) as caught:
        session.event(EventType(event))
    error = caught.value
    assert isinstance(error, LifecycleError)
    assert (error.state, error.rule) == (position, rule)
    message = str(error)
    assert message.split(" is not allowed")[0].count(f"({EventType(event).name})") == 1
    assert f"it is {position!r} ({reason}" in message or reason in message
    assert f"Allowed from {position!r}:" in message
    assert (session.global_step, session.global_batch, session.batches_since_step) == counters
    assert session.position == position
    assert len(log.seen) == seen


def test_partial_step_on_a_step_batch_is_refused() -> None:
    session = started(batches_per_step=2)
    _at("step_due")(session)
    with pytest.raises(IllegalTransitionError, match=r"rule G9"):
        session.optim_pre_step(partial=True)


def test_calls_before_initialize_and_after_finalize_are_refused() -> None:
    session = Session()
    with pytest.raises(IllegalTransitionError, match=r"it is 'created' \(not initialized\)"):
        session.batch_start()
    session.initialize()
    with pytest.raises(IllegalTransitionError, match=r"rule G4"):
        session.initialize()
    session.finalize()
    with pytest.raises(IllegalTransitionError, match=r"already finalized.*rule G3"):
        session.batch_start()
    with pytest.raises(IllegalTransitionError, match=r"rule G3"):
        session.finalize()


def test_finalize_in_the_middle_of_a_batch_is_refused() -> None:
    log = EventLog(start=0)
    session = started(log)
    session.batch_start()
    with pytest.raises(IllegalTransitionError, match=r"rule G16"):
        session.finalize()
    assert log.lifecycle_state is L.STARTED


def test_bad_partial_and_event_arguments_are_clear_errors() -> None:
    session = started()
    with pytest.raises(ConfigError, match=r"partial=True applies to OPTIM_PRE_STEP"):
        session.event(EventType.BATCH_START, partial=True)
    with pytest.raises(ConfigError, match=r"'batch_begin' is not an event type"):
        session.event("batch_begin")


def test_a_wrapped_optimizer_reports_its_own_steps_and_is_unwrapped_at_finalize() -> None:
    log = EventLog(start=0)
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    session = Session()
    session.initialize(model=model, optimizer=optimizer, recipe=[log], wrap_optimizer=True,
                       batches_per_step=2)  # fmt: skip
    assert session.state.optim_wrapped
    with pytest.raises(IllegalTransitionError, match=r"rule G5"):
        optimizer.step()  # outside a batch: the grammar refuses from inside step()
    session.batch_start()
    session.batch_end()
    session.batch_start()
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    with pytest.raises(IllegalTransitionError, match=r"rule G12"):
        optimizer.step()  # twice in one batch
    session.batch_end()
    assert session.global_step == 1
    assert [n for n, *_ in log.seen].count("optim_post_step") == 1
    session.finalize()
    assert not optimizer._optimizer_step_pre_hooks
    assert not optimizer._optimizer_step_post_hooks


def test_a_wrapped_optimizer_stepping_a_last_incomplete_accumulation_is_a_partial_step() -> None:
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    session = Session()
    session.initialize(model=model, optimizer=optimizer, recipe=[EventLog(start=0)],
                       wrap_optimizer=True, batches_per_step=4, trace=True)  # fmt: skip
    for _ in range(2):  # two batches of an accumulation of four, then the data runs out
        session.batch_start()
        session.loss_calculated()
        model(torch.ones(1, 2)).sum().backward()
        if session.global_batch == 1:
            optimizer.step()  # not a step batch: reported as optim_pre_step(partial=True)
        session.batch_end()
    assert (session.global_step, session.global_batch, session.batches_since_step) == (1, 2, 0)
    session.finalize()
    assert session.trace is not None
    assert [r["trigger"] for r in session.trace.records if r["kind"] == "call"] == [
        "initialize", "batch_start", "loss_calculated", "batch_end", "batch_start",
        "loss_calculated", "partial_step", "optim_post_step", "batch_end", "finalize",
    ]  # fmt: skip
    assert verify(session.trace.records).ok


def test_a_step_batch_may_end_without_a_step_when_the_step_was_skipped() -> None:
    log = EventLog(start=0)
    session = started(log, batches_per_step=2)
    positions = []
    for _ in range(3):  # the second batch completes the accumulation; its step is skipped
        session.batch_start()
        session.loss_calculated()
        positions.append(session.position)
        session.batch_end()
    # after the skip the accumulation starts over: the third batch accumulates again
    assert positions == ["accumulating_loss", "step_due_loss", "accumulating_loss"]
    assert (session.global_step, session.global_batch, session.batches_since_step) == (0, 3, 1)
    assert [(n, step, batch) for n, step, batch, _ in log.seen if n == "batch_end"] == [
        ("batch_end", 0, 1), ("batch_end", 0, 2), ("batch_end", 0, 3),
    ]  # fmt: skip


def test_a_scaler_skipping_the_step_under_wrap_optimizer_ends_the_batch() -> None:
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    session = Session()
    session.initialize(model=model, optimizer=optimizer, recipe=[EventLog(start=0)],
                       wrap_optimizer=True)  # fmt: skip
    session.batch_start()
    loss = model(torch.full((1, 2), float("inf"))).sum()
    session.loss_calculated(loss)
    scaler.scale(loss).backward()
    scaler.step(optimizer)  # inf gradients: the scaler skips optimizer.step()
    scaler.update()
    optimizer.zero_grad()
    session.batch_end()
    assert (session.global_step, session.global_batch) == (0, 1)
    session.finalize()


def test_wrap_optimizer_needs_an_optimizer() -> None:
    with pytest.raises(ConfigError, match=r"wrap_optimizer=True needs an optimizer"):
        Session().initialize(wrap_optimizer=True)


class Wrapper:
    """An optimizer wrapper modfsm does not know (it only forwards step())."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    def step(self) -> None:
        self.optimizer.step()


def test_wrap_optimizer_refuses_a_wrapper_it_does_not_know_before_building_anything() -> None:
    model = torch.nn.Linear(2, 1)
    wrapper = Wrapper(torch.optim.SGD(model.parameters(), lr=0.1))
    session = Session()
    with pytest.raises(ConfigError) as caught:
        session.initialize(model=model, optimizer=wrapper, recipe=[EventLog(start=0)],
                           wrap_optimizer=True)  # fmt: skip
    assert str(caught.value) == (
        "Session.initialize: wrap_optimizer=True cannot hook Wrapper: it is not a "
        "torch.optim.Optimizer with step hooks, nor a wrapper modfsm knows (accelerate's "
        "AcceleratedOptimizer, Lightning's LightningOptimizer). To fix, pass the torch "
        "optimizer it wraps, or drop wrap_optimizer and call optim_pre_step() and "
        "optim_post_step() around each step."
    )
    assert (caught.value.field, caught.value.value) == ("optimizer", "Wrapper")
    assert session.position == "created"


def test_wrap_optimizer_hooks_the_optimizer_inside_lightnings_wrapper() -> None:
    lightning_optimizer = pytest.importorskip("lightning.pytorch.core.optimizer")
    model = torch.nn.Linear(2, 1)
    inner = torch.optim.SGD(model.parameters(), lr=0.1)
    wrapped = lightning_optimizer.LightningOptimizer(inner)
    session = Session()
    session.initialize(model=model, optimizer=wrapped, recipe=[EventLog(start=0)],
                       wrap_optimizer=True)  # fmt: skip
    session.batch_start()
    inner.step()  # what LightningOptimizer.step ends up calling
    session.batch_end()
    assert (session.global_step, session.global_batch) == (1, 1)
    assert session.state.optimizer is wrapped  # the state keeps what the loop gave


def test_the_context_manager_finalizes_and_publishes_the_active_session() -> None:
    log = EventLog(start=0)
    with pytest.raises(LifecycleError, match=r"no session is active"):
        active_session()
    with Session() as outer:
        outer.initialize(recipe=[log])
        assert active_session() is outer
        with Session() as inner:
            assert active_session() is inner
        assert active_session() is outer
    assert log.lifecycle_state is L.FINALIZED_STARTED
    with pytest.raises(LifecycleError):
        active_session()


def test_a_failing_run_releases_hooks_without_finalizing() -> None:
    model = torch.nn.Linear(2, 1)
    log = EventLog(start=0)

    def run() -> None:
        with Session() as session:
            session.initialize(model=model, recipe=[log])
            log.register_hook(model, lambda *a: None, "forward")
            raise KeyError("boom")

    with pytest.raises(KeyError):
        run()
    assert not model._forward_hooks
    assert log.lifecycle_state is L.STARTED


def test_a_modifier_failing_on_an_event_leaves_the_counters_and_position() -> None:
    bad = RecordingModifier(start=0, fail={"on_update": 3})
    session = started(bad)
    session.batch_start()
    session.loss_calculated()
    session.optim_pre_step()
    with pytest.raises(Exception, match="on_update"):
        session.optim_post_step()
    assert (session.position, session.global_step) == ("stepping", 0)
    session.optim_post_step()  # the retry goes through
    assert session.global_step == 1


def test_a_retry_after_a_failing_modifier_resends_the_event_to_those_that_received_it() -> None:
    first = EventLog(start=0)
    bad = RecordingModifier(start=0, fail={"on_update": 1})  # its 2nd on_update raises
    session = started(first, bad)
    session.batch_start()
    with pytest.raises(Exception, match="on_update"):
        session.loss_calculated()
    session.loss_calculated()  # the retry: every modifier gets LOSS_CALCULATED again
    updates = [(name, kind) for name, kind, _ in first.hooks if kind == "loss_calculated"]
    assert updates == [("on_update", "loss_calculated")] * 2
    assert [name for name, *_ in first.seen].count("loss_calculated") == 2


def test_a_declining_modifier_fails_initialize_cleanly_and_a_retry_starts_afresh() -> None:
    model = torch.nn.Linear(2, 1)

    class Hooked(RecordingModifier):
        def on_initialize(self, state: Any, **kwargs: Any) -> Any:
            self.register_hook(state.model, lambda *a: None, "forward")
            return super().on_initialize(state, **kwargs)

    first, second = Hooked(), RecordingModifier(returns={"on_initialize": False})
    session = Session()
    with pytest.raises(StageError):
        session.initialize(model=model, recipe=[first, second])
    assert session.position == "created"
    assert not model._forward_hooks
    session.initialize(model=model, recipe=[Hooked(), RecordingModifier()])
    assert session.position == "idle"


def test_recipes_of_every_kind_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ModifierFactory, "_registered_registry", {})
    for cls in DOUBLES:
        ModifierFactory.register(cls.__name__, cls)
    text = "q_stage:\n  modifiers:\n    QuantizationModifier: {scheme: W8A8}\n"
    for recipe in (text, Recipe.load(text), Recipe.load(text).to_dict()):
        session = Session()
        session.initialize(recipe=recipe)
        assert [i for i, _ in session.modifiers] == ["q_stage.0"]
    stage = StageModifiers([EventLog()], group="mine", index=0)
    session = Session()
    session.initialize(recipe=[stage])
    assert [i for i, _ in session.modifiers] == ["mine.0"]
    with pytest.raises(ConfigError, match=r"must hold only StageModifiers or only modifiers"):
        Session().initialize(recipe=[stage, EventLog()])


def test_stages_with_the_same_name_are_refused_with_the_names_and_the_fix() -> None:
    twins = [StageModifiers([EventLog()], group="s", index=0),
             StageModifiers([EventLog()], group="s", index=1)]  # fmt: skip
    with pytest.raises(ConfigError, match=r"'s' names stages 0, 1.*To fix, give each stage"):
        Session().initialize(recipe=twins)
    clash = [StageModifiers([EventLog()], group="first", index=0),
             StageModifiers([EventLog()], index=1),  # unnamed: called stage_1
             StageModifiers([EventLog()], group="stage_1", index=2)]  # fmt: skip
    session = Session()
    with pytest.raises(ConfigError, match=r"'stage_1' names stages 1, 2") as caught:
        session.initialize(recipe=clash)
    assert caught.value.value == ["stage_1"]
    assert session.position == "created"
    assert all(m.lifecycle_state is L.CREATED for stage in clash for m in stage.modifiers)


# --- checkpoints ------------------------------------------------------------------------------


def saved(session: Session) -> Any:
    buffer = io.BytesIO()
    torch.save(session.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_state_dict_round_trips_through_torch_and_restores_everything() -> None:
    session = started(EventLog(start=2, end=3), EventLog(start=0), batches_per_step=2)
    for _ in range(3):
        session.batch_start()
        if session.position == "step_due":
            session.optim_pre_step()
            session.optim_post_step()
        session.batch_end()
    state = saved(session)
    assert state["modifiers"]["default_stage.0"]["lifecycle"] == "initialized"
    fresh = Session()
    fresh.load_state_dict(state)
    a, b = EventLog(start=2, end=3), EventLog(start=0)
    fresh.initialize(recipe=[a, b])
    assert (fresh.global_step, fresh.global_batch, fresh.batches_since_step) == (1, 3, 1)
    assert (fresh.batches_per_step, fresh.position) == (2, "idle")
    assert (a.lifecycle_state, b.lifecycle_state) == (L.INITIALIZED, L.STARTED)
    assert a.hooks == []  # resuming runs no lifecycle hook
    assert b.hooks == []
    assert fresh.stages[0].stage_state == "initialized"


def test_loading_into_a_different_recipe_lists_the_mismatch() -> None:
    state = saved(started(EventLog(), RecordingModifier()))
    fresh = Session()
    fresh.load_state_dict(state)
    with pytest.raises(SessionMismatchError) as caught:
        fresh.initialize(recipe=[RecordingModifier(), RecordingModifier(), EventLog()])
    message = str(caught.value)
    assert "default_stage.0 was a EventLog, the recipe has RecordingModifier" in message
    assert "default_stage.1 was a RecordingModifier" not in message
    assert "default_stage.2 (EventLog) is in the recipe but not saved" in message
    assert fresh.position == "created"


def test_loading_with_other_counting_settings_is_refused() -> None:
    state = saved(started(EventLog(), batches_per_step=2))
    fresh = Session()
    fresh.load_state_dict(state)
    with pytest.raises(
        SessionMismatchError, match=r"batches_per_step=3.*saved with batches_per_step=2"
    ):
        fresh.initialize(recipe=[EventLog()], batches_per_step=3)


def test_loading_into_modifiers_with_other_arguments_lists_every_differing_field() -> None:
    @attrs.define(eq=False)
    class Pruner(EventLog):
        sparsity: float = 0.5
        targets: list[str] = attrs.Factory(lambda: ["re:.*"])
        scheme: Any = None

    state = saved(started(Pruner(start=1, end=4, sparsity=0.5), EventLog(start=2)))
    fresh = Session()
    fresh.load_state_dict(state)
    with pytest.raises(SessionMismatchError) as caught:
        fresh.initialize(recipe=[Pruner(start=1, end=5, sparsity=0.7, targets=["fc1"]),
                                 EventLog(start=2)])  # fmt: skip
    assert caught.value.problems == (
        "default_stage.0.end: saved 4, recipe 5",
        "default_stage.0.sparsity: saved 0.5, recipe 0.7",
        "default_stage.0.targets: saved ['re:.*'], recipe ['fc1']",
    )
    assert fresh.position == "created"
    again = Session()
    again.load_state_dict(state)
    again.initialize(recipe=[Pruner(start=1, end=4), EventLog(start=2)])  # the same arguments
    assert again.position == "idle"


def test_every_mismatch_of_settings_and_recipe_is_listed_in_one_error() -> None:
    state = saved(started(EventLog(start=1), batches_per_step=2, steps_per_epoch=4))
    fresh = Session()
    fresh.load_state_dict(state)
    with pytest.raises(SessionMismatchError) as caught:
        fresh.initialize(recipe=[RecordingModifier(), EventLog()], batches_per_step=3,
                         steps_per_epoch=5)  # fmt: skip
    assert caught.value.problems == (
        "steps_per_epoch=5, but the state was saved with steps_per_epoch=4 (pass "
        "steps_per_epoch=4 or leave it out)",
        "batches_per_step=3, but the state was saved with batches_per_step=2 (pass "
        "batches_per_step=2 or leave it out)",
        "default_stage.1 (EventLog) is in the recipe but not saved",
        "default_stage.0 was a EventLog, the recipe has RecordingModifier",
    )
    assert "4 mismatches" in str(caught.value)


def test_saved_arguments_are_plain_values_that_compare_across_processes() -> None:
    @attrs.define(eq=False)
    class Odd(EventLog):
        callback: Any = None
        ratio: float = 0.0
        names: Any = frozenset()

    def callback() -> None: ...

    modifier = Odd(callback=callback, ratio=float("nan"), names=frozenset({"b", "a"}))
    arguments = saved(started(modifier))["modifiers"]["default_stage.0"]["arguments"]
    assert arguments["callback"] == f"<{__name__}.{callback.__qualname__}>"  # no address
    assert arguments["ratio"] == "nan"  # nan == nan would never hold
    assert arguments["names"] == ["'a'", "'b'"]  # a set's order varies between processes
    assert (arguments["start"], arguments["group"], arguments["seen"]) == (
        None, "default_stage", [],
    )  # fmt: skip


def test_checkpoint_calls_out_of_place_are_refused() -> None:
    with pytest.raises(IllegalTransitionError, match=r"state_dict is not allowed"):
        Session().state_dict()
    with pytest.raises(IllegalTransitionError, match=r"load_state_dict is not allowed"):
        started().load_state_dict({})
    with pytest.raises(ConfigError, match=r"not a modfsm session state \(format is None"):
        Session().load_state_dict({"position": "idle"})


def test_a_modifier_without_state_methods_refuses_saved_state() -> None:
    with pytest.raises(ConfigError, match=r"does not override load_state_dict"):
        EventLog().load_state_dict({"masks": 1}, started().state)


# --- what the errors carry (pinned whole: they name the thing, the value and the fix) -----


def test_no_active_session_is_an_error_that_says_how_to_make_one() -> None:
    with pytest.raises(LifecycleError) as caught:
        active_session()
    assert str(caught.value) == (
        "no session is active in this thread. To fix, run the loop inside "
        "'with Session() as session:'."
    )


def test_a_mismatch_error_names_the_session_state_dict_and_every_problem() -> None:
    state = saved(started(EventLog(), RecordingModifier()))
    fresh = Session()
    fresh.load_state_dict(state)
    with pytest.raises(SessionMismatchError) as caught:
        fresh.initialize(recipe=[EventLog()])
    error = caught.value
    assert (error.owner, error.field, error.value) == ("Session", "state_dict", None)
    assert error.problems == ("default_stage.1 (RecordingModifier) is saved but not in the recipe",)


@pytest.mark.parametrize("call", ["agree", "state_dict"])
def test_a_call_outside_the_run_is_refused_by_the_grammar_naming_the_position_and_the_fix(
    call: str,
) -> None:
    session = Session()
    with pytest.raises(IllegalTransitionError) as caught:
        getattr(session, call)()
    error = caught.value
    assert str(error) == (
        f"session.{call} is not allowed on Session: it is 'created' (not initialized). "
        "Allowed from 'created': session.initialize, session.load_state_dict. To fix, call "
        "session.initialize(model=..., recipe=...) first. [rule G1]"
    )
    assert (error.modifier, error.state, error.trigger, error.rule, error.allowed) == (
        session,
        "created",
        call,
        "G1",
        ("session.initialize", "session.load_state_dict"),
    )
    finished = started(EventLog())
    finished.finalize()
    with pytest.raises(IllegalTransitionError, match=r"it is 'finalized' .* \[rule G3\]$"):
        getattr(finished, call)()


def test_leaving_a_session_in_a_thread_that_never_entered_one_is_harmless() -> None:
    import threading

    session = Session()
    failures: list[BaseException] = []

    def leave() -> None:
        try:
            session.__exit__(None, None, None)
        except BaseException as error:  # the test reports it below
            failures.append(error)

    worker = threading.Thread(target=leave)
    worker.start()
    worker.join()
    assert failures == []
    assert session.position == "created"  # nothing to finalize


# --- where a failed call stopped, as the trace records it ------------------------------------


@attrs.define(eq=False)
class Finishes(Modifier):
    """Initializes; its on_finalize raises while ``armed``."""

    armed: bool = False

    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        return True

    def on_finalize(self, state: State, **kwargs: Any) -> bool:
        if self.armed:
            raise ValueError("cannot write the export")
        return True


def failures(session: Session) -> list[tuple[str, Any]]:
    assert session.trace is not None
    return [(r["trigger"], r["stopped_at"]) for r in session.trace.records if r["kind"] == "failed"]


def test_an_event_a_finalizing_stage_refuses_is_traced_as_stopped_at_its_first_modifier() -> None:
    failing = Finishes(armed=True)
    session = Session()
    session.initialize(recipe=[Finishes(), failing, Finishes()], trace=True)
    with pytest.raises(ValueError, match="cannot write the export"):
        session.finalize()
    with pytest.raises(IllegalTransitionError, match=r"rule S2"):
        session.batch_start()  # the stage is finalizing: it refuses, no modifier runs
    failing.armed = False
    session.finalize()
    assert failures(session) == [
        ("finalize", {"stage": "default_stage", "modifier": "default_stage.1"}),
        ("batch_start", {"stage": "default_stage", "modifier": "default_stage.0"}),
    ]
    assert session.trace is not None
    assert verify(session.trace.records).divergence is None


@pytest.mark.parametrize("action", ["initialize", "finalize"])
def test_a_stage_failing_after_all_its_modifiers_is_traced_as_stopped_past_them(
    action: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import modfsm.engine.model.state

    real = modfsm.engine.model.state.SystemLogger.info

    def info(self: modfsm.engine.model.state.SystemLogger, *, tag: str, string: str) -> None:
        if string == f"Modifiers {action}d":
            raise OSError("the log disk is full")
        real(self, tag=tag, string=string)

    session = Session()
    if action == "finalize":
        session.initialize(recipe=[Finishes(), Finishes()], trace=True)
    monkeypatch.setattr(modfsm.engine.model.state.SystemLogger, "info", info)

    def call() -> None:
        if action == "initialize":
            session.initialize(recipe=[Finishes(), Finishes()], trace=True)
        else:
            session.finalize()

    with pytest.raises(OSError, match="the log disk is full"):
        call()
    # Every modifier completed the call; the stage itself raised after them.
    assert failures(session) == [(action, {"stage": "default_stage", "modifier": None})]


def test_the_trace_header_lists_stages_modifiers_types_windows_and_guards() -> None:
    @attrs.define(eq=False)
    class StartsEarly(Finishes):
        def should_start(self, event: Any) -> bool:  # only this guard is its own
            return True

    first, second, third = Finishes(start=1, end=4), StartsEarly(), Finishes()
    session = Session()
    session.initialize(
        recipe=[StageModifiers(modifiers=[first, second]), StageModifiers(modifiers=[third])],
        trace=True,
    )
    assert session.trace is not None
    header = session.trace.records[0]
    assert header["stages"] == [
        {"id": "stage_0", "state": "pending", "modifiers": ["stage_0.0", "stage_0.1"]},
        {"id": "stage_1", "state": "pending", "modifiers": ["stage_1.0"]},
    ]
    assert header["modifiers"] == [
        {"id": "stage_0.0", "type": "Finishes", "start": 1, "end": 4,
         "default_guards": True, "state": "created"},
        {"id": "stage_0.1", "type": "StartsEarly", "start": None, "end": None,
         "default_guards": False, "state": "created"},
        {"id": "stage_1.0", "type": "Finishes", "start": None, "end": None,
         "default_guards": True, "state": "created"},
    ]  # fmt: skip


def test_a_tampered_state_lists_every_misfit_in_order() -> None:
    state = saved(started(EventLog(start=1), EventLog(start=2), EventLog(start=3), EventLog()))
    modifiers = state["modifiers"]
    modifiers["default_stage.0"]["type"] = "Pruner"  # checked first: nothing else about it
    modifiers["default_stage.1"]["lifecycle"] = "half_started"
    modifiers["default_stage.1"]["arguments"]["gone"] = 1
    modifiers["default_stage.2"]["arguments"] = None  # and the checks go on after it
    del modifiers["default_stage.3"]["arguments"]["start"]
    modifiers["default_stage.9"] = {"type": "Ghost", "arguments": {}, "lifecycle": "created"}
    state["stages"][0]["state"] = "melted"
    fresh = Session()
    fresh.load_state_dict(state)
    with pytest.raises(SessionMismatchError) as caught:
        fresh.initialize(
            recipe=[EventLog(start=1), EventLog(start=2), EventLog(start=3), EventLog()]
        )
    assert caught.value.problems == (
        "default_stage.9 (Ghost) is saved but not in the recipe",
        "default_stage.0 was a Pruner, the recipe has EventLog",
        "default_stage.1: unknown lifecycle state 'half_started'",
        "default_stage.1.gone is saved but is not an argument any more",
        "default_stage.2: the state has no saved arguments to compare",
        "default_stage.3.start is in the recipe but not saved",
        "stage default_stage: unknown state 'melted'",
    )


def test_a_saved_modifier_without_its_own_state_is_a_misfit() -> None:
    state = saved(started(EventLog(start=1)))
    del state["modifiers"]["default_stage.0"]["state"]
    fresh = Session()
    fresh.load_state_dict(state)
    with pytest.raises(SessionMismatchError) as caught:
        fresh.initialize(recipe=[EventLog(start=1)])
    assert caught.value.problems == ("default_stage.0: the modifier's own state is not saved",)


def test_a_state_saved_with_other_stages_names_both_lists() -> None:
    state = saved(started(EventLog()))
    fresh = Session()
    fresh.load_state_dict(state)
    with pytest.raises(SessionMismatchError) as caught:
        fresh.initialize(recipe=[StageModifiers(modifiers=[EventLog()])])
    assert caught.value.problems[0] == "stages: saved ['default_stage'], recipe ['stage_0']"


def test_partial_with_another_event_is_refused_naming_the_fix() -> None:
    session = started(EventLog())
    with pytest.raises(ConfigError) as caught:
        session.event(EventType.BATCH_START, partial=True)
    error = caught.value
    assert str(error) == (
        "Session.event: partial=True applies to OPTIM_PRE_STEP, not BATCH_START. "
        "To fix, drop partial=True."
    )
    assert (error.owner, error.field, error.value) == ("Session", "partial", True)
    assert session.position == "idle"


def test_load_state_dict_on_a_running_session_is_refused_by_the_session() -> None:
    session = started(EventLog())
    with pytest.raises(IllegalTransitionError) as caught:
        session.load_state_dict(session.state_dict())
    assert caught.value.modifier is session
    assert caught.value.trigger == "load_state_dict"


def test_load_state_dict_after_initialize_names_the_position_and_the_fix() -> None:
    session = started(EventLog())
    with pytest.raises(IllegalTransitionError) as caught:
        session.load_state_dict({})
    error = caught.value
    assert str(error) == (
        "session.load_state_dict is not allowed on Session: it is 'idle' (already "
        "initialized: a saved state loads into a new Session, before initialize). Allowed "
        "from 'idle': session.batch_start, session.event(CALIBRATION_EPOCH_START), "
        "session.finalize, session.agree, session.state_dict. To fix, build a new Session, "
        "load the state, then initialize it. [rule G17]"
    )
    assert (error.state, error.trigger, error.rule) == ("idle", "load_state_dict", "G17")
    assert session._resume is None  # refused before anything was kept


def _state_with(**changes: Any) -> Any:
    state = dict(saved(started(EventLog())))
    for key, value in changes.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    return state


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ([1, 2], "expected a dict, got list"),
        ({"format": "modfsm.session/0"},
         "format is 'modfsm.session/0', expected 'modfsm.session/1'"),
        ({}, "format is None, expected 'modfsm.session/1'"),
        ("missing", "missing ['counters', 'stages']"),
        ("created", "position 'created' cannot be resumed"),
        ("finalized", "position 'finalized' cannot be resumed"),
        ("sideways", "position 'sideways' cannot be resumed"),
        ({"extra": 1}, "unexpected ['extra']"),
        ({"config": {"batches_per_step": 1}},
         "config must hold batches_per_step and steps_per_epoch"),
        ({"config": {"batches_per_step": 0, "steps_per_epoch": None}},
         "config batches_per_step must be a whole number >= 1"),
        ({"config": {"batches_per_step": None, "steps_per_epoch": None}},
         "config batches_per_step must be a whole number >= 1"),
        ({"config": {"batches_per_step": 1, "steps_per_epoch": 0}},
         "config steps_per_epoch must be null or a whole number >= 1"),
        ({"counters": {"global_step": 0, "global_batch": 0}},
         "counters must hold exactly ['global_step', 'global_batch', 'batches_since_step']"),
        ({"counters": {"global_step": "1", "global_batch": 0, "batches_since_step": 0}},
         "every counter must be a whole number >= 0"),
        ({"counters": {"global_step": True, "global_batch": 0, "batches_since_step": 0}},
         "every counter must be a whole number >= 0"),
        ({"stages": [{"name": "s"}]}, "stages must be a list of {name, state}"),
        ({"stages": "s"}, "stages must be a list of {name, state}"),
        ({"modifiers": {"m": {"type": "X", "lifecycle": "started", "extra": 1}}},
         "modifiers must map ids to {type, arguments, lifecycle, state}"),
        ({"modifiers": {1: {"type": "X", "lifecycle": "started"}}},
         "modifiers must map ids to {type, arguments, lifecycle, state}"),
    ],
)  # fmt: skip
def test_a_state_dict_that_is_not_a_session_state_is_refused_saying_why(
    given: Any, problem: str
) -> None:
    if given == "missing":
        given = _state_with(counters=None, stages=None)
    elif isinstance(given, str):
        given = _state_with(position=given)
    elif isinstance(given, dict) and given and "format" not in given:
        given = {**_state_with(), **given}
    session = Session()
    with pytest.raises(ConfigError) as caught:
        session.load_state_dict(given)
    assert str(caught.value) == (
        f"Session.load_state_dict: not a modfsm session state ({problem}). To fix, pass "
        "what Session.state_dict() returned."
    )
    assert (caught.value.owner, caught.value.field, caught.value.value) == (
        "Session",
        "state_dict",
        None,
    )
    assert session.position == "created"


@attrs.define(eq=False)
class Listens(Modifier):
    """Records the keyword arguments and batches_per_step its hooks receive."""

    heard: list[tuple[str, Any]] = attrs.field(factory=list)

    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        return True

    def on_event(self, state: State, event: Any, **kwargs: Any) -> None:
        self.heard.append((event.type_.value, (event.batches_per_step, kwargs)))

    def on_finalize(self, state: State, **kwargs: Any) -> bool:
        self.heard.append(("finalize", kwargs))
        return True


def test_keyword_arguments_and_the_accumulation_reach_the_modifiers_hooks() -> None:
    listener = Listens()
    session = started(listener, batches_per_step=2)
    session.batch_start("x", note="first")
    session.batch_end()
    session.finalize(export="int8")
    assert listener.heard == [
        ("batch_start", (2, {"note": "first"})),
        ("batch_end", (2, {})),
        ("finalize", {"export": "int8"}),
    ]


def test_an_error_after_finalize_inside_the_with_block_propagates_unchanged() -> None:
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def run() -> None:
        with Session() as session:
            session.initialize(model=model, optimizer=optimizer, wrap_optimizer=True)
            session.finalize()
            raise KeyError("after the run")

    with pytest.raises(KeyError, match="after the run"):
        run()


def test_stages_without_a_name_are_saved_under_their_position() -> None:
    session = Session()
    session.initialize(recipe=[StageModifiers(modifiers=[EventLog()]), StageModifiers()])
    assert [entry["name"] for entry in session.state_dict()["stages"]] == ["stage_0", "stage_1"]


class _Blank:
    """Default repr (with an address); an instance-level ``__module__`` of None."""

    def __init__(self) -> None:
        self.__module__ = None  # type: ignore[assignment]  # the odd case under test


@pytest.mark.parametrize(
    ("value", "plain"),
    [
        ({"a": {2, 1}, "b": [1.5, None]}, {"a": ["1", "2"], "b": [1.5, None]}),
        ({1: "x"}, "{1: 'x'}"),
        (object(), "<builtins.object>"),
        (_Blank(), f"<{__name__}._Blank>"),
        (float("nan"), "nan"),
    ],
)
def test_saved_arguments_become_plain_comparable_values(value: Any, plain: Any) -> None:
    from modfsm.engine.loop.session import _plain

    assert _plain(value) == plain


def test_saved_arguments_are_keyed_by_the_constructor_name_of_private_fields() -> None:
    @attrs.define(eq=False)
    class Private(EventLog):
        _rate: float = 0.5

    session = started(Private(rate=0.25))
    arguments = session.state_dict()["modifiers"]["default_stage.0"]["arguments"]
    assert arguments["rate"] == 0.25
    assert "_rate" not in arguments


def test_a_recipe_may_use_experimental_modifiers_when_the_session_allows_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("_main_registry", "_experimental_registry", "_registered_registry", "_errors"):
        monkeypatch.setattr(ModifierFactory, name, {})
    monkeypatch.setattr(ModifierFactory, "_loaded", False)
    monkeypatch.setattr(ModifierFactory, "main_package", "tests.fixtures.fake_modifiers")
    monkeypatch.setattr(
        ModifierFactory, "experimental_package", "tests.fixtures.fake_modifiers.experimental"
    )
    recipe: dict[str, Any] = {"trial_stage": {"modifiers": {"TrialModifier": {}}}}
    session = Session()
    session.initialize(recipe=recipe, allow_experimental=True)
    assert [type(m).__name__ for _, m in session.modifiers] == ["TrialModifier"]


@pytest.mark.parametrize(
    ("kwargs", "error", "message", "field"),
    [
        ({"steps_per_epoch": 0}, ConfigError,
         "Session.steps_per_epoch must be >= 1, got 0.", "steps_per_epoch"),
        ({"batches_per_step": "2"}, ConfigTypeError,
         "Session.batches_per_step must be an int", "batches_per_step"),
    ],
)  # fmt: skip
def test_bad_counting_settings_are_refused_naming_the_setting(
    kwargs: dict[str, Any], error: type[ConfigError], message: str, field: str
) -> None:
    session = Session()
    with pytest.raises(error) as caught:
        session.initialize(**kwargs)
    assert str(caught.value).startswith(message)
    assert (caught.value.owner, caught.value.field) == ("Session", field)


@pytest.mark.parametrize(("extra", "count"), [(1, "1 mismatch)"), (2, "2 mismatches)")])
def test_the_mismatch_count_is_spelled_out(extra: int, count: str) -> None:
    state = saved(started(EventLog()))
    fresh = Session()
    fresh.load_state_dict(state)
    with pytest.raises(SessionMismatchError) as caught:
        fresh.initialize(recipe=[EventLog() for _ in range(1 + extra)])
    problems = "; ".join(
        f"default_stage.{i} (EventLog) is in the recipe but not saved" for i in range(1, 1 + extra)
    )
    assert str(caught.value) == (
        f"Session.initialize: the loaded state does not fit ({count}: {problems}. To fix, "
        "resume with the recipe and settings the state was saved with."
    )


def test_a_list_of_modifiers_is_one_stage_at_index_0() -> None:
    session = started(EventLog())
    assert session.stages[0].index == 0
    assert session.stages[0].unique_id == "default_stage_0"


def test_a_list_mixing_stages_and_modifiers_is_refused() -> None:
    recipe = [StageModifiers(), EventLog()]
    with pytest.raises(ConfigTypeError) as caught:
        Session().initialize(recipe=recipe)
    error = caught.value
    assert str(error) == (
        "Session.initialize: recipe= as a list must hold only StageModifiers or only "
        "modifiers. To fix, pass one kind, or a recipe file."
    )
    assert (error.owner, error.field, error.value) == ("Session", "recipe", recipe)


def test_wrap_optimizer_without_an_optimizer_names_the_fix() -> None:
    with pytest.raises(ConfigError) as caught:
        Session().initialize(wrap_optimizer=True)
    error = caught.value
    assert str(error) == (
        "Session.initialize: wrap_optimizer=True needs an optimizer. To fix, pass "
        "optimizer=... or drop wrap_optimizer."
    )
    assert (error.owner, error.field, error.value) == ("Session", "wrap_optimizer", True)


def test_initialize_puts_every_argument_on_the_state() -> None:
    model, teacher = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    session = Session()
    session.initialize(
        model=model, teacher_model=teacher, optimizer=optimizer, train_data="t", calib_data="c"
    )
    state = session.state
    assert (state.model, state.teacher_model, state.optimizer) == (model, teacher, optimizer)
    assert (state.data.train, state.data.calib) == ("t", "c")


def test_stages_with_clashing_names_are_refused_listing_every_clash() -> None:
    stages = [
        StageModifiers(group="a"),
        StageModifiers(group="a"),
        StageModifiers(),
        StageModifiers(group="stage_2"),
    ]
    with pytest.raises(ConfigError) as caught:
        Session().initialize(recipe=stages)
    error = caught.value
    assert str(error) == (
        "Session.initialize: stage names must be unique, because modifier ids are "
        "'<stage>.<index>' and resume restores by id, but 'a' names stages 0, 1; 'stage_2' "
        "names stages 2, 3. To fix, give each stage its own name (its group); an unnamed "
        "stage is called 'stage_<position>', so do not name another stage that way."
    )
    assert (error.owner, error.field, error.value) == ("Session", "recipe", ["a", "stage_2"])


def test_initialize_defaults_no_trace_no_experimental_and_agreement_every_100_steps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    session = Session()
    session.initialize()
    assert session.trace is None
    assert session.agree_every == 100
    for name in ("_main_registry", "_experimental_registry", "_registered_registry", "_errors"):
        monkeypatch.setattr(ModifierFactory, name, {})
    monkeypatch.setattr(ModifierFactory, "_loaded", False)
    monkeypatch.setattr(ModifierFactory, "main_package", "tests.fixtures.fake_modifiers")
    monkeypatch.setattr(
        ModifierFactory, "experimental_package", "tests.fixtures.fake_modifiers.experimental"
    )
    from modfsm.engine.config.recipe import RecipeError

    with pytest.raises(RecipeError, match=r"it is experimental\. To fix, pass allow_experimental"):
        Session().initialize(recipe={"trial_stage": {"modifiers": {"TrialModifier": {}}}})


def test_the_start_event_carries_the_step_the_run_starts_or_resumes_at() -> None:
    session = started(EventLog(start=0), steps_per_epoch=4)
    assert session.state.start_event == Event(
        EventType.INITIALIZE, steps_per_epoch=4, global_step=0, global_batch=0
    )
    for _ in range(3):
        full_batch(session)
    resumed = Session()
    resumed.load_state_dict(saved(session))
    resumed.initialize(recipe=[EventLog(start=0)], steps_per_epoch=4)
    assert resumed.state.start_event == Event(
        EventType.INITIALIZE, steps_per_epoch=4, global_step=3, global_batch=3
    )


def test_a_streamed_trace_keeps_every_record_across_a_failed_and_retried_finalize(
    tmp_path: Any,
) -> None:
    failing = Finishes(armed=True)
    path = tmp_path / "run.jsonl"
    session = Session()
    session.initialize(recipe=[failing], trace=path)
    with pytest.raises(ValueError, match="cannot write the export"):
        session.finalize()
    failing.armed = False
    session.finalize()
    assert session.trace is not None
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(session.trace.records)


def test_a_failed_initialize_closes_its_trace_file(tmp_path: Any) -> None:
    session = Session()
    with pytest.raises(ValueError, match="cannot write the export"):
        session.initialize(recipe=[Refusing()], trace=tmp_path / "run.jsonl")
    assert session.trace is not None
    assert session.trace._stream is None  # closed: a retry opens its own


@attrs.define(eq=False)
class Refusing(Finishes):
    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        raise ValueError("cannot write the export")


@attrs.define(eq=False)
class FailsAt(Finishes):
    """Raises in on_event at the event type named ``at``."""

    at: str = "batch_end"

    def on_event(self, state: State, event: Any, **kwargs: Any) -> None:
        if event.type_.value == self.at:
            raise ValueError(f"failed at {self.at}")


@pytest.mark.parametrize(("at", "step", "batch"), [("optim_post_step", 1, 0), ("batch_end", 1, 1)])
def test_a_failed_event_is_traced_with_the_counters_it_carried(
    at: str, step: int, batch: int
) -> None:
    session = Session()
    session.initialize(recipe=[FailsAt(at=at)], trace=True)
    with pytest.raises(ValueError, match=f"failed at {at}"):
        full_batch(session)
    assert session.trace is not None
    failed = [r for r in session.trace.records if r["kind"] == "failed"]
    assert [(r["event"], r["step"], r["batch"]) for r in failed] == [(at, step, batch)]
    assert (session.global_step, session.global_batch) == (1 if at == "batch_end" else 0, 0)


def test_a_traced_run_over_unnamed_stages_of_several_sizes_names_each_modifier() -> None:
    late = EventLog(start=0)
    session = Session()
    session.initialize(
        recipe=[
            StageModifiers(modifiers=[EventLog(), EventLog()]),
            StageModifiers(modifiers=[EventLog()]),
            StageModifiers(modifiers=[late]),
        ],
        trace=True,
    )
    full_batch(session)
    assert session.trace is not None
    moves = [
        (r["modifier"], r["from"], r["to"])
        for r in session.trace.records
        if r["kind"] == "transition" and r["from"] != r["to"]
    ]
    assert moves == [
        ("stage_0.0", "created", "initialized"),
        ("stage_0.1", "created", "initialized"),
        ("stage_1.0", "created", "initialized"),
        ("stage_2.0", "created", "started"),  # start=0: it opens at initialize
    ]
    stage_ids = {r["stage"] for r in session.trace.records if r["kind"] == "stage"}
    assert stage_ids == {"stage_0", "stage_1", "stage_2"}


def test_a_failure_in_a_later_unnamed_stage_is_traced_with_that_stage_and_the_error() -> None:
    session = Session()
    session.initialize(
        recipe=[
            StageModifiers(modifiers=[EventLog(), EventLog()]),
            StageModifiers(modifiers=[FailsAt(at="batch_start")]),
        ],
        trace=True,
    )
    with pytest.raises(ValueError, match="failed at batch_start"):
        session.batch_start()
    assert session.trace is not None
    (failed,) = [r for r in session.trace.records if r["kind"] == "failed"]
    assert failed["stopped_at"] == {"stage": "stage_1", "modifier": "stage_1.0"}
    assert failed["error"] == "ValueError: failed at batch_start"


def test_a_resume_that_fails_before_the_trace_header_closes_the_trace_file(
    tmp_path: Any,
) -> None:
    state = saved(started(EventLog()))
    state["modifiers"]["default_stage.0"]["state"] = {"mask": 1}  # EventLog saves nothing
    session = Session()
    session.load_state_dict(state)
    with pytest.raises(ConfigError, match=r"EventLog.load_state_dict got \['mask'\]"):
        session.initialize(recipe=[EventLog()], trace=tmp_path / "run.jsonl")
    assert session.trace is not None
    assert session.trace.records == []  # it failed before the header
    assert session.trace._stream is None


def test_hookable_optimizer_sees_through_the_known_wrappers_however_deep() -> None:
    from modfsm.engine.loop.session import hookable_optimizer

    accelerate_optimizer = pytest.importorskip("accelerate.optimizer")
    lightning_optimizer = pytest.importorskip("lightning.pytorch.core.optimizer")
    inner = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
    assert hookable_optimizer(inner) is inner
    accelerated = object.__new__(accelerate_optimizer.AcceleratedOptimizer)  # no device setup
    accelerated.optimizer = inner
    assert hookable_optimizer(accelerated) is inner
    twice = object.__new__(accelerate_optimizer.AcceleratedOptimizer)
    twice.optimizer = lightning_optimizer.LightningOptimizer(inner)
    assert hookable_optimizer(twice) is inner


class LightningLookalike:
    """Named like Lightning's wrapper, but not from Lightning: not unwrapped."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self._optimizer = optimizer


class HookDictOnly:
    """Has the attribute torch's optimizers have, but is not an optimizer."""

    def __init__(self) -> None:
        self._optimizer_step_pre_hooks: dict[int, Any] = {}


@pytest.mark.parametrize("make", [LightningLookalike, lambda inner: HookDictOnly()])
def test_hookable_optimizer_refuses_what_only_looks_like_a_known_one(make: Any) -> None:
    from modfsm.engine.loop.session import hookable_optimizer

    inner = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
    wrapper = make(inner)
    with pytest.raises(ConfigError) as caught:
        hookable_optimizer(wrapper)
    name = type(wrapper).__qualname__
    assert str(caught.value).startswith(
        f"Session.initialize: wrap_optimizer=True cannot hook {name}: it is not a "
    )
    assert (caught.value.owner, caught.value.field, caught.value.value) == (
        "Session", "optimizer", name,
    )  # fmt: skip


def test_hookable_optimizer_refuses_a_wrapper_that_wraps_itself_instead_of_looping() -> None:
    from modfsm.engine.loop.session import hookable_optimizer

    accelerate_optimizer = pytest.importorskip("accelerate.optimizer")
    cyclic = object.__new__(accelerate_optimizer.AcceleratedOptimizer)
    cyclic.optimizer = cyclic
    with pytest.raises(ConfigError, match="cannot hook AcceleratedOptimizer"):
        hookable_optimizer(cyclic)
