"""What a declared state machine is made of: states, hooks, triggers, rows, rules.

A :class:`Declaration` is plain, frozen data. :func:`modfsm.engine.kernel.compiler.compile_machine`
validates it and compiles it into dispatch tables; ``modfsm.engine.tools.transitions_adapter``
builds a ``transitions.Machine`` from the same value. The semantics of a
call (prelude, guard, hooks, commit) are in :mod:`modfsm.engine.kernel.compiler`. Everything
here is re-exported by :mod:`modfsm.engine.kernel.compiler`.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any, Final

import attrs

__all__ = [
    "SUPPORTED_ROW_KEYS",
    "Declaration",
    "HookSpec",
    "Ignored",
    "Rejection",
    "StateSpec",
    "TriggerSpec",
]

SUPPORTED_ROW_KEYS: Final = frozenset(
    {"trigger", "source", "dest", "conditions", "unless", "before"}
)
"""The keys a transition row may use (a subset of ``transitions``' row format)."""


@attrs.frozen
class StateSpec:
    """A declared state and the values of the declaration's flags in it."""

    name: str
    flags: Mapping[str, bool]
    doc: str = ""


@attrs.frozen
class HookSpec:
    """A hook the machine may call on its object.

    Attributes:
        name: the method name on the object.
        takes_event: called as ``hook(state, event, **kwargs)`` if True, else
            ``hook(state, **kwargs)``; a gate is called as ``hook(state=state, **kwargs)``,
            ``state`` as a keyword (as the reference calls ``on_initialize`` and
            ``on_finalize``), so ``def on_initialize(self, **kwargs)`` works.
        gate: the hook's bool result decides whether the call proceeds; only
            allowed as a trigger prelude.
    """

    name: str
    takes_event: bool = True
    gate: bool = False


@attrs.frozen
class TriggerSpec:
    """A trigger: what fires it, and the hook that runs first in every legal cell.

    Attributes:
        name: the trigger's name (a ``transitions`` trigger).
        call: how users fire it, for messages (``"initialize"``, ``"update_event"``).
        prelude: the hook called before guards, or ``None``.
        doc: one line for the specification tables.
    """

    name: str
    call: str
    prelude: str | None = None
    doc: str = ""


@attrs.frozen
class Rejection:
    """A rule that forbids ``triggers`` in ``states``; the call raises and changes nothing."""

    rule: str
    states: tuple[str, ...]
    triggers: tuple[str, ...]
    reason: str
    fix: str


@attrs.frozen
class Ignored:
    """Cells where ``triggers`` are accepted in ``states`` and do nothing at all.

    No prelude, guard or hook runs and the state stays; used for absorbing states
    that tolerate further calls (an applied stage, as in the reference).
    """

    states: tuple[str, ...]
    triggers: tuple[str, ...]
    reason: str


@attrs.frozen
class Declaration:
    """A complete machine declaration. :mod:`modfsm.engine.kernel.compiler` gives the semantics.

    Attributes:
        name: unique name (also used to restore pickled state references).
        flags: the boolean flags every state defines.
        states: the states, in display order.
        initial: the state new objects start in.
        guards: guard method names, each called as ``guard(event)``.
        hooks: the hooks, with their calling conventions.
        triggers: the triggers, with their preludes.
        event_triggers: event key (e.g. an ``EventType`` member) -> trigger name;
            keys that are enum members must route every member of their enum.
        transitions: rows in ``transitions``' dict format (see :data:`SUPPORTED_ROW_KEYS`).
        rejections: the rules that reject a (state, trigger) outright.
        ignored: the (state, trigger) cells that accept a call and do nothing.

    Every (state, trigger) cell is covered by exactly one of: rows, a rejection,
    an ignore rule.
    """

    name: str
    flags: tuple[str, ...]
    states: tuple[StateSpec, ...]
    initial: str
    guards: tuple[str, ...]
    hooks: tuple[HookSpec, ...]
    triggers: tuple[TriggerSpec, ...]
    event_triggers: Mapping[Hashable, str]
    transitions: tuple[Mapping[str, Any], ...]
    rejections: tuple[Rejection, ...]
    ignored: tuple[Ignored, ...] = ()

    def state_names(self) -> tuple[str, ...]:
        """The state names in declaration order."""
        return tuple(s.name for s in self.states)

    def trigger_names(self) -> tuple[str, ...]:
        """The trigger names in declaration order."""
        return tuple(t.name for t in self.triggers)
