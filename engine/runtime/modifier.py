"""``ModifierInterface`` and ``Modifier``: the lifecycle users subclass.

A modifier is an attrs class. Subclass :class:`Modifier`, implement
``on_initialize`` (return ``True``), and override whichever of ``on_start``,
``on_update``, ``on_end``, ``on_event``, ``on_finalize`` you need::

    import attrs
    from modfsm.engine import Modifier

    @attrs.define
    class PrintModifier(Modifier):
        message: str = "hello"

        def on_initialize(self, state, **kwargs):
            return True

        def on_update(self, state, event, **kwargs):
            print(self.message, event.current_index)

The lifecycle itself is :data:`modfsm.engine.model.lifecycle.LIFECYCLE`, compiled once per
class when the class is defined. ``initialize``, ``update_event`` and
``finalize`` dispatch through the compiled table; a call the table rejects
raises :class:`~modfsm.engine.kernel.errors.IllegalTransitionError` and changes nothing.
"""

from __future__ import annotations

import abc
import functools
import logging
from collections.abc import Callable, Mapping
from math import inf, isfinite
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeVar

import attrs

from modfsm.engine.kernel.compiler import (
    IGNORE,
    CompiledMachine,
    CompiledState,
    Declaration,
    compile_machine,
    specialize,
)
from modfsm.engine.kernel.errors import ConfigError, ConfigTypeError, DeclarationError
from modfsm.engine.kernel.validate import (
    check_optional_int,
    check_optional_number,
    check_optional_str,
)
from modfsm.engine.model.events import Event, EventType, not_an_event
from modfsm.engine.model.lifecycle import (
    LIFECYCLE,
    LifecycleState,
    default_should_end,
    default_should_start,
)
from modfsm.engine.model.state import State
from modfsm.engine.runtime.hooks import HooksMixin

if TYPE_CHECKING:
    from modfsm.engine.runtime.hooks import Handle

__all__ = [
    "START_PROBE",
    "Modifier",
    "ModifierInterface",
    "handles",
    "switch_class",
]

START_PROBE = Event(EventType.BATCH_START, global_step=0)
"""The synthetic event ``initialize`` asks ``should_start`` about (step 0, as the reference)."""

_STATE_ATTR = "_lc"


class ModifierInterface(abc.ABC):
    """The contract every modifier (and every stage of modifiers) fulfils."""

    __slots__ = ()

    @property
    @abc.abstractmethod
    def initialized(self) -> bool:
        """True once ``initialize`` has completed."""

    @property
    @abc.abstractmethod
    def finalized(self) -> bool:
        """True once ``finalize`` has completed."""

    @abc.abstractmethod
    def initialize(self, state: State, **kwargs: Any) -> None:
        """Prepare to modify the run described by ``state``."""

    @abc.abstractmethod
    def finalize(self, state: State, **kwargs: Any) -> None:
        """Finish: apply the final result and release what ``initialize`` took."""

    @abc.abstractmethod
    def update_event(self, state: State, event: Event, **kwargs: Any) -> None:
        """React to one training-loop event."""


# Field validators. Each returns at once for the common valid values and leaves
# the message to the shared checks in modfsm.engine.kernel.validate.


