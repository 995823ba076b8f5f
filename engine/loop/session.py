"""``Session``: modfsm in a hand-written training loop.

A session owns the run's :class:`~modfsm.engine.model.state.State`, the recipe's stages and
the step counters, and turns the loop's calls into events that carry the real
step::

    session = Session()
    session.initialize(model=model, optimizer=optimizer, recipe="recipe.yaml")
    for batch in loader:
        session.batch_start(batch)
        loss = loss_fn(model(batch))
        session.loss_calculated(loss)
        loss.backward()
        session.optim_pre_step()
        optimizer.step()
        session.optim_post_step()
        session.batch_end()
    session.finalize()

The order of those calls is the step grammar, a declared machine
(:data:`modfsm.engine.model.session_grammar.SESSION_GRAMMAR`): an out-of-order call raises
:class:`~modfsm.engine.kernel.errors.IllegalTransitionError` naming the call, the position
and what is expected next, and changes nothing. See ``specs/session.md`` for
the grammar, the counters and the resume contract.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Final

import attrs

from modfsm.engine.config.recipe import DEFAULT_STAGE, Recipe
from modfsm.engine.kernel.compiler import (
    CompiledMachine,
    CompiledState,
    compile_machine,
    specialize,
)
from modfsm.engine.kernel.errors import (
    ConfigError,
    ConfigTypeError,
    IllegalTransitionError,
    LifecycleError,
)
from modfsm.engine.kernel.validate import check_optional_int, check_optional_number
from modfsm.engine.loop.distributed import (
    DEFAULT_TIMEOUT_S,
    Collective,
    Snapshot,
    agree,
    hardware,
    torch_collective,
    unwrap_model,
)
from modfsm.engine.loop.trace import (
    FORMAT,
    STAGE_TRIGGERS,
    TraceRecorder,
    check_traceable,
    stage_records,
    transition_records,
)
from modfsm.engine.model.events import Event, EventType, to_event_type, trusted_event
from modfsm.engine.model.session_grammar import (
    COUNT_AFTER,
    COUNTER_HOOKS,
    SESSION_GRAMMAR,
    SessionState,
    completes_accumulation,
)
from modfsm.engine.model.state import Data, ModifiedState, State
from modfsm.engine.runtime.modifier import Modifier
from modfsm.engine.runtime.stage import _COMPILED as _STAGE_MACHINE
from modfsm.engine.runtime.stage import StageError, StageModifiers

__all__ = ["STATE_DICT_FORMAT", "Session", "SessionMismatchError", "active_session"]

STATE_DICT_FORMAT: Final = "modfsm.session/1"

_GRAMMAR: Final = compile_machine(SESSION_GRAMMAR, state_attr="_lc")
_LOG: Final = logging.getLogger("modfsm")
_COUNTS: Final = dict(COUNT_AFTER)
_NO_COUNT: Final = (0, 0)
_POSITIONS: Final = {member.value: member for member in SessionState}
_ACCUMULATING: Final = frozenset({SessionState.ACCUMULATING, SessionState.ACCUMULATING_LOSS})
_LOCAL = threading.local()
_BATCH_END: Final = EventType.BATCH_END
_COUNT_STEP: Final = COUNTER_HOOKS["count_step"]
_CLOSE_ACCUMULATING: Final = COUNTER_HOOKS["close_accumulating_batch"]
_CLOSE_STEP: Final = COUNTER_HOOKS["close_step_batch"]
_CLOSE_SKIPPED: Final = COUNTER_HOOKS["close_skipped_batch"]
_PRE_STEP: Final = EventType.OPTIM_PRE_STEP
_POST_STEP: Final = EventType.OPTIM_POST_STEP
_NEVER: Final = sys.maxsize


class SessionMismatchError(ConfigError):
    """A saved session does not fit the recipe or settings it is loaded into.

    Attributes:
        problems: every mismatch found, one sentence each (the message lists them all).
    """

    def __init__(self, message: str, *, problems: Sequence[str]) -> None:
        super().__init__(message, owner="Session", field="state_dict", value=None)
        self.problems = tuple(problems)


def active_session() -> Session:
    """The innermost session entered with ``with`` in this thread.

    Raises:
        LifecycleError: no session is active in this thread.
    """
    stack: list[Session] = getattr(_LOCAL, "stack", [])
    if not stack:
        raise LifecycleError(
            "no session is active in this thread. To fix, run the loop inside "
            "'with Session() as session:'."
        )
    return stack[-1]


def _default_position(session: Session) -> CompiledState:
    return type(session).__grammar__.initial


def _compile_grammar(cls: type[Any]) -> CompiledMachine:
    """The step grammar for ``cls``: its cells call the class's own hook functions when no
    instance can hold hooks of its own (``__slots__``); computed once, with the class."""
    return specialize(_GRAMMAR, noop_hooks=frozenset(), owner=None if cls.__dictoffset__ else cls)


@attrs.define(eq=False)
class Session:
    """The engine embedded in a training loop: state, stages, counters, grammar, trace.

    Attributes:
        state: the run's state (model, optimizer, data, ...), built by ``initialize``.
        stages: the recipe's stages, in order.
        batches_per_step: batches per optimizer step (gradient accumulation).
        steps_per_epoch: optimizer steps per epoch, for epoch-based schedules.
        global_step: optimizer steps completed.
        global_batch: batches completed.
        batches_since_step: batches completed since the last optimizer step.
        trace: the trace recorder, when ``initialize(trace=...)`` asked for one.
        agree_every: under ``torch.distributed``, the ranks agree every this many
            optimizer steps (None: only at stage boundaries and :meth:`agree`).
        collective: how the ranks reach each other (None in a single process).
    """

    state: State = attrs.field(factory=State)
    stages: list[StageModifiers] = attrs.field(factory=list)
    batches_per_step: int = 1
    steps_per_epoch: int | None = None
    global_step: int = 0
    global_batch: int = 0
    batches_since_step: int = 0
    trace: TraceRecorder | None = None
    agree_every: int | None = 100
    collective: Collective | None = None
    _lc: CompiledState = attrs.field(
        init=False, repr=False, default=attrs.Factory(_default_position, takes_self=True)
    )
    _ids: list[tuple[str, Modifier]] = attrs.field(init=False, repr=False, factory=list)
    _resume: Mapping[str, Any] | None = attrs.field(init=False, repr=False, default=None)
    _hook_handles: list[Any] = attrs.field(init=False, repr=False, factory=list)
    _seq: int = attrs.field(init=False, repr=False, default=0)
    _before: tuple[list[str], list[str]] | None = attrs.field(init=False, repr=False, default=None)
    _traced_schedules: dict[str, dict[str, Any]] = attrs.field(init=False, repr=False, factory=dict)
    _arguments: dict[str, dict[str, Any]] = attrs.field(init=False, repr=False, factory=dict)
    _next_agreement: int = attrs.field(init=False, repr=False, default=_NEVER)

    #: the step grammar as this class runs it (:func:`_compile_grammar`)
    __grammar__: ClassVar[CompiledMachine]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.__grammar__ = _compile_grammar(cls)

    # --- views ------------------------------------------------------------------------------

    @property
    def position(self) -> SessionState:
        """Where the loop is in the step grammar."""
        return _POSITIONS[self._lc.name]

    @property
    def modifiers(self) -> list[tuple[str, Modifier]]:
        """Every modifier with its stable id (``"<stage>.<index>"``), in stage order."""
        return list(self._ids)

    @property
    def lifecycle_label(self) -> str:
        """How errors name the session."""
        return "Session"

    # --- the lifecycle -----------------------------------------------------------------------

    def initialize(
        self,
        *,
        model: Any = None,
        optimizer: Any = None,
        recipe: Any = None,
        steps_per_epoch: int | None = None,
        batches_per_step: int | None = None,
        teacher_model: Any = None,
        calib_data: Any = None,
        train_data: Any = None,
        wrap_optimizer: bool = False,
        trace: bool | str | Path = False,
        allow_experimental: bool = False,
        distributed: bool | Collective | None = None,
        agree_every: int | None = 100,
        collective_timeout: float = DEFAULT_TIMEOUT_S,
        **kwargs: Any,
    ) -> ModifiedState:
        """Build the state and the recipe's stages, then initialize them (or resume).

        Args:
            model: the model to modify.
            optimizer: its optimizer (needed for ``wrap_optimizer``).
            recipe: a recipe (path, YAML text, dict or
                :class:`~modfsm.engine.config.recipe.Recipe`), a list of
                :class:`~modfsm.engine.runtime.stage.StageModifiers`, a list of modifiers
                (one stage), or None (no modifiers).
            steps_per_epoch: set it to read schedules in epochs.
            batches_per_step: batches per optimizer step (default 1).
            teacher_model, calib_data, train_data: stored on the state.
            wrap_optimizer: report ``optim_pre_step``/``optim_post_step`` from
                ``optimizer.step()`` itself (torch step hooks, removed at finalize).
            trace: True to keep a trace in memory, or a path to also stream it as JSONL.
            allow_experimental: let the recipe use experimental modifiers.
            distributed: None to run in lockstep with the other ranks when
                ``torch.distributed`` has a process group (every rank must then
                build its session the same way), True to require one, False to run
                alone; or a :class:`~modfsm.engine.loop.distributed.Collective` of your own.
            agree_every: in lockstep, the ranks also agree every this many optimizer
                steps (None: only at stage boundaries and :meth:`agree`).
            collective_timeout: seconds a rank waits for the others at an agreement.
            **kwargs: passed to every modifier's ``initialize``.

        A ``DistributedDataParallel`` (or ``DataParallel``) model is unwrapped:
        ``state.model`` is the module it holds, so modifiers hook the user's layers.
        ``state.hardware`` says the rank and world size (rank 0 of 1 alone).

        If :meth:`load_state_dict` was called first, the session resumes: the
        modifiers, stages, counters and position are restored from it and no
        lifecycle hook runs (see ``specs/session.md``).

        Raises:
            ConfigError: bad settings, or two stages with the same name (ids are
                ``"<stage>.<index>"``, so they would collide).
            SessionMismatchError: the loaded state does not fit; lists every mismatch.
            StageError: a modifier declined to initialize (the session stays ``created``).
            RankFailureError: in lockstep, initialize failed on some rank (every rank
                raises it; see ``specs/distributed.md``).
            RankDivergenceError: in lockstep, the ranks built or restored different
                recipes or states.
        """
        arguments = {
            "model": model,
            "optimizer": optimizer,
            "recipe": recipe,
            "steps_per_epoch": steps_per_epoch,
            "batches_per_step": batches_per_step,
            "teacher_model": teacher_model,
            "calib_data": calib_data,
            "train_data": train_data,
            "wrap_optimizer": wrap_optimizer,
            "trace": trace,
            "allow_experimental": allow_experimental,
            "distributed": distributed,
            "agree_every": agree_every,
            "collective_timeout": collective_timeout,
            "modifier_kwargs": kwargs,
        }
        self._call("initialize", None, arguments)
        if self._resume is not None:
            saved, self._resume = self._resume, None
            object.__setattr__(self, "_lc", type(self).__grammar__.states[saved["position"]])
        return self._modified()

    def finalize(self, **kwargs: Any) -> ModifiedState:
        """Finalize every stage, in order; remove the optimizer hooks; close the trace."""
        self._call("finalize", None, kwargs)
        if self.trace is not None:
            self.trace.close()
        return self._modified()

    def _modified(self) -> ModifiedState:
        """The model, optimizer and loss as they are (no modifier data: lifecycle calls)."""
        state = self.state
        return ModifiedState(state.model, state.optimizer, state.loss, [])

    # --- loop events ---------------------------------------------------------------------------

    def event(
        self, event_type: EventType | str, *, partial: bool = False, **kwargs: Any
    ) -> ModifiedState:
        """Report ``event_type`` to the session (the callbacks below do this for theirs).

        Args:
            event_type: which event (an :class:`~modfsm.engine.model.events.EventType` or its name).
            partial: with ``OPTIM_PRE_STEP``, step before the accumulation is complete.
            **kwargs: ``batch_data=`` / ``loss=`` are stored on the state; everything
                is passed to the modifiers' hooks.

        Returns:
            the model, optimizer and loss as the modifiers left them
            (:class:`~modfsm.engine.model.state.ModifiedState`); so do the callbacks below.
        """
        kind = to_event_type(event_type)
        trigger = SESSION_GRAMMAR.event_triggers[kind]
        if partial:
            if kind is not EventType.OPTIM_PRE_STEP:
                raise ConfigError(
                    f"Session.event: partial=True applies to OPTIM_PRE_STEP, not {kind.name}. "
                    "To fix, drop partial=True.",
                    owner="Session",
                    field="partial",
                    value=partial,
                )
            trigger = "partial_step"
        return self._emit(kind, trigger, kwargs)

    def batch_start(self, batch_data: Any = None, **kwargs: Any) -> ModifiedState:
        """A batch begins (``batch_data`` is stored on the state)."""
        return self._emit(EventType.BATCH_START, "batch_start", kwargs, "batch_data", batch_data)

    def loss_calculated(self, loss: Any = None, **kwargs: Any) -> ModifiedState:
        """The batch's loss is known (stored on the state). Train on the returned
        ``loss``: a modifier may have replaced it (``state.loss``)."""
        return self._emit(EventType.LOSS_CALCULATED, "loss_calculated", kwargs, "loss", loss)

    def optim_pre_step(self, partial: bool = False, **kwargs: Any) -> ModifiedState:
        """The optimizer is about to step (``partial=True``: before the accumulation completes)."""
        return self._emit(
            EventType.OPTIM_PRE_STEP, "partial_step" if partial else "optim_pre_step", kwargs
        )

    def optim_post_step(self, **kwargs: Any) -> ModifiedState:
        """The optimizer stepped."""
        return self._emit(EventType.OPTIM_POST_STEP, "optim_post_step", kwargs)

    def batch_end(self, **kwargs: Any) -> ModifiedState:
        """The batch is done."""
        return self._emit(EventType.BATCH_END, "batch_end", kwargs)

    def _emit(
        self,
        kind: EventType,
        trigger: str,
        kwargs: dict[str, Any],
        key: str | None = None,
        value: Any = None,
    ) -> ModifiedState:
        """Fire ``trigger`` with the event ``kind`` carries (counters as of it).

        ``key``/``value``: the ``batch_data`` or ``loss`` a callback was given
        (as if in ``kwargs``, which the callback owns). Every session, traced or
        not, of this class or a subclass, runs the grammar's compiled cell: its
        guard, then its hooks ``absorb``, ``send`` (which reaches each stage's
        ``update_event``, and so :meth:`StageModifiers.deliver`) and the counter
        hook, then the new position. A trace records around that same call.
        """
        steps, batches = _COUNTS.get(kind, _NO_COUNT)
        if key is not None:
            kwargs[key] = value
        event = trusted_event(
            kind,
            self.steps_per_epoch,
            self.batches_per_step,
            self.global_step + steps,
            self.global_batch + batches,
        )
        if self.trace is not None:
            self._call(trigger, event, kwargs)
        elif kwargs:  # _call without the recording: the same cell
            self._lc.calls[trigger](self, self.state, event, **kwargs)
        else:  # the same call; a plain call is the cheaper one in CPython
            self._lc.calls[trigger](self, self.state, event)
        if kind is _BATCH_END and self.global_step >= self._next_agreement:
            self._next_agreement = self._agreement_after(self.global_step)
            self._agree(f"the end of batch {self.global_batch} (step {self.global_step})")
        state = self.state
        return ModifiedState(state.model, state.optimizer, state.loss, state.modifier_data)

    # --- lockstep across ranks ----------------------------------------------------------------

    def agree(self) -> None:
        """Check, here, that every rank is in the same lifecycle state (all must call it).

        Does nothing in a single process. Allowed between initialize and finalize.

        Raises:
            RankDivergenceError: the ranks differ; the error lists which, and where.
            CollectiveError: a rank did not arrive within the collective timeout.
        """
        self._lc.calls["agree"](self, self.state, None)

    def check_lockstep(self, state: State, event: None, **kwargs: Any) -> None:
        """Hook of ``agree``: the ranks compare where they are (nothing in one process)."""
        self._agree(f"Session.agree() in batch {self.global_batch} (step {self.global_step})")

    def _agreement_after(self, step: int) -> int:
        """The first step after ``step`` at which the ranks agree (never: sys.maxsize)."""
        every = self.agree_every
        if self.collective is None or every is None:
            return _NEVER
        return (step // every + 1) * every

    def _agree(self, where: str, error: BaseException | None = None, recipe: bool = False) -> None:
        """Run the agreement protocol at ``where`` (nothing in a single process).

        ``recipe=True`` compares the modifiers' arguments instead of their states.
        """
        collective = self.collective
        if collective is None:
            return
        snapshot = Snapshot(
            where=where,
            counters=(self.global_step, self.global_batch, self.batches_since_step),
            position=self._lc.name,
            modifiers=tuple(
                (mid, type(m).__name__, "" if recipe else m._lc.name) for mid, m in self._ids
            ),
            stages=tuple(
                (_stage_label(st, i), "" if recipe else st._lc.name)
                for i, st in enumerate(self.stages)
            ),
            recipe=tuple((mid, repr(self._arguments[mid])) for mid, _ in self._ids)
            if recipe
            else (),
            error=None if error is None else f"{type(error).__name__}: {error}",
        )
        agree(collective, snapshot, cause=error)

    def _disconnect(self) -> None:
        """Release the collective's group, if it has one to release (no more agreements)."""
        collective, self.collective = self.collective, None
        self._next_agreement = _NEVER
        close = getattr(collective, "close", None)
        if callable(close):
            close()

    def _run_agreed(self, where: str, call: Any, *args: Any, **kwargs: Any) -> None:
        """``call(*args, **kwargs)``, then agree on how it went; a failure fails every rank."""
        if self.collective is None:
            call(*args, **kwargs)
            return
        try:
            call(*args, **kwargs)
        except Exception as error:
            self._agree(where, error)
            raise
        self._agree(where)

    # --- context manager ---------------------------------------------------------------------

    def __enter__(self) -> Session:
        stack: list[Session] = getattr(_LOCAL, "stack", None) or []
        stack.append(self)
        _LOCAL.stack = stack
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        stack: list[Session] = getattr(_LOCAL, "stack", [])
        if self in stack:
            stack.remove(self)
        if exc is None:
            if self.position is not SessionState.CREATED and not self._lc.flags["finalized"]:
                self.finalize()
            return
        # The run failed: do not apply a broken result, but leave no torch hook behind.
        for _, modifier in self._ids:
            modifier.remove_hooks()
        self._remove_optimizer_hooks()
        self._disconnect()  # the other ranks learn it at their next agreement
        if self.trace is not None:
            self.trace.close()

    # --- checkpoints ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: counters, position, stages, each modifier's state.

        Only plain values (and whatever tensors modifiers return), so it works with
        ``torch.save`` and ``torch.load(weights_only=True)``.
        """
        self._lc.calls["state_dict"](self, self.state, None)  # legal here, or it raises
        return {
            "format": STATE_DICT_FORMAT,
            "config": {
                "batches_per_step": self.batches_per_step,
                "steps_per_epoch": self.steps_per_epoch,
            },
            "counters": {
                "global_step": self.global_step,
                "global_batch": self.global_batch,
                "batches_since_step": self.batches_since_step,
            },
            "position": self._lc.name,
            "stages": [
                {"name": _stage_label(stage, i), "state": stage.stage_state.value}
                for i, stage in enumerate(self.stages)
            ],
            "modifiers": {
                modifier_id: {
                    "type": type(modifier).__name__,
                    "arguments": self._arguments[modifier_id],
                    "lifecycle": modifier._lc.name,
                    "state": modifier.state_dict(),
                }
                for modifier_id, modifier in self._ids
            },
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Resume from ``state_dict`` at the next :meth:`initialize` (call it first).

        Raises:
            IllegalTransitionError: the session is already initialized.
            ConfigError: ``state_dict`` is not a modfsm session state.
        """
        self._lc.calls["load_state_dict"](self, self.state, None, saved=state_dict)

    def keep_resume(self, state: State, event: None, saved: Mapping[str, Any]) -> None:
        """Hook of ``load_state_dict``: check the saved state's shape and keep it for
        ``initialize``."""
        _check_format(saved)
        self._resume = saved

    # --- the grammar's hooks and guard (called by its compiled table) ------------------------

    def setup(self, state: Any, **arguments: Any) -> bool:
        """Gate of ``initialize``: build everything; True once the stages are ready.

        In lockstep (``self.collective``), the ranks agree once everything is built
        (recipe included), after each stage's ``initialize`` and after a resume: a
        failure on any rank makes every rank raise (``specs/distributed.md``).
        """
        collective = self._connect(arguments)
        try:
            ids = self._build(arguments)
        except Exception as error:
            if collective is None:
                raise
            self._agree("initialize", error)
            raise  # unreachable: _agree raised, every rank failed the same way
        # The recipe, not the lifecycle states: a retry after a failure on some ranks
        # finds modifiers initialized on some ranks only; the stages then agree.
        self._agree("initialize", recipe=True)
        run_state, resume = self.state, self._resume
        try:
            if resume is not None:
                self._run_agreed("resume", self._restore, resume)
                if self.trace is not None:
                    self._write_header(resume["position"], resumed=True)
            else:
                if self.trace is not None:
                    self._write_header(self._lc.name, resumed=False)
                for position, stage in enumerate(self.stages):
                    self._run_agreed(
                        f"initialize of stage {_stage_label(stage, position)!r}",
                        stage.initialize,
                        run_state,
                        **arguments["modifier_kwargs"],
                    )
        except BaseException:
            # Nothing half-initialized may keep hooks on the model; a retry starts afresh.
            for _, modifier in ids:
                modifier.remove_hooks()
            raise
        if arguments["wrap_optimizer"]:
            self._add_optimizer_hooks(arguments["optimizer"])
        run_state.start_event = Event(
            EventType.INITIALIZE,
            steps_per_epoch=self.steps_per_epoch,
            global_step=self.global_step,
            global_batch=self.global_batch,
        )
        self._next_agreement = self._agreement_after(self.global_step)
        if self.steps_per_epoch is not None:
            _LOG.info(
                "steps_per_epoch=%d: the modifiers' start, end and update are read in epochs "
                "(epoch = optimizer step / %d). To schedule in optimizer steps, leave "
                "steps_per_epoch unset.",
                self.steps_per_epoch,
                self.steps_per_epoch,
            )
        return True

    def _connect(self, arguments: Mapping[str, Any]) -> Collective | None:
        """Check the lockstep settings and join the other ranks (once per session)."""
        distributed = arguments["distributed"]
        if distributed is not None and not isinstance(distributed, bool | Collective):
            raise ConfigTypeError(
                f"Session.initialize: distributed must be None, a bool or a Collective, got "
                f"{distributed!r} ({type(distributed).__name__}). To fix, pass True, False or "
                "leave it unset.",
                owner="Session",
                field="distributed",
                value=distributed,
            )
        agree_every = check_optional_int(
            "Session", "agree_every", arguments["agree_every"], minimum=1
        )
        timeout = check_optional_number(
            "Session", "collective_timeout", arguments["collective_timeout"], minimum=0.001
        )
        if timeout is None:
            raise ConfigTypeError(
                "Session.collective_timeout must be a number of seconds, got None. To fix, "
                f"pass a positive number (default {DEFAULT_TIMEOUT_S:g}).",
                owner="Session",
                field="collective_timeout",
                value=None,
            )
        self.agree_every = agree_every
        if isinstance(distributed, Collective):
            self.collective = distributed
        elif self.collective is None or distributed is False:
            # A retried initialize keeps the group it made: every rank retries alike.
            self.collective = torch_collective(distributed, timeout)
        return self.collective

    def _build(self, arguments: Mapping[str, Any]) -> list[tuple[str, Modifier]]:
        """Check the arguments, build the state and the stages (no lifecycle hook runs)."""
        self.trace = None  # a trace left by a failed earlier attempt is closed
        steps_per_epoch = check_optional_int(
            "Session", "steps_per_epoch", arguments["steps_per_epoch"], minimum=1
        )
        batches_per_step = check_optional_int(
            "Session", "batches_per_step", arguments["batches_per_step"], minimum=1
        )
        stages = _stages(arguments["recipe"], arguments["allow_experimental"])
        _check_unique_labels(stages)
        ids = _ids(stages)
        given = {modifier_id: _arguments(modifier) for modifier_id, modifier in ids}
        resume = self._resume
        if resume is not None:
            saved = resume["config"]
            problems: list[str] = []
            steps_per_epoch = _agree(
                "steps_per_epoch", steps_per_epoch, saved["steps_per_epoch"], problems
            )
            batches_per_step = _agree(
                "batches_per_step", batches_per_step, saved["batches_per_step"], problems
            )
            problems += _misfits(resume, stages, ids, given)
            if problems:
                raise SessionMismatchError(
                    f"Session.initialize: the loaded state does not fit ({len(problems)} "
                    f"mismatch{'es' if len(problems) > 1 else ''}): {'; '.join(problems)}. To "
                    "fix, resume with the recipe and settings the state was saved with.",
                    problems=problems,
                )
        if arguments["wrap_optimizer"] and arguments["optimizer"] is None:
            raise ConfigError(
                "Session.initialize: wrap_optimizer=True needs an optimizer. To fix, pass "
                "optimizer=... or drop wrap_optimizer.",
                owner="Session",
                field="wrap_optimizer",
                value=True,
            )
        if arguments["wrap_optimizer"]:
            hookable_optimizer(arguments["optimizer"])  # refused before anything is built
        model, strategy = unwrap_model(arguments["model"])
        run_state = State(
            model=model,
            teacher_model=arguments["teacher_model"],
            optimizer=arguments["optimizer"],
            optim_wrapped=bool(arguments["wrap_optimizer"]),
            data=Data(train=arguments["train_data"], calib=arguments["calib_data"]),
            hardware=hardware(self.collective, model, strategy),
        )
        if self.collective is not None:  # the agreements replace per-modifier barriers
            for stage in stages:
                stage.modifier_barriers = False
        self.state, self.stages, self._ids = run_state, stages, ids
        self._arguments = given
        self.steps_per_epoch, self.batches_per_step = steps_per_epoch, batches_per_step or 1
        trace = arguments["trace"]
        if trace:
            for _, modifier in ids:
                check_traceable(type(modifier).__compiled_lifecycle__)
            self.trace = TraceRecorder(path=None if trace is True else Path(trace))
        return ids

    def teardown(self, state: Any, **kwargs: Any) -> bool:
        """Gate of ``finalize``: finalize every stage; True once all are applied.

        In lockstep the ranks agree after each stage's ``finalize``.
        """
        for position, stage in enumerate(self.stages):
            self._run_agreed(
                f"finalize of stage {_stage_label(stage, position)!r}",
                stage.finalize,
                self.state,
                **kwargs,
            )
        self._remove_optimizer_hooks()
        return True

    def completes_accumulation(self, event: Event) -> bool:
        """Guard: the batch beginning now completes ``batches_per_step`` batches."""
        return completes_accumulation(self, self.batches_per_step)

    def absorb(self, state: State, event: Event, **kwargs: Any) -> None:
        """Hook: keep the event, and the batch or loss it came with, on the state; start
        the event's ``modifier_data``."""
        state.last_event = event
        state.modifier_data = []
        if "batch_data" in kwargs:
            state.batch_data = kwargs["batch_data"]
        if "loss" in kwargs:
            state.loss = kwargs["loss"]

    def send(
        self, state: State, event: Event, batch_data: Any = None, loss: Any = None, **kwargs: Any
    ) -> None:
        """Hook: send the event to every stage, in order: ``stage.update_event``.

        ``batch_data`` and ``loss`` are on the state (``absorb``); the other keyword
        arguments reach the modifiers' hooks. As a stage does for its modifiers, the
        stage's cell for the event (its current state's ``route``) is run directly:
        the cell ``update_event`` would run, or, for a class that overrides it, a call
        to it.
        """
        kind = event.type_
        for stage in self.stages:
            cell = stage._lc.route.get(kind)
            if cell is None:  # not an event of its lifecycle: update_event says so
                stage.update_event(state, event, **kwargs)
            elif kwargs:
                cell(stage, state, event, **kwargs)
            else:  # the same call; a plain call is the cheaper one in CPython
                cell(stage, state, event)

    # The counter hooks commit the counters the event carries, by the grammar's
    # rules (modfsm.engine.model.session_grammar.COUNTER_HOOKS).

    def count_step(self, state: State, event: Event, **kwargs: Any) -> None:
        """Hook: the optimizer step is complete."""
        _COUNT_STEP(self, event.global_step, event.global_batch)

    def close_accumulating_batch(self, state: State, event: Event, **kwargs: Any) -> None:
        """Hook: a batch that did not step is complete."""
        _CLOSE_ACCUMULATING(self, event.global_step, event.global_batch)

    def close_step_batch(self, state: State, event: Event, **kwargs: Any) -> None:
        """Hook: a batch that stepped is complete."""
        _CLOSE_STEP(self, event.global_step, event.global_batch)

    def close_skipped_batch(self, state: State, event: Event, **kwargs: Any) -> None:
        """Hook: a step batch ended without an optimizer step (skipped, e.g. by a GradScaler).

        ``global_step`` stays; the accumulation starts over, as after a step.
        """
        _CLOSE_SKIPPED(self, event.global_step, event.global_batch)

    # --- internals -------------------------------------------------------------------------------

    def _call(self, trigger: str, event: Event | None, kwargs: dict[str, Any]) -> None:
        cell = self._lc.calls[trigger]
        if self.trace is None and trigger != "initialize":
            cell(self, self.state, event, **kwargs)
            return
        before = None if trigger == "initialize" else self._states()
        planned = None if trigger == "initialize" else self._schedules()
        try:
            cell(self, self.state, event, **kwargs)
        except IllegalTransitionError as error:
            if error.modifier is not self:  # accepted by the grammar, refused further down
                self._record(trigger, event, before, error, planned)
            raise
        except BaseException as error:
            self._record(trigger, event, before, error, planned)
            raise
        self._record(trigger, event, before, None, planned)

    def _states(self) -> tuple[list[str], list[str]]:
        """Every modifier's and every stage's lifecycle state, in order."""
        return [m._lc.name for _, m in self._ids], [stage._lc.name for stage in self.stages]

    def _schedules(self) -> dict[str, dict[str, Any]]:
        """What each modifier's default guards read now (for the trace): see :func:`_schedule`."""
        return {modifier_id: _schedule(m) for modifier_id, m in self._ids}

    def _record(
        self,
        trigger: str,
        event: Event | None,
        before: tuple[list[str], list[str]] | None,
        error: BaseException | None,
        planned: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        """Trace one accepted call (or its failure) and what it did to modifiers and stages.

        ``planned``: the modifiers' schedules when the call began. Those that differ from
        the last ones traced go in the call record (``schedules``), and those the call
        itself changed in ``rescheduled`` (their guards are then taken from the record).
        """
        trace = self.trace
        if trace is None or not trace.records or self._resume is not None:
            if error is not None and trigger == "initialize" and trace is not None:
                trace.close()
            return
        if before is None:  # initialize: the states when the header was written
            before = self._before or ([], [])
        self._seq += 1
        common = {
            "seq": self._seq,
            "event": None if event is None else event.type_.value,
            "step": self.global_step if event is None else event.global_step,
            "batch": self.global_batch if event is None else event.global_batch,
        }
        record: dict[str, Any] = {
            "kind": "call" if error is None else "failed",
            **common,
            "trigger": trigger,
            "position": self._lc.name,
        }
        if planned is not None:
            known, after = self._traced_schedules, self._schedules()
            changed = {mid: value for mid, value in planned.items() if known.get(mid) != value}
            moved = {mid: value for mid, value in after.items() if planned[mid] != value}
            if changed:
                record["schedules"] = changed
            if moved:
                record["rescheduled"] = moved
            self._traced_schedules = after
        stop = None if error is None else self._stop_point(error, trigger)
        if error is not None:
            record["stopped_at"] = (
                None
                if stop is None
                else {
                    "stage": _stage_label(self.stages[stop[0]], stop[0]),
                    "modifier": self._modifier_id(*stop),
                }
            )
            record["error"] = f"{type(error).__name__}: {error}"
        trace.add(record)
        stage_trigger = STAGE_TRIGGERS.get(trigger, STAGE_TRIGGERS["update"])[0]
        reached: list[tuple[str, Modifier]] = []
        reached_before: list[str] = []
        offset = 0
        for position, stage in enumerate(self.stages):
            count = len(stage.modifiers)
            stage_before = before[1][position]
            if stop is not None and position > stop[0]:
                break
            if _STAGE_MACHINE.plans[(stage_before, stage_trigger)].ignored is None:
                limit = stop[1] if stop is not None and position == stop[0] else count
                reached += self._ids[offset : offset + limit]
                reached_before += before[0][offset : offset + limit]
            offset += count
        for entry in transition_records(common, reached, reached_before, trigger, event):
            trace.add(entry)
        labels = [_stage_label(stage, i) for i, stage in enumerate(self.stages)]
        for entry in stage_records(common, zip(labels, self.stages, strict=True), before[1]):
            trace.add(entry)
        if error is not None and trigger == "initialize":
            trace.close()

    def _modifier_id(self, stage_position: int, modifier_position: int) -> str | None:
        stage = self.stages[stage_position]
        if modifier_position >= len(stage.modifiers):
            return None
        modifier = stage.modifiers[modifier_position]
        return next(mid for mid, m in self._ids if m is modifier)

    def _stop_point(self, error: BaseException, trigger: str) -> tuple[int, int] | None:
        """Where a failed call stopped: (stage, modifier position in it), None if after all.

        The modifier at that position failed (or declined) and changed nothing; the ones
        before it, and every earlier stage, completed the call; the rest were not reached.
        A position past the stage's last modifier means they all completed and the stage
        itself raised.
        """
        owners = {
            id(modifier): (stage_position, position)
            for stage_position, stage in enumerate(self.stages)
            for position, modifier in enumerate(stage.modifiers)
        }
        stages = {id(stage): position for position, stage in enumerate(self.stages)}
        if isinstance(error, StageError) and id(error.failed) in owners:
            return owners[id(error.failed)]
        failing_stage = None
        if isinstance(error, IllegalTransitionError) and id(error.modifier) in stages:
            failing_stage = stages[id(error.modifier)]  # a stage's table refused the call
        # Outermost first: the first frame running a method of one of our modifiers is the
        # modifier the stage was calling when the error came up.
        for frame, _ in traceback.walk_tb(error.__traceback__):
            owner = frame.f_locals.get("self")
            if id(owner) in owners and self._owns(owner, owners[id(owner)]):
                return owners[id(owner)]
            position = stages.get(id(owner))
            if failing_stage is None and position is not None and self.stages[position] is owner:
                failing_stage = position
        if failing_stage is None:
            return None
        # The stage raised outside any modifier: for initialize/finalize it stopped at its
        # first modifier not yet done; an event it refused reached none of its modifiers.
        modifiers = self.stages[failing_stage].modifiers
        flag = {"initialize": "initialized", "finalize": "finalized"}.get(trigger)
        if flag is None:
            return failing_stage, 0
        pending = (p for p, m in enumerate(modifiers) if not m._lc.flags[flag])
        return failing_stage, next(pending, len(modifiers))

    def _owns(self, owner: object, where: tuple[int, int]) -> bool:
        return self.stages[where[0]].modifiers[where[1]] is owner

    def _write_header(self, position: str, *, resumed: bool) -> None:
        assert self.trace is not None
        self._seq = 0
        self._before = self._states()
        self._traced_schedules = self._schedules()
        self.trace.add(
            {
                "kind": "header",
                "format": FORMAT,
                "resumed": resumed,
                "batches_per_step": self.batches_per_step,
                "steps_per_epoch": self.steps_per_epoch,
                "counters": {
                    "global_step": self.global_step,
                    "global_batch": self.global_batch,
                    "batches_since_step": self.batches_since_step,
                },
                "position": position,
                "stages": [
                    {
                        "id": _stage_label(stage, i),
                        "state": stage._lc.name,
                        "modifiers": [
                            modifier_id
                            for modifier_id, m in self._ids
                            if any(m is own for own in stage.modifiers)
                        ],
                    }
                    for i, stage in enumerate(self.stages)
                ],
                "modifiers": [
                    {
                        "id": modifier_id,
                        "type": type(m).__name__,
                        **self._traced_schedules[modifier_id],
                        "state": m._lc.name,
                        **_lifecycle_entry(m),
                    }
                    for modifier_id, m in self._ids
                ],
            }
        )

    def _restore(self, saved: Mapping[str, Any]) -> None:
        counters = saved["counters"]
        self.global_step = int(counters["global_step"])
        self.global_batch = int(counters["global_batch"])
        self.batches_since_step = int(counters["batches_since_step"])
        for stage, entry in zip(self.stages, saved["stages"], strict=True):
            states = type(stage).__compiled_stage__.states
            object.__setattr__(stage, "_lc", states[entry["state"]])
        for modifier_id, modifier in self._ids:
            entry = saved["modifiers"][modifier_id]
            states = type(modifier).__compiled_lifecycle__.states
            object.__setattr__(modifier, "_lc", states[entry["lifecycle"]])
            modifier.load_state_dict(entry["state"], self.state)

    def _add_optimizer_hooks(self, optimizer: Any) -> None:
        def before_step(*_: Any) -> None:
            # A step in a batch that does not complete the accumulation is a partial step
            # (a last, incomplete accumulation): the loop cannot say so through step().
            # (What optim_pre_step(partial=...) does, without the calls in between.)
            partial = self._lc.name in _ACCUMULATING
            self._emit(_PRE_STEP, "partial_step" if partial else "optim_pre_step", {})

        def after_step(*_: Any) -> None:
            self._emit(_POST_STEP, "optim_post_step", {})  # optim_post_step()

        hooked = hookable_optimizer(optimizer)
        self._hook_handles = [
            hooked.register_step_pre_hook(before_step),
            hooked.register_step_post_hook(after_step),
        ]

    def _remove_optimizer_hooks(self) -> None:
        for handle in self._hook_handles:
            handle.remove()
        self._hook_handles = []


#: Optimizer wrappers ``wrap_optimizer`` sees through: (module prefix, class name prefix,
#: the attribute holding the wrapped optimizer). accelerate's ``AcceleratedOptimizer`` (also
#: what a transformers ``Trainer`` steps) and Lightning's ``LightningOptimizer`` call the
#: torch optimizer's ``step`` only for a real step, so its hooks fire exactly then.
KNOWN_OPTIMIZER_WRAPPERS: Final = (
    ("accelerate.", "AcceleratedOptimizer", "optimizer"),
    ("lightning.", "Lightning", "_optimizer"),
    ("pytorch_lightning.", "Lightning", "_optimizer"),
)


def hookable_optimizer(optimizer: Any) -> Any:
    """The torch optimizer whose step hooks ``wrap_optimizer`` registers: ``optimizer``
    itself, or the one inside the wrappers modfsm knows (:data:`KNOWN_OPTIMIZER_WRAPPERS`).

    Raises:
        ConfigError: ``optimizer`` is neither a torch optimizer with step hooks nor a
            known wrapper of one.
    """
    import torch  # here: a session without wrap_optimizer never imports torch

    current, seen = optimizer, set()
    while id(current) not in seen:  # each known wrapper, however deep (a cycle stops it)
        seen.add(id(current))
        attribute = _wrapped_attribute(type(current))
        if attribute is None or not hasattr(current, attribute):
            break
        current = getattr(current, attribute)
    if isinstance(current, torch.optim.Optimizer) and hasattr(current, "_optimizer_step_pre_hooks"):
        return current
    raise ConfigError(
        f"Session.initialize: wrap_optimizer=True cannot hook {type(optimizer).__qualname__}: "
        "it is not a torch.optim.Optimizer with step hooks, nor a wrapper modfsm knows "
        "(accelerate's AcceleratedOptimizer, Lightning's LightningOptimizer). To fix, pass "
        "the torch optimizer it wraps, or drop wrap_optimizer and call optim_pre_step() and "
        "optim_post_step() around each step.",
        owner="Session",
        field="optimizer",
        value=type(optimizer).__qualname__,
    )


def _wrapped_attribute(cls: type) -> str | None:
    """The attribute holding the wrapped optimizer, if ``cls`` (or a base) is a known wrapper."""
    for module, name, attribute in KNOWN_OPTIMIZER_WRAPPERS:
        if any(
            k.__module__.startswith(module) and k.__name__.startswith(name) for k in cls.__mro__
        ):
            return attribute
    return None


def _schedule(modifier: Modifier) -> dict[str, Any]:
    """What the default guards of ``modifier`` read: ``start``, ``end`` (a number, None, or
    the ``repr`` of anything else), and whether its class keeps both default guards."""
    cls = type(modifier)
    return {
        "start": _traceable(modifier.start),
        "end": _traceable(modifier.end),
        "default_guards": cls.should_start is _SHOULD_START and cls.should_end is _SHOULD_END,
    }


def _traceable(value: Any) -> Any:
    if value is None or (type(value) in (int, float) and math.isfinite(value)):
        return value
    return repr(value)


_SHOULD_START: Final = Modifier.should_start
_SHOULD_END: Final = Modifier.should_end


Session.__grammar__ = _compile_grammar(Session)


def _stage_label(stage: StageModifiers, position: int) -> str:
    return stage.group if stage.group is not None else f"stage_{position}"


def _ids(stages: Sequence[StageModifiers]) -> list[tuple[str, Modifier]]:
    return [
        (f"{_stage_label(stage, position)}.{modifier.index}", modifier)
        for position, stage in enumerate(stages)
        for modifier in stage.modifiers
    ]


def _stages(recipe: Any, allow_experimental: bool) -> list[StageModifiers]:
    if recipe is None:
        return []
    if isinstance(recipe, list | tuple):
        items = list(recipe)
        if all(isinstance(item, StageModifiers) for item in items):
            return items
        if all(isinstance(item, Modifier) for item in items):
            return [StageModifiers(items, index=0, group=DEFAULT_STAGE)]
        raise ConfigTypeError(
            "Session.initialize: recipe= as a list must hold only StageModifiers or only "
            "modifiers. To fix, pass one kind, or a recipe file.",
            owner="Session",
            field="recipe",
            value=recipe,
        )
    loaded = recipe if isinstance(recipe, Recipe) else Recipe.load(recipe)
    return loaded.build(allow_experimental=allow_experimental)


def _agree(name: str, given: int | None, saved: int | None, problems: list[str]) -> int | None:
    if given is not None and given != saved:
        problems.append(
            f"{name}={given}, but the state was saved with {name}={saved} (pass {name}={saved} "
            "or leave it out)"
        )
    return saved


def _check_unique_labels(stages: Sequence[StageModifiers]) -> None:
    """Refuse stages whose labels (and so the per-instance ids) would collide."""
    where: dict[str, list[int]] = {}
    for position, stage in enumerate(stages):
        where.setdefault(_stage_label(stage, position), []).append(position)
    clashes = {label: positions for label, positions in where.items() if len(positions) > 1}
    if clashes:
        listed = "; ".join(
            f"{label!r} names stages {', '.join(map(str, positions))}"
            for label, positions in clashes.items()
        )
        raise ConfigError(
            f"Session.initialize: stage names must be unique, because modifier ids are "
            f"'<stage>.<index>' and resume restores by id, but {listed}. To fix, give each "
            "stage its own name (its group); an unnamed stage is called 'stage_<position>', "
            "so do not name another stage that way.",
            owner="Session",
            field="recipe",
            value=sorted(clashes),
        )


def _arguments(modifier: Modifier) -> dict[str, Any]:
    """A modifier's constructor arguments (its attrs init fields) as plain, comparable values."""
    return {
        field.alias or field.name: _plain(getattr(modifier, field.name))
        for field in attrs.fields(type(modifier))
        if field.init
    }


def _plain(value: Any) -> Any:
    """``value`` as a plain value that compares equal across processes.

    Scalars and strings stay; lists, tuples and string-keyed dicts are converted item by
    item; sets become sorted lists of reprs; anything else becomes its repr, or
    ``<module.name>`` when the repr shows a memory address (a default ``object`` repr).
    """
    if value is None or type(value) in (bool, int, str):
        return value
    if type(value) is float:
        return value if not math.isnan(value) else "nan"
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping) and all(type(key) is str for key in value):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, set | frozenset):
        return sorted(repr(item) for item in value)
    text = repr(value)
    if " at 0x" in text:
        name = getattr(value, "__qualname__", None) or type(value).__qualname__
        module = getattr(value, "__module__", None) or type(value).__module__
        return f"<{module}.{name}>"
    return text


