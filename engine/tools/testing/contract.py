"""The modifier contract: what every modifier must do, checked over generated training runs.

:class:`Contract` holds what the checks need (a modifier factory, a model, ...)
and has one method per check; each runs many generated runs (a schedule, a
training loop that follows the step grammar, and where needed a save point or
illegal calls). :class:`~modfsm.engine.tools.testing.testcase.ModifierContract` runs them
under pytest::

    from modfsm.engine.tools.testing import ModifierContract
    from my_package import MyModifier

    class TestMyModifier(ModifierContract):
        def make_modifier(self, start, end):
            return MyModifier(start=start, end=end)

The checks:

1. ``check_lifecycle`` — every ``initialize``/``update_event``/``finalize`` call runs
   exactly the hooks and guards the declared lifecycle gives for the state it was
   made in and what the guards answered, each with the call's event, and leaves
   the modifier in the declared state.
2. ``check_illegal_calls`` — a call the lifecycle rejects raises
   ``IllegalTransitionError`` and changes nothing: no hook runs, and the
   lifecycle state, the modifier's fields, its ``state_dict()``, the model and
   torch's hooks are as before.
3. ``check_hooks_released`` — no torch hook the modifier added (on the model, its
   parameters, the optimizer, or globally) is left after ``finalize``.
4. ``check_untouched_outside_window`` — until the window opens, the model (weights,
   buffers, gradients, output) is exactly that of the same run without the
   modifier; after the window closes, the modifier changes it no more (unless
   the class says ``changes_model_before_start`` / ``holds_after_end``).
5. ``check_resume`` — saving at any point (``Session.state_dict`` and the model and
   optimizer through ``torch.save``/``torch.load(weights_only=True)``) and resuming
   in fresh objects gives the run that was not interrupted: the same hook calls
   and states, and the same model bit for bit, after every call.

A failure raises :class:`~modfsm.engine.tools.testing.report.ContractViolation` with the
smallest run hypothesis found that breaks the check, one call per line, the
offending call marked. ``specs/testing.md`` says exactly what each check decides.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final

import attrs
import torch

from modfsm.engine.kernel.errors import IllegalTransitionError
from modfsm.engine.model.events import Event, EventType
from modfsm.engine.model.state import State
from modfsm.engine.runtime.modifier import Modifier
from modfsm.engine.tools.testing import strategies
from modfsm.engine.tools.testing._hypothesis import HealthCheck, Phase, given, hypothesis, st
from modfsm.engine.tools.testing.defaults import (
    default_loss,
    default_model,
    default_optimizer,
    input_width,
    no_calib_data,
    no_teacher,
    random_batch,
)
from modfsm.engine.tools.testing.expected import check_call
from modfsm.engine.tools.testing.loop import LoopParts, Run, through_torch
from modfsm.engine.tools.testing.report import CheckFailed, ContractViolation, Report
from modfsm.engine.tools.testing.scenario import Schedule, Stream
from modfsm.engine.tools.testing.snapshot import (
    differences,
    forward_probe,
    model_snapshot,
    object_snapshot,
    torch_hooks,
)
from modfsm.engine.tools.testing.spy import LifecycleCall

__all__ = ["Contract"]

_PROBE_BATCH: Final = 1_000_003
_CHECKS: Final = (
    "check_lifecycle",
    "check_illegal_calls",
    "check_hooks_released",
    "check_untouched_outside_window",
    "check_resume",
)


@attrs.frozen
class Contract:
    """The contract for one modifier, with the factories it needs; see the module docstring.

    Attributes:
        make_modifier: ``(start, end) -> Modifier``, a new modifier with that window.
        make_model: a new model (the same each time; the contract seeds torch first).
        make_batch: ``index -> inputs`` of batch ``index``: a tensor (the model is
            called ``model(batch)``) or a dict of keyword arguments (``model(**batch)``,
            as transformers models are); default: 4 rows of random numbers as wide as
            the model's first ``in_features``.
        loss: ``output -> scalar loss`` (the output may be an output object); the loop
            trains on the loss ``session.loss_calculated`` returns, so a modifier may
            replace it.
        make_optimizer: ``model -> optimizer`` (default SGD with momentum).
        make_calib_data: calibration data for ``Session.initialize(calib_data=...)``.
        make_teacher_model: a teacher for ``Session.initialize(teacher_model=...)``
            (distillation; default None).
        schedules: the windows to try.
        streams: the training loops to try.
        changes_model_before_start: the modifier may change the model before its
            window opens (skips that half of ``check_untouched_outside_window``).
        holds_after_end: the modifier's effect stays in force after its window
            closes, until ``finalize`` (skips the other half).
        max_examples: runs per check; default: a tenth of the hypothesis profile's
            ``max_examples``, at least 20 (each run is a whole training loop).
        settings: hypothesis settings to start from (default: the loaded profile).
    """

    make_modifier: Callable[[float | None, float | None], Modifier]
    make_model: Callable[[], torch.nn.Module] = default_model
    make_batch: Callable[[int], Any] | None = None
    loss: Callable[[Any], torch.Tensor] = default_loss
    make_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer] = default_optimizer
    make_calib_data: Callable[[], Any] = no_calib_data
    make_teacher_model: Callable[[], torch.nn.Module | None] = no_teacher
    schedules: st.SearchStrategy[Schedule] = attrs.field(factory=strategies.contract_schedules)
    streams: st.SearchStrategy[Stream] = attrs.field(factory=strategies.event_streams)
    changes_model_before_start: bool = False
    holds_after_end: bool = False
    max_examples: int | None = None
    settings: hypothesis.settings | None = None

    # --- the checks -----------------------------------------------------------------------

    def check_all(self) -> None:
        """Run every check, in order; the first that fails raises."""
        for name in _CHECKS:
            getattr(self, name)()

    def check_lifecycle(self) -> None:
        """Each lifecycle call runs the declared hooks and guards and reaches the declared state."""
        self._explore("lifecycle", self._lifecycle)

    def check_illegal_calls(self) -> None:
        """A call the lifecycle rejects raises ``IllegalTransitionError`` and changes nothing."""
        self._explore("illegal calls", self._illegal_calls)

    def check_hooks_released(self) -> None:
        """No torch hook added during the run is left after ``finalize``."""
        self._explore("torch hooks", self._hooks_released)

    def check_untouched_outside_window(self) -> None:
        """The model is the bare run's until the window opens, and unchanged after it closes."""
        self._explore("outside the window", self._untouched)

    def check_resume(self) -> None:
        """Saving and resuming at any point gives the uninterrupted run."""
        self._explore("resume", self._resume)

    # --- running examples -----------------------------------------------------------------

    def hypothesis_settings(self) -> hypothesis.settings:
        """The settings each check runs under."""
        base = self.settings if self.settings is not None else hypothesis.settings.default
        if base is None:  # typed optional by hypothesis; a profile is always loaded
            base = hypothesis.settings()
        examples = self.max_examples
        if examples is None:
            examples = max(20, base.max_examples // 10)
        return hypothesis.settings(
            base,
            max_examples=examples,
            deadline=None,
            report_multiple_bugs=False,
            # The contract's message explains the failure; hypothesis' explain phase
            # would rerun the shrunk example many times to say the same.
            phases=[phase for phase in base.phases if phase is not Phase.explain],
            suppress_health_check=[*base.suppress_health_check, HealthCheck.too_slow],
        )

    def _explore(self, check: str, example: Callable[[st.DataObject], None]) -> None:
        name = self._modifier_name()

        @self.hypothesis_settings()
        @given(data=st.data())
        def contract(data: st.DataObject) -> None:
            with torch.random.fork_rng(devices=[]):
                example(data)

        contract.__name__ = contract.__qualname__ = f"{name}_{check.replace(' ', '_')}"
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # small models: more threads only add waiting
        try:
            contract()
        except ContractViolation as error:
            if not _show_hypothesis_report():
                # The message has the headline and the shrunk loop; hypothesis' own report
                # of the same example (its notes) is noise unless asked for.
                error.__notes__ = ["(pytest -v also shows hypothesis' own report of it)"]
            raise
        finally:
            torch.set_num_threads(threads)

    def _modifier_name(self) -> str:
        try:
            return type(self.make_modifier(None, None)).__name__
        except Exception:
            return "the modifier"

    def _draw(self, data: st.DataObject) -> Report:
        """The schedule and loop of one example, in a report of the run."""
        schedule = data.draw(self.schedules, label="schedule")
        stream = data.draw(self.streams, label="stream")
        return Report(schedule, stream)

    def _parts(self) -> LoopParts:
        make_batch = self.make_batch
        if make_batch is None:
            make_batch = functools.partial(random_batch, width=input_width(self.make_model()))

        return LoopParts(
            make_model=self.make_model,
            make_optimizer=self.make_optimizer,
            make_batch=make_batch,
            loss=self.loss,
            make_calib_data=self.make_calib_data,
            make_teacher_model=self.make_teacher_model,
        )

    def _new_modifier(self, report: Report, check: str) -> Modifier:
        """A modifier with the report's window; a factory that raises breaks the contract."""
        schedule = report.schedule
        try:
            return self.make_modifier(schedule.start, schedule.end)
        except Exception as error:
            problem = (
                f"make_modifier({schedule.start!r}, {schedule.end!r}) raised "
                f"{type(error).__name__}: {error}. To fix, narrow the contract's schedules to "
                "the windows the modifier accepts."
            )
            raise ContractViolation(
                self._modifier_name(), check, problem, report.lines()
            ) from error

    @contextmanager
    def _runs(self, report: Report, check: str, *runs: Run) -> Iterator[None]:
        """Close ``runs`` afterwards; turn a failure into a :class:`ContractViolation`."""
        try:
            yield
        except CheckFailed as failure:
            if failure.position is not None:
                report.marks[failure.position] = failure.mark
            raise ContractViolation(
                self._modifier_name(), check, failure.problem, report.lines()
            ) from None
        finally:
            for run in runs:
                run.close()

    def _step(self, run: Run, position: int) -> None:
        """Make the call at ``position`` (0 initialize, n + 1 finalize); a raise is a failure."""
        try:
            if position == 0:
                run.initialize()
            elif position == len(run.stream) + 1:
                run.finalize()
            else:
                run.call(position - 1)
        except Exception as error:
            raise CheckFailed(
                f"the call raised {type(error).__name__}: {error}", position
            ) from error

    # --- 1. lifecycle -----------------------------------------------------------------------

    def _lifecycle(self, data: st.DataObject) -> None:
        report = self._draw(data)
        run = Run(self._parts(), report.stream, self._new_modifier(report, "lifecycle"))
        assert run.spy is not None
        assert run.modifier is not None
        machine = type(run.modifier).__compiled_lifecycle__
        with self._runs(report, "lifecycle", run):
            for position in range(len(report.stream) + 2):
                seen = len(run.spy.calls)
                self._step(run, position)
                if run.spy.stray:
                    stray = ", ".join(hook.name for hook in run.spy.stray)
                    raise CheckFailed(f"{stray} ran outside any lifecycle call", position)
                for recorded in run.spy.calls[seen:]:
                    problems = check_call(machine, recorded)
                    if problems:
                        raise CheckFailed(
                            f"{recorded.call} in state {recorded.before!r}: {'; '.join(problems)}",
                            position,
                        )
                if len(run.spy.calls) == seen:
                    raise CheckFailed("the modifier received no lifecycle call", position)

    # --- 2. illegal calls -------------------------------------------------------------------

    def _illegal_calls(self, data: st.DataObject) -> None:
        report = self._draw(data)
        stream = report.stream
        run = Run(self._parts(), stream, self._new_modifier(report, "illegal calls"))
        assert run.modifier is not None
        machine = type(run.modifier).__compiled_lifecycle__
        last = len(stream) + 1
        after = data.draw(
            st.sets(st.integers(-1, last), min_size=1, max_size=3), label="illegal calls after"
        )
        with self._runs(report, "illegal calls", run):
            for position in range(-1, last + 1):
                if position >= 0:
                    self._step(run, position)
                if position not in after:
                    continue
                here = str(run.modifier.lifecycle_state)
                rejected = [
                    trigger
                    for trigger in machine.declaration.trigger_names()
                    if machine.plans[(here, trigger)].rejection is not None
                ]
                if rejected:
                    trigger = data.draw(st.sampled_from(rejected), label=f"illegal in {here}")
                    self._probe(run, trigger, report, position)

    def _probe(self, run: Run, trigger: str, report: Report, position: int) -> None:
        """Make one illegal call after ``position`` and check it raised and changed nothing."""
        modifier, spy, stream = run.modifier, run.spy, report.stream
        assert modifier is not None
        assert spy is not None
        event = _event_for(modifier, trigger, stream, position)
        call = _describe_illegal(trigger, event)
        report.note(position, f"illegal: {call}")
        if run.session is not None and position >= 0:
            state = run.session.state
        else:
            state = State(model=run.model, optimizer=run.optimizer)
        before = _everything(run)
        calls_before = len(spy.calls)
        problem = None
        try:
            if trigger == "initialize":
                modifier.initialize(state)
            elif trigger == "finalize":
                modifier.finalize(state)
            else:
                assert event is not None
                modifier.update_event(state, event)
        except IllegalTransitionError:
            ran = [hook.name for recorded in spy.calls[calls_before:] for hook in recorded.hooks]
            changed = differences(before, _everything(run))
            what = [f"{', '.join(ran)} ran"] if ran else []
            what += [f"{', '.join(changed)} changed"] if changed else []
            if what:
                problem = f"the illegal call {call} raised, but {'; '.join(what)}"
        except Exception as error:
            problem = (
                f"the illegal call {call} raised {type(error).__name__} ({error}), not "
                "IllegalTransitionError"
            )
        else:
            problem = f"the illegal call {call} was accepted"
        if problem is not None:
            report.notes[position][-1] += "   <- here"
            raise CheckFailed(problem)

    # --- 3. torch hooks ----------------------------------------------------------------------

    def _hooks_released(self, data: st.DataObject) -> None:
        report = self._draw(data)
        run = Run(self._parts(), report.stream, self._new_modifier(report, "torch hooks"))
        with self._runs(report, "torch hooks", run):
            before = torch_hooks(run.model, run.optimizer)
            for position in range(len(report.stream) + 2):
                self._step(run, position)
            left = torch_hooks(run.model, run.optimizer) - before
            if left:
                listed = ", ".join(f"{count} {where}" for where, count in sorted(left.items()))
                raise CheckFailed(f"torch hooks survive finalize: {listed}", len(report.stream) + 1)

    # --- 4. outside the window ---------------------------------------------------------------

    def _untouched(self, data: st.DataObject) -> None:
        report = self._draw(data)
        parts = self._parts()
        run = Run(parts, report.stream, self._new_modifier(report, "outside the window"))
        shadow = Run(parts, report.stream, None)
        assert run.modifier is not None
        modifier = run.modifier
        probe = parts.make_batch(_PROBE_BATCH)
        with self._runs(report, "outside the window", run, shadow):
            for position in range(len(report.stream) + 2):
                was_ended = modifier.started and modifier.ended
                known = len(run.spy.calls) if run.spy is not None else 0
                self._step(run, position)
                if 0 < position <= len(report.stream):
                    shadow.call(position - 1)
                if not modifier.started:
                    if not self.changes_model_before_start:
                        _same_model(run, shadow, probe, position, "before the window opened")
                elif modifier.ended:
                    if not was_ended or _acted(run, known):
                        # the window closed here, or the declared table runs a hook after it
                        # (the calibration lifecycle's calibration events): resynchronize
                        shadow.copy_training_state(run)
                    elif not self.holds_after_end:
                        _same_model(run, shadow, probe, position, "after the window closed")

    # --- 5. resume --------------------------------------------------------------------------

    def _resume(self, data: st.DataObject) -> None:
        report = self._draw(data)
        stream = report.stream
        parts = self._parts()
        probe = parts.make_batch(_PROBE_BATCH)
        straight = Run(parts, stream, self._new_modifier(report, "resume"))
        resumed = Run(parts, stream, self._new_modifier(report, "resume"))
        assert straight.spy is not None
        assert straight.modifier is not None
        with self._runs(report, "resume", straight, resumed):
            # The uninterrupted run, saved after every call but finalize.
            checkpoints, seen, inside = [], [], []
            for position in range(len(stream) + 2):
                mark = len(straight.spy.calls)
                self._step(straight, position)
                if position <= len(stream):
                    try:
                        checkpoints.append(straight.save())
                    except Exception as error:
                        raise CheckFailed(
                            f"saving raised {type(error).__name__}: {error}", position
                        ) from error
                    if straight.modifier.started and not straight.modifier.ended:
                        inside.append(position)
                seen.append(_observe(straight, straight.spy.calls[mark:], probe))
            # Interrupt it anywhere.
            anywhere = st.sampled_from(range(len(stream) + 1))
            if inside:  # half the time inside the window, where most state changes
                anywhere = st.one_of(st.sampled_from(inside), anywhere)
            save_at = data.draw(anywhere, label="save after call")
            report.note(save_at, "saved; resumed in a new model, optimizer, session and modifier")
            try:
                checkpoint = through_torch(checkpoints[save_at])
            except Exception as error:
                problem = (
                    f"the checkpoint does not go through torch.save and "
                    f"torch.load(weights_only=True): {type(error).__name__}: {error}"
                )
                raise CheckFailed(problem, save_at) from error
            try:
                resumed.initialize(checkpoint)
            except Exception as error:
                problem = f"resuming raised {type(error).__name__}: {error}"
                raise CheckFailed(problem, save_at) from error
            assert resumed.spy is not None
            for position in range(save_at, len(stream) + 2):
                if position > save_at:
                    self._step(resumed, position)
                ours = _observe(resumed, resumed.spy.calls, probe)
                resumed.spy.calls.clear()
                expected = seen[position]
                if position == save_at:  # resuming runs no lifecycle call
                    expected = attrs.evolve(expected, calls=())
                problems = _compare_resumed(expected, ours)
                if problems:
                    raise CheckFailed("; ".join(problems), position)


# --- helpers -----------------------------------------------------------------------------------


def _event_for(modifier: Modifier, trigger: str, stream: Stream, position: int) -> Event | None:
    """An event that ``update_event`` routes to ``trigger``, at the loop's current counters
    (None for ``initialize`` and ``finalize``)."""
    if trigger in ("initialize", "finalize"):
        return None
    routes = type(modifier).__compiled_lifecycle__.declaration.event_triggers
    event_type = next(
        kind
        for kind, routed in routes.items()
        if routed == trigger and kind not in (EventType.INITIALIZE, EventType.FINALIZE)
    )
    latest = min(position, len(stream)) - 1  # the stream call made last, if any
    if latest < 0:
        return Event(event_type, steps_per_epoch=stream.steps_per_epoch)
    return stream.events[latest].new_instance(type_=event_type)


def _describe_illegal(trigger: str, event: Event | None) -> str:
    if event is None:
        return f"{trigger}()"
    return f"update_event({event.type_.value} step {event.global_step} batch {event.global_batch})"


def _everything(run: Run) -> dict[str, Any]:
    """What an illegal call must not change, by name."""
    modifier = run.modifier
    assert modifier is not None
    names = [field.name for field in attrs.fields(type(modifier)) if field.name != "_lc"]
    names += [name for name in getattr(modifier, "__dict__", {}) if name not in names]
    return {
        "the lifecycle state": str(modifier.lifecycle_state),
        **{f"field {name}": object_snapshot(getattr(modifier, name)) for name in names},
        "state_dict()": object_snapshot(modifier.state_dict()),
        **model_snapshot(run.model),
        **{
            f"torch hooks ({where})": count
            for where, count in torch_hooks(run.model, run.optimizer).items()
        },
    }


def _show_hypothesis_report() -> bool:
    """Whether a violation keeps hypothesis' report: under ``pytest -v`` (as the kit's
    plugin saw it) or a hypothesis verbosity of ``verbose`` and above."""
    plugin = sys.modules.get("modfsm.engine.tools.testing.plugin")
    verbosity = getattr(plugin, "PYTEST_VERBOSITY", [0])[0] if plugin is not None else 0
    return verbosity > 0 or hypothesis.settings().verbosity >= hypothesis.Verbosity.verbose


_PRELUDES: Final = frozenset({"on_event", "on_initialize", "on_finalize", "release_hooks"})


def _acted(run: Run, known: int) -> bool:
    """Whether a lifecycle call after the first ``known`` ran a hook beyond its prelude (and
    the torch-hook release of finalize): one the declared table lets act on the model."""
    if run.spy is None or run.modifier is None:
        return False
    hooks = {hook.name for call in run.spy.calls[known:] for hook in call.hooks}
    guards = set(type(run.modifier).__compiled_lifecycle__.declaration.guards)
    return bool(hooks - _PRELUDES - guards)


def _same_model(run: Run, shadow: Run, probe: torch.Tensor, position: int, when: str) -> None:
    changed = differences(model_snapshot(shadow.model), model_snapshot(run.model))
    if not changed and not bool(
        torch.equal(forward_probe(run.model, probe), forward_probe(shadow.model, probe))
    ):
        changed = ["the model's output"]
    if changed:
        raise CheckFailed(
            f"the modifier changed the model {when}: {_differ(changed)} from the same run "
            "without the modifier",
            position,
        )


@attrs.frozen
class _Observed:
    """What a run showed after one call: its lifecycle calls and state, its model and output."""

    calls: tuple[str, ...]
    state: str
    model: dict[str, torch.Tensor]
    output: torch.Tensor


def _observe(run: Run, calls: list[LifecycleCall], probe: torch.Tensor) -> _Observed:
    assert run.modifier is not None
    return _Observed(
        tuple(_summary(call) for call in calls),
        str(run.modifier.lifecycle_state),
        model_snapshot(run.model),
        forward_probe(run.model, probe),
    )


def _compare_resumed(straight: _Observed, resumed: _Observed) -> list[str]:
    """How the resumed run departs from the uninterrupted one after the same call."""
    problems = []
    if resumed.calls != straight.calls:
        problems.append(
            f"the resumed modifier's {'; '.join(resumed.calls) or 'nothing'} differs from the "
            f"uninterrupted one's {'; '.join(straight.calls) or 'nothing'}"
        )
    if resumed.state != straight.state:
        problems.append(
            f"the resumed modifier is {resumed.state!r}, the uninterrupted one {straight.state!r}"
        )
    changed = differences(straight.model, resumed.model)
    if not changed and not bool(torch.equal(straight.output, resumed.output)):
        changed = ["the model's output"]
    if changed:
        problems.append(f"{_differ(changed)} from the uninterrupted run")
    return problems


def _differ(changed: list[str]) -> str:
    """``parameter '0.weight' differs`` / ``a, b differ``."""
    return f"{', '.join(changed)} {'differs' if len(changed) == 1 else 'differ'}"


def _summary(call: LifecycleCall) -> str:
    """``update_event running on_event, on_update (started -> started)``."""
    hooks = ", ".join(
        hook.name if hook.result is None else f"{hook.name} -> {hook.result!r}"
        for hook in call.hooks
    )
    return f"{call.call} running {hooks or 'no hook'} ({call.before} -> {call.after})"