def _check_index(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None or (type(value) is int and value >= 0):
        return
    check_optional_int(type(instance).__name__, attribute.name, value, minimum=0)


def _check_group(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None or type(value) is str:
        return
    check_optional_str(type(instance).__name__, attribute.name, value)


def _check_bound(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None or type(value) is int or (type(value) is float and isfinite(value)):
        return
    check_optional_number(type(instance).__name__, attribute.name, value)


def _check_update(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None or (type(value) in (int, float) and 0 <= value < inf):
        return
    check_optional_number(type(instance).__name__, attribute.name, value, minimum=0)


def _initial_state(instance: Modifier) -> CompiledState:
    return type(instance).__compiled_lifecycle__.initial


#: The base class's empty hooks and its side-effect-free guards: a class that keeps them
#: gets a lifecycle that does not call them (see ``Modifier.__compiled_lifecycle__``).
_EMPTY_HOOK_NAMES: Final = (
    "on_event",
    "on_start",
    "on_update",
    "on_end",
    "on_calibration_start",
    "on_sequential_epoch_end",
    "on_calibration_end",
)
_GUARD_NAMES: Final = ("should_start", "should_end")


def _compiled_in(cls: type[Any], name: str) -> bool:
    """Whether the class's lifecycle, compiled or declared, calls ``name`` (a hook or guard),
    or ``name`` is ``update_event`` (a class that overrides it has no ignored cells)."""
    if name == "update_event":
        return True
    compiled = getattr(cls, "__compiled_lifecycle__", None)
    declarations = (getattr(cls, "__lifecycle__", None), getattr(compiled, "declaration", None))
    for declaration in declarations:
        if isinstance(declaration, Declaration) and (
            name in declaration.guards or any(hook.name == name for hook in declaration.hooks)
        ):
            return True
    return False


class _LifecycleMeta(abc.ABCMeta):
    """Keeps each class's compiled lifecycle true to its hooks when one is assigned later.

    A class's lifecycle is compiled when the class is defined, leaving out the
    hooks it does not override and calling the class's own functions
    (:func:`_compile_for`). Assigning or deleting any hook or guard the lifecycle
    calls on the class afterwards (``mock.patch.object(MyModifier, "on_update",
    ...)``) recompiles, in place, the lifecycle of the class and of its
    subclasses, so existing instances call the new method.
    """

    def __setattr__(cls, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if _compiled_in(cls, name):
            _recompile(cls)

    def __delattr__(cls, name: str) -> None:
        super().__delattr__(name)
        if _compiled_in(cls, name):
            _recompile(cls)


@attrs.define(kw_only=True, eq=False)
class Modifier(ModifierInterface, HooksMixin, metaclass=_LifecycleMeta):
    """Base class of every modifier: a declared lifecycle plus the schedule fields.

    Register torch hooks with ``self.register_hook(...)``
    (:class:`~modfsm.engine.runtime.hooks.HooksMixin`):
    every hook registered that way is removed when the modifier is finalized, and
    those registered during an ``initialize`` call that does not complete are
    removed before that call returns or raises.

    Hooks run before the call's state change: inside a hook, ``initialized``,
    ``started``, ``ended`` and ``finalized`` still show the state the call
    started in (``self.started`` is False in the ``on_update`` of the event that
    opens the window); see ``specs/lifecycle.md``, deviation D5.

    Attributes:
        index: position within its stage (set by the stage).
        group: the stage or group it belongs to (set by the stage).
        start: the schedule index at which the window opens; ``None`` never opens
            it. ``start <= 0`` (``-1`` or ``0``, one-shot) opens it at
            ``initialize`` when ``end`` is None or ``end > 0``, since
            ``initialize`` asks ``should_start`` about step 0.
        end: the index at which it closes (``None``: never).
        update: the update interval, for modifiers that call ``event.should_update``.

    Class attributes:
        __lifecycle__: the declaration to compile (default :data:`LIFECYCLE`).
        __compiled_lifecycle__: the class's compiled lifecycle. It leaves out the
            calls to ``on_event``, ``on_start``, ``on_update`` and ``on_end`` where
            the class keeps this base class's empty methods, so an event that
            would only call those costs nothing (a stage skips such modifiers).
            Only classes with ``__slots__`` (``attrs.define``) are specialized
            so: instances of other classes may be given hooks of their own. A
            hook assigned to a class later (``mock.patch.object``) is seen.
    """

    __lifecycle__: ClassVar[Declaration] = LIFECYCLE
    __compiled_lifecycle__: ClassVar[CompiledMachine]

    index: int | None = attrs.field(default=None, validator=_check_index)
    group: str | None = attrs.field(default=None, validator=_check_group)
    start: float | None = attrs.field(default=None, validator=_check_bound)
    end: float | None = attrs.field(default=None, validator=_check_bound)
    update: float | None = attrs.field(default=None, validator=_check_update)
    _lc: CompiledState = attrs.field(
        init=False, repr=False, default=attrs.Factory(_initial_state, takes_self=True)
    )
    _hooks: set[Handle] | None = attrs.field(init=False, repr=False, eq=False, default=None)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.__compiled_lifecycle__ = _compile_for(cls)

    # --- read-only views of the lifecycle state --------------------------------------------

    @property
    def lifecycle_state(self) -> LifecycleState | str:
        """The current state: a :class:`LifecycleState` (a plain str for custom lifecycles)."""
        name = self._lc.name
        return _STATE_MEMBERS.get(name, name)

    @property
    def initialized(self) -> bool:
        """True once ``initialize`` has completed (and still after ``finalize``)."""
        return self._lc.flags["initialized"]

    @property
    def started(self) -> bool:
        """True once the window has opened (``on_start`` has run)."""
        return self._lc.flags["started"]

    @property
    def ended(self) -> bool:
        """True once the window has closed (``on_end`` has run)."""
        return self._lc.flags["ended"]

    @property
    def finalized(self) -> bool:
        """True once ``finalize`` has completed."""
        return self._lc.flags["finalized"]

    @property
    def lifecycle_label(self) -> str:
        """How errors name this modifier: class, group and index."""
        return f"{type(self).__name__}(group={self.group!r}, index={self.index!r})"

    # --- lifecycle calls (dispatched through the compiled table) ----------------------------

    def initialize(self, state: State, **kwargs: Any) -> None:
        """Run ``on_initialize``; if True, open the window when ``should_start`` holds at step 0.

        A call that does not complete (it raises, or ``on_initialize`` returns
        False) leaves the modifier in the state it was in, and removes the torch
        hooks registered through the modifier during the call before it returns
        or raises, so a retry registers them once.

        Raises:
            IllegalTransitionError: already initialized or finalized (nothing runs).
            HookReturnError: ``on_initialize`` returned a non-bool (state unchanged).
        """
        before = self._lc
        known = frozenset(self._hooks or ())
        completed = False
        try:
            before.calls["initialize"](self, state, START_PROBE, **kwargs)
            completed = self._lc is not before
        finally:
            if not completed and self._hooks:
                self.remove_hooks(self._hooks - known)

    def update_event(self, state: State, event: Event, **kwargs: Any) -> None:
        """Call ``on_event``, then open, update or close the window as the table says.

        Raises:
            IllegalTransitionError: not initialized, or already finalized (nothing runs).
        """
        try:
            cell = self._lc[event.type_]
        except (AttributeError, KeyError):
            raise not_an_event(self, event) from None
        if cell is IGNORE:  # it would do nothing: not even called
            return
        if kwargs:
            cell(self, state, event, **kwargs)
        else:  # the same call; a plain call is the cheaper one in CPython
            cell(self, state, event)

    def finalize(self, state: State, **kwargs: Any) -> None:
        """Run ``on_finalize``; if it returns True, the modifier is finalized.

        Raises:
            IllegalTransitionError: not initialized, or already finalized (nothing runs).
            HookReturnError: ``on_finalize`` returned a non-bool (state unchanged).
        """
        self._lc.calls["finalize"](self, state, None, **kwargs)

    # --- guards -----------------------------------------------------------------------------

    # Whether ``event`` lies in ``[start, end)`` (never when ``start`` is None), and
    # whether it is at or past ``end`` (never when ``end`` is None): the model's rules,
    # the same function objects (subclasses may override them).
    should_start = default_should_start
    should_end = default_should_end

    # --- hooks ------------------------------------------------------------------------------

    @abc.abstractmethod
    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        """Set up; return True to become initialized, False to stay uninitialized."""

    def on_finalize(self, state: State, **kwargs: Any) -> bool:
        """Tear down; return True to become finalized, False to stay finalizable."""
        return True

    def on_start(self, state: State, event: Event, **kwargs: Any) -> None:
        """Called once, when the window opens."""

    def on_update(self, state: State, event: Event, **kwargs: Any) -> None:
        """Called for every event inside the window (and with the opening/closing events).

        With the opening and closing events it runs before the state changes, so
        ``self.started`` (opening) or ``self.ended`` (closing) is still False.
        """

    def on_end(self, state: State, event: Event, **kwargs: Any) -> None:
        """Called once, when the window closes."""

    def on_event(self, state: State, event: Event, **kwargs: Any) -> None:
        """Called first for every event between ``initialize`` and ``finalize``."""

    # --- calibration hooks (called by CALIBRATION_LIFECYCLE only) ----------------------------

    def on_calibration_start(self, state: State, event: Event, **kwargs: Any) -> None:
        """Called on ``CALIBRATION_START``, which marks the modifier started (no ``on_start``).

        Only a class whose ``__lifecycle__`` is
        :data:`~modfsm.engine.model.calibration_lifecycle.CALIBRATION_LIFECYCLE` (the
        reference's lifecycle since 0.13) calls it; under the default lifecycle the
        calibration events are ordinary events (``on_update`` inside the window).
        """

    def on_sequential_epoch_end(self, state: State, event: Event, **kwargs: Any) -> None:
        """Called on ``SEQUENTIAL_EPOCH_END``, after each layer of a sequential pipeline
        (the pipeline passes that layer's ``modules`` as a keyword); never ``on_update``.
        ``CALIBRATION_LIFECYCLE`` only."""

    def on_calibration_end(self, state: State, event: Event, **kwargs: Any) -> None:
        """Called on ``CALIBRATION_END``, which marks the modifier ended (no ``on_end``).
        ``CALIBRATION_LIFECYCLE`` only."""

    # --- checkpoints (extension point) --------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The modifier's own state for a checkpoint (default: nothing).

        Override to save what the modifier computed during the run (masks, scales,
        counters). Return plain values and tensors only, so the checkpoint loads
        with ``torch.load(weights_only=True)``. The lifecycle state is saved by
        the session; do not include it.
        """
        return {}

    def load_state_dict(self, state_dict: Mapping[str, Any], state: State) -> None:
        """Restore what :meth:`state_dict` returned, when a session resumes.

        No lifecycle hook runs on resume: if the modifier attaches anything to the
        model in its current lifecycle state (torch hooks, masks), re-attach it
        here, using ``state`` (the resumed run's model and optimizer).

        Raises:
            ConfigError: the default implementation was given a non-empty state.
        """
        if state_dict:
            raise ConfigError(
                f"{type(self).__name__}.load_state_dict got {sorted(state_dict)}, but the class "
                "does not override load_state_dict. To fix, implement state_dict() and "
                "load_state_dict() together.",
                owner=type(self).__name__,
                field="state_dict",
                value=dict(state_dict),
            )

    def release_hooks(self, state: State, event: Event | None, **kwargs: Any) -> None:
        """Remove every torch hook registered through this modifier (run by ``finalize``)."""
        self.remove_hooks()


_STATE_MEMBERS: dict[str, LifecycleState] = {member.value: member for member in LifecycleState}


def _compile_for(cls: type[Any], into: CompiledMachine | None = None) -> CompiledMachine:
    """Compile ``cls.__lifecycle__`` for ``cls``; check every hook and guard is a method of it.

    The class gets its own variant of the compiled declaration (:func:`specialize`):
    one with ``__slots__`` leaves out the calls to the hooks it keeps as this base
    class's empty methods. ``into``: its current variant, rebuilt in place.
    """
    compiled = compile_machine(cls.__lifecycle__, state_attr=_STATE_ATTR)
    declaration = compiled.declaration
    for name in (*declaration.guards, *(hook.name for hook in declaration.hooks)):
        if not callable(getattr(cls, name, None)):
            raise DeclarationError(
                f"{cls.__name__}.{name} is not callable, but the lifecycle "
                f"{declaration.name!r} calls it. To fix, define {name} as a method.",
                declaration=declaration.name,
                where=name,
            )
    key_filters: dict[str, frozenset[Any]] = {}
    for hook in declaration.hooks:
        types = getattr(getattr(cls, hook.name), "__modfsm_handles__", None)
        if types is None:
            continue
        if hook.gate or not hook.takes_event:
            raise DeclarationError(
                f"{cls.__name__}.{hook.name} is decorated with @handles, but it is not "
                f"called with an event in the lifecycle {declaration.name!r}. To fix, "
                "decorate only event hooks (on_event, on_start, on_update, on_end).",
                declaration=declaration.name,
                where=hook.name,
            )
        key_filters[hook.name] = types
    if into is not None and into.declaration != declaration:
        into = None
    # The lifecycle's moves are logged where it has the reference's flags.
    observer = _log_move if {"started", "ended", "finalized"} <= set(declaration.flags) else None
    if cls.__dictoffset__:  # instances have a __dict__, so one may be given its own hook
        variant = specialize(compiled, noop_hooks=frozenset(), into=into, observer=observer)
    else:
        variant = specialize(
            compiled,
            noop_hooks=frozenset(n for n, f in _NOOP_HOOKS.items() if getattr(cls, n, None) is f),
            pure_guards=frozenset(n for n, f in _PURE_GUARDS.items() if getattr(cls, n, None) is f),
            key_filters=key_filters,
            into=into,
            owner=cls,  # no instance can hold a hook of its own: call the class's functions
            observer=observer,
        )
    if getattr(cls, "update_event", None) is not Modifier.update_event:
        # The class takes every event through its own update_event: a stage must call it.
        for table in variant.states.values():
            table.route = dict.fromkeys(table, _through_update_event)
    return variant


_LOG = logging.getLogger("modfsm")


def _log_move(obj: Any, source: CompiledState, dest: CompiledState, event: Event | None) -> None:
    """Observer of every modifier's moves (called only when its state changes): one INFO
    line when its window opens or closes, one WARNING when it is finalized without its
    scheduled window (``start`` set) ever having opened."""
    was, now = source.flags, dest.flags
    if now["finalized"]:
        if not was["finalized"] and not now["started"] and obj.start is not None:
            _LOG.warning(
                "%s: finalized, but its window never opened (start=%s, end=%s). To fix, "
                "check start/end against the steps the run took (and whether they are in "
                "epochs).",
                _who(obj),
                obj.start,
                obj.end,
            )
        return
    opens = now["started"] and not was["started"]
    closes = now["ended"] and not was["ended"]
    if not (opens or closes):
        return
    where = "" if event is None else f" at {_position(event)}"
    if opens:  # into a state already past its end (ended_unstarted -> ended): both at once
        _LOG.info("%s: window opens%s%s", _who(obj), " and closes" if now["ended"] else "", where)
    elif now["started"]:
        _LOG.info("%s: window closes%s", _who(obj), where)
    else:
        _LOG.info("%s: window's end passed before it opened%s", _who(obj), where)


def _who(obj: Any) -> str:
    """How the log names a modifier: its id in the session, and its class."""
    return f"modifier {obj.group}.{obj.index} ({type(obj).__name__})"


def _position(event: Event) -> str:
    """Where the run is, for the log: the step, and the epoch when schedules are in epochs."""
    if event.steps_per_epoch is None:
        return f"step {event.global_step}"
    return f"step {event.global_step} (epoch {event.current_index:g})"


def _through_update_event(obj: Any, state: State, event: Event, /, **kwargs: Any) -> None:
    """The route of every event, for a class that overrides ``update_event``: call it.
    What it returns, unless None, joins ``state.modifier_data`` (the session returns it)."""
    data = obj.update_event(state, event, **kwargs)
    if data is not None:
        state.modifier_data.append(data)


_Hook = TypeVar("_Hook", bound=Callable[..., Any])


def handles(*event_types: EventType) -> Callable[[_Hook], _Hook]:
    """Decorate an event hook (``on_event``, ``on_update``, ...) that acts on these types only.

    The hook runs for events of the given types and returns at once for any
    other, so it may leave out the type checks it would otherwise begin with;
    and the class's compiled lifecycle leaves its call out of the cells of
    the other types, so a stage does not call the modifier for them at all::

        @handles(EventType.OPTIM_POST_STEP)
        def on_update(self, state, event, **kwargs):
            self.apply_masks()

    Raises:
        ConfigTypeError: an argument is not an :class:`~modfsm.engine.model.events.EventType`,
            or there is none.
    """
    types = frozenset(event_types)
    if not types or not all(isinstance(t, EventType) for t in event_types):
        raise ConfigTypeError(
            f"handles({', '.join(map(repr, event_types))}): name one or more EventType "
            "members. To fix, write e.g. @handles(EventType.OPTIM_POST_STEP).",
            owner="handles",
            field="event_types",
            value=event_types,
        )

    def decorate(hook: _Hook) -> _Hook:
        @functools.wraps(hook)
        def filtered(self: Any, state: State, event: Event, **kwargs: Any) -> Any:
            if event.type_ in types:
                return hook(self, state, event, **kwargs)
            return None

        filtered.__modfsm_handles__ = types  # type: ignore[attr-defined]  # read at compile
        return filtered  # type: ignore[return-value]  # same call signature

    return decorate


def switch_class(modifier: Modifier, cls: type[Modifier]) -> None:
    """Make ``modifier`` an instance of ``cls`` in place, keeping its lifecycle state.

    Each class runs its own compiled variant of the lifecycle (see
    ``Modifier.__compiled_lifecycle__``); assigning ``__class__`` alone would
    leave the modifier on the old class's variant, which skips the hooks the old
    class left empty. ``cls`` must compile the same declaration.
    """
    states = cls.__compiled_lifecycle__.states
    current = modifier._lc
    if cls.__compiled_lifecycle__.declaration.name != current.machine or current.name not in states:
        raise ConfigTypeError(
            f"switch_class: {cls.__name__} does not run the lifecycle "
            f"{current.machine!r} that {modifier.lifecycle_label} is in. To fix, switch to a "
            "class with the same __lifecycle__.",
            owner=cls.__name__,
            field="__lifecycle__",
            value=current.machine,
        )
    object.__setattr__(modifier, "__class__", cls)
    object.__setattr__(modifier, _STATE_ATTR, states[current.name])


def _recompile(cls: type[Any]) -> None:
    """Recompile, in place, the lifecycle of ``cls`` and its subclasses (a hook changed)."""
    pending = [cls]
    while pending:
        klass = pending.pop()
        pending.extend(klass.__subclasses__())
        own = klass.__dict__.get("__compiled_lifecycle__")
        if klass is not Modifier and own is not None:
            type.__setattr__(klass, "__compiled_lifecycle__", _compile_for(klass, own))


_NOOP_HOOKS: Final = {name: getattr(Modifier, name) for name in _EMPTY_HOOK_NAMES}
_PURE_GUARDS: Final = {name: getattr(Modifier, name) for name in _GUARD_NAMES}
Modifier.__compiled_lifecycle__ = compile_machine(Modifier.__lifecycle__, state_attr=_STATE_ATTR)