def _identical(saved: Any, built: Any) -> bool:
    """``saved`` equals the plain value ``built``, with the same type at every level
    (``True`` is not ``1``, a tensor is not a number)."""
    if type(saved) is not type(built):
        return False
    if isinstance(built, list):
        return len(saved) == len(built) and all(map(_identical, saved, built))
    if isinstance(built, dict):
        return saved.keys() == built.keys() and all(_identical(saved[k], built[k]) for k in built)
    return bool(saved == built)


def _check_format(state_dict: object) -> None:
    problem: str | None
    if not isinstance(state_dict, Mapping):
        problem = f"expected a dict, got {type(state_dict).__name__}"
    elif state_dict.get("format") != STATE_DICT_FORMAT:
        problem = f"format is {state_dict.get('format')!r}, expected {STATE_DICT_FORMAT!r}"
    else:
        missing = _STATE_KEYS - set(state_dict)
        unexpected = set(state_dict) - _STATE_KEYS - {"format"}
        if missing:
            problem = f"missing {sorted(missing)}"
        elif unexpected:
            problem = f"unexpected {sorted(map(str, unexpected))}"
        elif state_dict["position"] not in _POSITIONS or state_dict["position"] in (
            "created",
            "finalized",
        ):
            problem = f"position {state_dict['position']!r} cannot be resumed"
        else:
            problem = _shape_problem(state_dict)
    if problem is not None:
        raise ConfigError(
            f"Session.load_state_dict: not a modfsm session state ({problem}). To fix, pass "
            "what Session.state_dict() returned.",
            owner="Session",
            field="state_dict",
            value=None,
        )


