"""``LifecycleSpy``: record the lifecycle calls a modifier receives and the hooks they run.

>>> from modfsm.engine.tools.testing import LifecycleSpy
>>> with LifecycleSpy(modifier) as spy:      # doctest: +SKIP
...     session.batch_start()
>>> spy.calls[-1].hooks                      # doctest: +SKIP
(HookCall(name='on_event', ...), HookCall(name='should_start', ..., result=False))

The spy moves the modifier into a subclass of its own class (same name, no new
fields, ``__slots__ = ()``) whose ``initialize``, ``update_event`` and
``finalize`` and whose declared hooks and guards record each call and then call
the class's own method: the modifier behaves exactly as before. ``detach()``
(or leaving the ``with`` block) moves it back.

What is recorded, per lifecycle call (:class:`LifecycleCall`): the call, its
event, the lifecycle state before and after, what it raised, and the hooks and
guards that ran *at top level* during it (:class:`HookCall`, with the event
each received and what a guard or gate returned). A hook or guard that a hook
calls itself (``self.on_update(...)`` inside ``on_start``) is the modifier's
own business and is not recorded; one called during a lifecycle call but
outside the engine's dispatch (from an overridden ``update_event``) is. Hook
calls outside any lifecycle call (from a torch hook, say) go to ``stray``.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any, Final

import attrs

from modfsm.engine.model.events import Event
from modfsm.engine.runtime.modifier import START_PROBE, Modifier, switch_class

__all__ = ["HookCall", "LifecycleCall", "LifecycleSpy"]

# id(modifier) -> its spy, while attached.
_SPIES: dict[int, LifecycleSpy] = {}
# original class -> its spying subclass.
_SPY_CLASSES: dict[type[Modifier], type[Modifier]] = {}
_NO_RESULT: Final = None


@attrs.frozen
class HookCall:
    """One hook or guard call.

    Attributes:
        name: the hook or guard.
        event: the event it received (None for gates, which take none).
        result: what a guard or gate returned (None for other hooks).
        raised: the name of the exception it raised, if it did.
    """

    name: str
    event: Event | None = None
    result: Any = None
    raised: str | None = None


@attrs.frozen
class LifecycleCall:
    """One ``initialize``, ``update_event`` or ``finalize`` call and what it ran.

    Attributes:
        call: ``"initialize"``, ``"update_event"`` or ``"finalize"``.
        event: the event of ``update_event``; for ``initialize`` the synthetic
            ``BATCH_START`` at step 0 its guard and hooks receive; None for ``finalize``.
        before: the lifecycle state before the call.
        after: the lifecycle state after it (also when it raised).
        hooks: the top-level hook and guard calls, in order.
        raised: what the call raised, or None.
    """

    call: str
    event: Event | None
    before: str
    after: str
    hooks: tuple[HookCall, ...]
    raised: BaseException | None = None


class LifecycleSpy:
    """Records a modifier's lifecycle calls and hook calls; see the module docstring.

    Attributes:
        modifier: the modifier spied on.
        calls: its lifecycle calls, in order.
        stray: hook and guard calls made outside any lifecycle call.
    """

    def __init__(self, modifier: Modifier) -> None:
        if id(modifier) in _SPIES:
            raise ValueError(f"{modifier.lifecycle_label} already has a spy; detach it first.")
        self.modifier = modifier
        self.calls: list[LifecycleCall] = []
        self.stray: list[HookCall] = []
        self._original = type(modifier)
        self._frame: list[HookCall] | None = None
        self._depth = 0
        _SPIES[id(modifier)] = self
        switch_class(modifier, _spy_class(self._original))

    @property
    def attached(self) -> bool:
        """True until :meth:`detach`."""
        return _SPIES.get(id(self.modifier)) is self

    def detach(self) -> None:
        """Move the modifier back to its own class; recording stops. Idempotent."""
        if self.attached:
            del _SPIES[id(self.modifier)]
            switch_class(self.modifier, self._original)

    def __enter__(self) -> LifecycleSpy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.detach()

    def hooks_seen(self) -> list[HookCall]:
        """Every recorded top-level hook and guard call, across all lifecycle calls, in order."""
        return [hook for call in self.calls for hook in call.hooks]

    # --- called by the spying subclass ----------------------------------------------------

    def _lifecycle(self, call: str, event: Event | None, run: Callable[[], Any]) -> Any:
        if self._frame is not None or self._depth:
            return run()  # re-entrant: part of the outer call
        frame: list[HookCall] = []
        self._frame = frame
        before = _state_name(self.modifier)
        raised: BaseException | None = None
        try:
            return run()
        except BaseException as error:
            raised = error
            raise
        finally:
            self._frame = None
            self.calls.append(
                LifecycleCall(call, event, before, _state_name(self.modifier), tuple(frame), raised)
            )

    def _hook(
        self, name: str, event: Event | None, keeps_result: bool, run: Callable[[], Any]
    ) -> Any:
        if self._depth:
            return run()  # called by another hook: the modifier's own business
        self._depth += 1
        record = self.stray if self._frame is None else self._frame
        try:
            result = run()
        except BaseException as error:
            record.append(HookCall(name, event, _NO_RESULT, type(error).__name__))
            raise
        finally:
            self._depth -= 1
        record.append(HookCall(name, event, result if keeps_result else _NO_RESULT))
        return result


def _state_name(modifier: Modifier) -> str:
    return str(modifier.lifecycle_state)


def _event_argument(args: tuple[Any, ...], kwargs: dict[str, Any], position: int) -> Any:
    return args[position] if len(args) > position else kwargs.get("event")


def _spy_class(cls: type[Modifier]) -> type[Modifier]:
    """The subclass of ``cls`` whose lifecycle calls, hooks and guards record themselves."""
    cached = _SPY_CLASSES.get(cls)
    if cached is not None:
        return cached
    declaration = cls.__compiled_lifecycle__.declaration
    namespace: dict[str, Any] = {
        "__slots__": (),
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
        "__doc__": cls.__doc__,
    }
    for call in dict.fromkeys(trigger.call for trigger in declaration.triggers):
        namespace[call] = _recording_call(call)
    for hook in declaration.hooks:  # hook(state, event, **kwargs) or gate(state, **kwargs)
        at = 1 if hook.takes_event else None
        namespace[hook.name] = _recording_hook(hook.name, at, keeps=hook.gate)
    for guard in declaration.guards:  # guard(event)
        namespace[guard] = _recording_hook(guard, 0, keeps=True)
    # type() builds it with the metaclass of cls (ABCMeta), as a class statement would.
    spying: type[Modifier] = type(cls.__name__, (cls,), namespace)
    _SPY_CLASSES[cls] = spying
    return spying


def _through(self: Modifier, name: str) -> Any:
    """The method ``name`` of the spied class (the spying subclass's base)."""
    return getattr(super(type(self), self), name)


def _recording_call(name: str) -> Callable[..., Any]:
    def call(self: Modifier, *args: Any, **kwargs: Any) -> Any:
        method = _through(self, name)
        spy = _SPIES.get(id(self))
        if spy is None:
            return method(*args, **kwargs)
        if name == "update_event":
            event = _event_argument(args, kwargs, 1)
        else:
            event = START_PROBE if name == "initialize" else None
        return spy._lifecycle(name, event, lambda: method(*args, **kwargs))

    call.__name__ = call.__qualname__ = name
    return call


def _recording_hook(name: str, event_at: int | None, *, keeps: bool) -> Callable[..., Any]:
    """A hook or guard that records itself; its event is argument ``event_at`` (None: none)."""

    def hook(self: Modifier, *args: Any, **kwargs: Any) -> Any:
        method = _through(self, name)
        spy = _SPIES.get(id(self))
        if spy is None:
            return method(*args, **kwargs)
        event = None if event_at is None else _event_argument(args, kwargs, event_at)
        return spy._hook(name, event, keeps, lambda: method(*args, **kwargs))

    hook.__name__ = hook.__qualname__ = name
    return hook
