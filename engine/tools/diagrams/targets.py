"""Diagram targets: the declared machines by name, and modifier classes by class name.

``lifecycle``, ``calibration``, ``stage`` and ``session`` name the declared machines
(the names ``modfsm verify`` uses); any other name is looked up as a modifier class
through :class:`~modfsm.engine.config.factory.ModifierFactory` (registered, entry-point and
experimental classes included), and drawn with its own lifecycle (``__lifecycle__``), its
guards and hooks that it defines itself marked ``*`` and its ``@handles`` hooks with the
event types they act on.

Hooks are shown on the edges of the modifier lifecycles and the stage lifecycle;
the session's are its own bookkeeping (``absorb``, ``send``), so its diagram
leaves them out unless ``hooks=True`` (:data:`HOOKS_SHOWN`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Final

from modfsm.engine.config.factory import ModifierFactory, UnknownModifierError
from modfsm.engine.kernel.declaration import Declaration
from modfsm.engine.kernel.errors import LifecycleError
from modfsm.engine.model.machines import DECLARED_MACHINES
from modfsm.engine.runtime.modifier import Modifier
from modfsm.engine.tools.diagrams.drawing import Drawing, draw_declaration
from modfsm.engine.tools.diagrams.errors import DiagramError, UnknownTargetError

__all__ = [
    "HOOKS_SHOWN",
    "MACHINE_TARGETS",
    "TITLES",
    "draw",
    "draw_modifier",
    "handled",
    "overridden",
]

MACHINE_TARGETS: Final[Mapping[str, Declaration]] = DECLARED_MACHINES
"""Machine target name -> its declaration (the registry of declared machines)."""

TITLES: Final[Mapping[str, str]] = {
    "lifecycle": "modfsm modifier lifecycle",
    "calibration": "modfsm modifier lifecycle with calibration events (llm-compressor 0.13+)",
    "stage": "modfsm stage lifecycle",
    "session": "modfsm session step grammar",
}
"""Machine target name -> the title of its diagram."""

HOOKS_SHOWN: Final[Mapping[str, bool]] = {
    "lifecycle": True,
    "calibration": True,
    "stage": True,
    "session": False,
}
"""Machine target name -> whether its diagram shows hooks unless told (modifier classes: yes)."""


def overridden(modifier_class: type[Modifier]) -> tuple[str, ...]:
    """The guards and hooks of the class's lifecycle that ``Modifier`` does not define for it.

    In declaration order: guards, then hooks. A name counts when the class, or a
    base of its own (not ``Modifier`` or its bases), defines it.
    """
    declaration = modifier_class.__lifecycle__
    names = (*declaration.guards, *(hook.name for hook in declaration.hooks))
    inherited = set(Modifier.__mro__)
    return tuple(
        name
        for name in names
        if next((k for k in modifier_class.__mro__ if name in vars(k)), Modifier) not in inherited
    )


def handled(modifier_class: type[Modifier]) -> dict[str, frozenset[Hashable]]:
    """Hook name -> the event types it acts on, for the class's ``@handles`` hooks."""
    found: dict[str, frozenset[Hashable]] = {}
    for hook in modifier_class.__lifecycle__.hooks:
        types = getattr(getattr(modifier_class, hook.name, None), "__modfsm_handles__", None)
        if types is not None:
            found[hook.name] = frozenset(types)
    return found


def draw_modifier(
    modifier_class: type[Modifier],
    *,
    self_loops: bool = True,
    illegal: bool = False,
    hooks: bool | None = None,
) -> Drawing:
    """The lifecycle of ``modifier_class``: its own guards and hooks marked ``*``, its
    ``@handles`` hooks as ``hook(type, ...)`` on the edges where they act."""
    own = overridden(modifier_class)
    name = modifier_class.__name__
    title = f"{name} lifecycle; * = defined by {name}: {', '.join(own) or 'none'}"
    handles = handled(modifier_class)
    if handles and hooks is not False:
        title += "; hook(types) = acts on those events only (@handles)"
    return draw_declaration(
        modifier_class.__lifecycle__,
        title=title,
        self_loops=self_loops,
        illegal=illegal,
        marked=own,
        hooks=hooks is not False,
        handles=handles,
    )


def draw(
    target: str, *, self_loops: bool = True, illegal: bool = False, hooks: bool | None = None
) -> Drawing:
    """The drawing of a target: a machine name or a modifier class name.

    ``hooks``: show the hooks each edge runs (None: the target's default,
    :data:`HOOKS_SHOWN`; modifier classes show them).

    Raises:
        UnknownTargetError: no machine and no known modifier class has that name;
            the message lists both.
        DiagramError: the modifier class could not be loaded (its module failed
            to import, or the name is not a modifier class).
    """
    if target in MACHINE_TARGETS:
        return draw_declaration(
            MACHINE_TARGETS[target],
            title=TITLES[target],
            self_loops=self_loops,
            illegal=illegal,
            hooks=HOOKS_SHOWN[target] if hooks is None else hooks,
        )
    try:
        modifier_class = ModifierFactory.lookup(target, True, True)
    except UnknownModifierError as error:
        known = ModifierFactory.known()
        modifiers = tuple(sorted({name for names in known.values() for name in names}))
        machines = tuple(MACHINE_TARGETS)
        guess = f"Did you mean {', '.join(error.suggestions)}? " if error.suggestions else ""
        raise UnknownTargetError(
            f"unknown diagram target {target!r}. {guess}Targets: the machines "
            f"{', '.join(machines)}; a modifier class ({', '.join(modifiers) or 'none known'}); "
            "or a recipe file (.yaml). To fix, pass one of those.",
            target=target,
            machines=machines,
            modifiers=modifiers,
        ) from None
    except LifecycleError as error:  # the module failed to import, or not a modifier class
        raise DiagramError(f"cannot draw {target!r}: {error}") from error
    return draw_modifier(modifier_class, self_loops=self_loops, illegal=illegal, hooks=hooks)