def _is_count(value: object, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _shape_problem(state_dict: Mapping[str, Any]) -> str | None:
    """What in ``state_dict`` is not shaped as :meth:`Session.state_dict` makes it, if any."""
    config, counters = state_dict["config"], state_dict["counters"]
    stages, modifiers = state_dict["stages"], state_dict["modifiers"]
    if not isinstance(config, Mapping) or set(config) != {"batches_per_step", "steps_per_epoch"}:
        return "config must hold batches_per_step and steps_per_epoch"
    if not _is_count(config["batches_per_step"], 1):
        return "config batches_per_step must be a whole number >= 1"
    if config["steps_per_epoch"] is not None and not _is_count(config["steps_per_epoch"], 1):
        return "config steps_per_epoch must be null or a whole number >= 1"
    if not isinstance(counters, Mapping) or set(counters) != set(_COUNTER_NAMES):
        return f"counters must hold exactly {list(_COUNTER_NAMES)}"
    if not all(_is_count(counters[name]) for name in _COUNTER_NAMES):
        return "every counter must be a whole number >= 0"
    if not isinstance(stages, list | tuple) or not all(
        isinstance(entry, Mapping)
        and set(entry) == {"name", "state"}
        and isinstance(entry["name"], str)
        and isinstance(entry["state"], str)
        for entry in stages
    ):
        return "stages must be a list of {name, state}"
    if not isinstance(modifiers, Mapping) or not all(
        isinstance(modifier_id, str)
        and isinstance(entry, Mapping)
        and set(entry) <= _MODIFIER_KEYS
        and isinstance(entry.get("type"), str)
        and isinstance(entry.get("lifecycle"), str)
        for modifier_id, entry in modifiers.items()
    ):
        return "modifiers must map ids to {type, arguments, lifecycle, state}"
    return None


_STATE_KEYS: Final = frozenset({"config", "counters", "position", "stages", "modifiers"})


def _lifecycle_entry(modifier: Modifier) -> dict[str, str]:
    """A traced modifier's ``lifecycle``, when it is not the default table (whose traces
    leave it out, as traces written before there were two)."""
    name = type(modifier).__compiled_lifecycle__.declaration.name
    return {} if name == Modifier.__compiled_lifecycle__.declaration.name else {"lifecycle": name}


_MODIFIER_KEYS: Final = frozenset({"type", "arguments", "lifecycle", "state"})
_COUNTER_NAMES: Final = ("global_step", "global_batch", "batches_since_step")


def _misfits(
    saved: Mapping[str, Any],
    stages: Sequence[StageModifiers],
    ids: Sequence[tuple[str, Modifier]],
    given: Mapping[str, Mapping[str, Any]],
) -> list[str]:
    """Every way the saved state does not fit the built recipe (empty if it fits)."""
    problems = []
    saved_stages = [entry["name"] for entry in saved["stages"]]
    built_stages = [_stage_label(stage, i) for i, stage in enumerate(stages)]
    if saved_stages != built_stages:
        problems.append(f"stages: saved {saved_stages}, recipe {built_stages}")
    saved_modifiers = dict(saved["modifiers"])
    built = {modifier_id: type(modifier).__name__ for modifier_id, modifier in ids}
    for modifier_id in sorted(set(saved_modifiers) - set(built)):
        problems.append(
            f"{modifier_id} ({saved_modifiers[modifier_id]['type']}) is saved but not in the recipe"
        )
    for modifier_id in sorted(set(built) - set(saved_modifiers)):
        problems.append(f"{modifier_id} ({built[modifier_id]}) is in the recipe but not saved")
    for modifier_id in sorted(set(built) & set(saved_modifiers)):
        entry = saved_modifiers[modifier_id]
        if entry["type"] != built[modifier_id]:
            problems.append(
                f"{modifier_id} was a {entry['type']}, the recipe has {built[modifier_id]}"
            )
            continue
        modifier = dict(ids)[modifier_id]
        if entry["lifecycle"] not in type(modifier).__compiled_lifecycle__.states:
            problems.append(f"{modifier_id}: unknown lifecycle state {entry['lifecycle']!r}")
        if "state" not in entry:
            problems.append(f"{modifier_id}: the modifier's own state is not saved")
        saved_arguments = entry.get("arguments")
        if not isinstance(saved_arguments, Mapping):
            problems.append(f"{modifier_id}: the state has no saved arguments to compare")
            continue
        built_arguments = given[modifier_id]
        for name in sorted(set(saved_arguments) | set(built_arguments)):
            if name not in built_arguments:
                problems.append(f"{modifier_id}.{name} is saved but is not an argument any more")
            elif name not in saved_arguments:
                problems.append(f"{modifier_id}.{name} is in the recipe but not saved")
            elif not _identical(saved_arguments[name], built_arguments[name]):
                problems.append(
                    f"{modifier_id}.{name}: saved {saved_arguments[name]!r}, "
                    f"recipe {built_arguments[name]!r}"
                )
    for entry in saved["stages"]:
        if entry["state"] not in _STAGE_MACHINE.states:
            problems.append(f"stage {entry['name']}: unknown state {entry['state']!r}")
    return problems
