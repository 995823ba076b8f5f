"""``StageModifiers``: modifiers applied together, with a declared lifecycle of its own.

Theory of operation
-------------------
A stage owns an ordered list of modifiers. ``initialize`` initializes each one
that is not yet initialized, ``update_event`` forwards each event to all of them
in order, and ``finalize`` finalizes them and marks the stage applied. Once
applied, all three calls do nothing (as in the reference). An ``accelerator``
keyword argument with ``wait_for_everyone()`` is called after each modifier in
``initialize`` and ``finalize``, and passed on to the modifiers, as in the
reference.

The stage's own state is declared in :data:`modfsm.engine.model.stage_lifecycle.STAGE_LIFECYCLE`
and compiled like the modifier lifecycle::

    pending --initialize--> initialized --finalize--> finalizing --> applied

A stage built from modfsm.modifiers that are already initialized starts where they
are (``initialized``, or ``finalizing`` if some are finalized), not ``pending``.
``finalize`` runs two triggers: ``begin_finalize`` commits ``finalizing``
before any modifier is finalized, then ``finalize`` finalizes the rest and
commits ``applied``. So a stage whose finalization failed half-way *says so*:
it is ``finalizing``, refuses events, and a retry resumes where it stopped.

Failures (the reference leaves later modifiers untouched and the stage
half-applied, silently): a stage stops at the first modifier that raises or
declines (its gate hook returned False). A raised exception propagates with a
note listing which modifiers were done, which failed and which were not
attempted; a decline raises :class:`StageError` with the same account. The
stage stays in its state (``pending`` / ``finalizing``), and calling
``initialize`` / ``finalize`` again resumes with the modifiers not yet done.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, ClassVar, Final

import attrs

from modfsm.engine.kernel.compiler import (
    IGNORE,
    CompiledMachine,
    CompiledState,
    compile_machine,
    specialize,
)
from modfsm.engine.kernel.errors import ConfigError, ConfigTypeError, LifecycleError
from modfsm.engine.kernel.validate import check_optional_int, check_optional_str
from modfsm.engine.model.events import Event, not_an_event
from modfsm.engine.model.stage_lifecycle import STAGE_LIFECYCLE, StageState
from modfsm.engine.model.state import State
from modfsm.engine.runtime.modifier import Modifier, ModifierInterface

__all__ = ["STAGE_LIFECYCLE", "StageError", "StageModifiers", "StageState"]


_COMPILED: Final = compile_machine(STAGE_LIFECYCLE, state_attr="_lc")
_STATE_MEMBERS: Final = {member.value: member for member in StageState}


class StageError(LifecycleError, RuntimeError):
    """A stage stopped at a modifier that declined to initialize or finalize.

    Attributes:
        stage: the stage.
        action: ``"initialize"`` or ``"finalize"``.
        done: the modifiers this call (or an earlier one) completed.
        failed: the modifier that declined.
        not_attempted: the modifiers after it, left untouched.
    """

    def __init__(
        self,
        message: str,
        *,
        stage: StageModifiers,
        action: str,
        done: Sequence[Modifier],
        failed: Modifier,
        not_attempted: Sequence[Modifier],
    ) -> None:
        super().__init__(message)
        self.stage = stage
        self.action = action
        self.done = tuple(done)
        self.failed = failed
        self.not_attempted = tuple(not_attempted)


def _check_modifiers(instance: Any, attribute: attrs.Attribute[Any], value: list[Any]) -> None:
    seen: set[int] = set()
    for position, modifier in enumerate(value):
        if not isinstance(modifier, Modifier):
            raise ConfigTypeError(
                f"StageModifiers.modifiers[{position}] must be a Modifier, got {modifier!r} "
                f"({type(modifier).__name__}). To fix, pass modifier instances.",
                owner="StageModifiers",
                field="modifiers",
                value=modifier,
            )
        if id(modifier) in seen:
            raise ConfigError(
                f"StageModifiers.modifiers[{position}] is the same object as an earlier entry "
                f"({modifier.lifecycle_label}). To fix, build a separate instance for each entry.",
                owner="StageModifiers",
                field="modifiers",
                value=modifier,
            )
        seen.add(id(modifier))


def _done(modifier: Modifier, action: str) -> bool:
    return modifier.initialized if action == "initialize" else modifier.finalized


def _as_list(modifiers: Iterable[Modifier]) -> list[Modifier]:
    return list(modifiers)


def _check_index(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    check_optional_int("StageModifiers", attribute.name, value, minimum=0)


def _check_group(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    check_optional_str("StageModifiers", attribute.name, value)


def _initial_state(stage: StageModifiers) -> CompiledState:
    """Where a new stage starts: where its modifiers already are.

    ``applied`` if built with ``applied=True``; else, for a non-empty stage whose
    modifiers are all initialized, ``finalizing`` if some are already finalized
    and ``initialized`` if none is; else ``pending`` (the declared initial state).
    """
    states = type(stage).__compiled_stage__.states
    if stage._start_applied:
        return states["applied"]
    modifiers = stage.modifiers  # not validated yet: attrs validates after every default
    if modifiers and all(isinstance(m, Modifier) and m.initialized for m in modifiers):
        finalizing = any(modifier.finalized for modifier in modifiers)
        return states["finalizing" if finalizing else "initialized"]
    return states[STAGE_LIFECYCLE.initial]


def _compile_stage(cls: type[Any]) -> CompiledMachine:
    """The stage lifecycle for ``cls``: its cells call the class's own hook functions when
    no instance can hold hooks of its own (``__slots__``); computed once, with the class.
    A class that overrides ``update_event`` routes every event to it (``route``)."""
    variant = specialize(
        _COMPILED, noop_hooks=frozenset(), owner=None if cls.__dictoffset__ else cls
    )
    if cls.update_event is not _UPDATE_EVENT:
        for table in variant.states.values():
            table.route = dict.fromkeys(table, _through_update_event)
    return variant


def _through_update_event(stage: Any, state: State, event: Event, /, **kwargs: Any) -> None:
    """The route of every event, for a stage class that overrides ``update_event``."""
    stage.update_event(state, event, **kwargs)


@attrs.define(eq=False)
class StageModifiers(ModifierInterface):
    """An ordered group of modifiers initialized, updated and finalized together.

    Attributes:
        modifiers: the modifiers, in the order they run. The stage sets each one's
            ``index`` to its position and, if the stage has a ``group``, its ``group``.
        index: the stage's position in its recipe.
        group: the stage's name.
        modifier_barriers: call ``accelerator.wait_for_everyone()`` after each
            modifier in ``initialize``/``finalize`` when an ``accelerator`` is passed
            (the reference's behaviour). A session in lockstep across ranks turns it
            off: its stage-level agreement replaces the barriers, which would leave
            the other ranks blocked when one rank's modifier raises.

    A new stage starts where its modifiers are: ``initialized`` when every one of
    them is already initialized (``finalizing`` if some are also finalized), else
    ``pending``. Pass ``applied=True`` to build a stage that was already applied
    (it ignores every call).
    """

    modifiers: list[Modifier] = attrs.field(
        factory=list, converter=_as_list, validator=_check_modifiers
    )
    index: int | None = attrs.field(default=None, validator=_check_index)
    group: str | None = attrs.field(default=None, validator=_check_group)
    _start_applied: bool = attrs.field(default=False, alias="applied", repr=False)
    modifier_barriers: bool = attrs.field(default=True, kw_only=True, repr=False)
    _lc: CompiledState = attrs.field(
        init=False, repr=False, default=attrs.Factory(_initial_state, takes_self=True)
    )

    #: the stage lifecycle as this class runs it (:func:`_compile_stage`)
    __compiled_stage__: ClassVar[CompiledMachine]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.__compiled_stage__ = _compile_stage(cls)

    def __attrs_post_init__(self) -> None:
        for position, modifier in enumerate(self.modifiers):
            modifier.index = position
            if self.group is not None:
                modifier.group = self.group

    # --- views ------------------------------------------------------------------------------

    @property
    def stage_state(self) -> StageState:
        """The stage's own lifecycle state."""
        return _STATE_MEMBERS[self._lc.name]

    @property
    def applied(self) -> bool:
        """True once every modifier has been finalized through the stage (read-only)."""
        return self._lc.flags["applied"]

    @property
    def initialized(self) -> bool:
        """True if every modifier is initialized (as in the reference)."""
        return all(modifier.initialized for modifier in self.modifiers)

    @property
    def finalized(self) -> bool:
        """True if every modifier is finalized (as in the reference)."""
        return all(modifier.finalized for modifier in self.modifiers)

    @property
    def unique_id(self) -> str:
        """``group`` and ``index`` joined by an underscore (``"sparsity_stage_0"``)."""
        if self.group is None or self.index is None:
            raise ConfigError(
                f"{self.lifecycle_label} has no unique_id: it needs both a group and an "
                "index. To fix, build the stage with group=<name> and index=<position>.",
                owner="StageModifiers",
                field="group" if self.group is None else "index",
                value=None,
            )
        return f"{self.group}_{self.index}"

    @property
    def lifecycle_label(self) -> str:
        """How errors name this stage."""
        return f"StageModifiers(group={self.group!r}, index={self.index!r})"

    # --- lifecycle calls --------------------------------------------------------------------

    def initialize(self, state: State, **kwargs: Any) -> None:
        """Initialize every modifier not yet initialized, in order.

        Raises:
            StageError: a modifier declined (on_initialize returned False); the
                stage stays pending and a later call resumes from it.
            IllegalTransitionError: never for a stage (initialize is always legal).
        """
        self._lc.calls["initialize"](self, state, None, **kwargs)

    def update_event(self, state: State, event: Event, **kwargs: Any) -> None:
        """Forward ``event`` to every modifier, in order.

        Raises:
            IllegalTransitionError: the stage is pending or finalizing (nothing runs).
        """
        try:
            cell = self._lc[event.type_]
        except (AttributeError, KeyError):
            raise not_an_event(self, event) from None
        cell(self, state, event, **kwargs)

    def finalize(self, state: State, **kwargs: Any) -> None:
        """Finalize every modifier not yet finalized, in order, then mark the stage applied.

        Raises:
            StageError: a modifier declined (on_finalize returned False); the stage
                stays finalizing and a later call resumes from it.
            IllegalTransitionError: the stage is pending (nothing runs).
        """
        self._lc.calls["begin_finalize"](self, state, None, **kwargs)
        self._lc.calls["finalize"](self, state, None, **kwargs)

    # --- the stage's hooks (called by its compiled table) ---------------------------------------

    def initialize_modifiers(self, state: State, **kwargs: Any) -> bool:
        """Gate of ``initialize``: initialize the modifiers; True once all are initialized."""
        return self._apply("initialize", state, kwargs)

    def finalize_modifiers(self, state: State, **kwargs: Any) -> bool:
        """Gate of ``finalize``: finalize the modifiers; True once all are finalized."""
        return self._apply("finalize", state, kwargs)

    def deliver(self, state: State, event: Event, **kwargs: Any) -> None:
        """Hook of ``update``: send ``event`` to each modifier, in order:
        ``modifier.update_event(state, event, **kwargs)``. The one routine by which any
        event reaches a modifier (the stage lifecycle's declared hook).

        Each modifier's cell for the event is read from its current state as the
        modifier is reached (a hook of an earlier one may have changed it) and run
        directly; a cell that is :data:`~modfsm.engine.kernel.compiler.IGNORE` (it would do
        nothing: the call is declared ignored, or its class keeps every hook the cell
        calls empty) is skipped. A class that overrides ``update_event`` routes every
        event to it (its states' ``route``); a modifier whose table has no cell for
        the event gets the ``update_event`` call, which raises the error.
        Nothing else is skipped and nothing is cached: guards are always asked. An
        exception gets a note saying which modifiers the event was and was not
        delivered to.
        """
        kind = event.type_
        modifier = None
        try:
            for modifier in self.modifiers:
                cell = modifier._lc.route.get(kind)
                if cell is IGNORE:
                    continue
                if cell is None:  # not an event of its lifecycle: update_event says so
                    modifier.update_event(state, event, **kwargs)
                elif kwargs:
                    cell(modifier, state, event, **kwargs)
                else:  # the same call; a plain call is the cheaper one in CPython
                    cell(modifier, state, event)
        except Exception as error:
            position = next((i for i, m in enumerate(self.modifiers) if m is modifier), 0)
            error.add_note(self.forwarding_note(event, position))
            raise

    # --- applying a lifecycle call to every modifier, and failure accounts ------------------

    def forwarding_note(self, event: Event, position: int) -> str:
        """The note for an exception that modifier ``position`` raised on ``event``."""
        return (
            f"while {self.lifecycle_label} forwarded {event.type_.name} at step "
            f"{event.global_step}: {self._account(position, 'delivered to', 'not delivered to')}"
        )

    def _apply(self, action: str, state: State, kwargs: dict[str, Any]) -> bool:
        """Run ``action`` ("initialize"/"finalize") on each modifier not yet done, in order."""
        accelerator = kwargs.get("accelerator") if self.modifier_barriers else None
        for position, modifier in enumerate(self.modifiers):
            if not _done(modifier, action):
                self._run(action, position, getattr(modifier, action), state, kwargs)
                if not _done(modifier, action):
                    raise self._declined(action, position)
            if accelerator is not None:
                accelerator.wait_for_everyone()
        state.loggers.system.info(tag="stage", string=f"Modifiers {action}d")
        return True

    def _run(self, action: str, position: int, call: Any, state: State, kwargs: Any) -> None:
        try:
            call(state, **kwargs)
        except Exception as error:
            error.add_note(
                f"while {self.lifecycle_label} ran {action} on its modifiers: "
                f"{self._account(position)}. The stage stays "
                f"{self.stage_state.value!r}; calling {action} again resumes from "
                f"{self.modifiers[position].lifecycle_label}."
            )
            raise

    def _account(
        self, position: int, done_word: str = "done", rest_word: str = "not attempted"
    ) -> str:
        names = [modifier.lifecycle_label for modifier in self.modifiers]
        done = ", ".join(names[:position]) or "none"
        rest = ", ".join(names[position + 1 :]) or "none"
        return f"{done_word}: {done}; failed: {names[position]}; {rest_word}: {rest}"

    def _declined(self, action: str, position: int) -> StageError:
        modifier = self.modifiers[position]
        hook = "on_initialize" if action == "initialize" else "on_finalize"
        return StageError(
            f"{self.lifecycle_label} stopped: {modifier.lifecycle_label}.{hook} returned "
            f"False, so it is not {action}d ({self._account(position)}). The stage "
            f"stays {self.stage_state.value!r}. To fix, make {hook} return True once it "
            f"can, then call {action} again: it resumes from that modifier.",
            stage=self,
            action=action,
            done=self.modifiers[:position],
            failed=modifier,
            not_attempted=self.modifiers[position + 1 :],
        )


_UPDATE_EVENT: Final = StageModifiers.update_event
StageModifiers.__compiled_stage__ = _compile_stage(StageModifiers)
