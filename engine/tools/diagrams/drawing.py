"""What a state diagram shows, read from a declaration: states, edges and their labels.

A :class:`Drawing` is plain data; ``modfsm.engine.tools.transitions_adapter`` turns it into a
``transitions`` ``GraphMachine`` (mermaid or graphviz engine) and
:mod:`modfsm.engine.tools.diagrams.render` into text or pictures. Nothing here is
declared twice: every edge comes from a row, an ignore rule or a rejection
rule of the :class:`~modfsm.engine.kernel.declaration.Declaration`, in declaration order, so
the same declaration always gives the same drawing.

An edge label reads ``trigger [guard] / hook, hook``: ``[g]`` the row needs
guard ``g`` to hold, ``[!g]`` to fail; the hooks are the row's, in the order
they run (left out with ``hooks=False``). A name marked ``*`` is defined by the
drawn modifier class rather than inherited from
:class:`~modfsm.engine.runtime.modifier.Modifier`; a hook decorated with
:func:`~modfsm.engine.runtime.modifier.handles` reads ``hook(type, ...)``, the
event types it acts on in that row's calls, and is left out of rows it never
acts on. A self-loop whose label stands on more than half of the states is
drawn once, as a note under the title, instead of on each of them. See
``docs/diagrams.md``.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Final, Literal

import attrs

from modfsm.engine.kernel.declaration import Declaration

__all__ = ["REJECTED", "Drawing", "Edge", "EdgeKind", "Handles", "draw_declaration", "row_label"]

REJECTED: Final = "rejected"
"""The pseudo-state that illegal moves point to (drawn only on request)."""

EdgeKind = Literal["move", "stay", "ignored", "rejected"]
"""``move``: to another state; ``stay``: a row whose state stays (it may run hooks);
``ignored``: a cell accepted with nothing run; ``rejected``: a cell that raises."""


@attrs.frozen
class Edge:
    """One drawn edge: ``source -> dest`` labelled ``label``, fired by ``trigger``."""

    source: str
    dest: str
    trigger: str
    label: str
    kind: EdgeKind


@attrs.frozen
class Drawing:
    """A diagram ready to render.

    Attributes:
        name: the declaration's name.
        title: the diagram's title.
        states: the states in declaration order, then :data:`REJECTED` if drawn.
        initial: the state new objects start in.
        final: the absorbing states (no edge leads out of them).
        edges: every edge, in declaration order.
        notes: lines shown under the title (the folded self-loops).
    """

    name: str
    title: str
    states: tuple[str, ...]
    initial: str
    final: tuple[str, ...]
    edges: tuple[Edge, ...]
    notes: tuple[str, ...] = ()


Handles = Mapping[str, frozenset[Hashable]]
"""Hook name -> the event keys it acts on (``@handles``); hooks not named act on every event."""


def _names(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _key_name(key: Hashable) -> str:
    return str(key.value) if isinstance(key, enum.Enum) else str(key)


def _acting(
    hook: str, trigger: str, handles: Handles, event_triggers: Mapping[Hashable, str]
) -> tuple[str, ...] | None:
    """The event types ``hook`` acts on in a ``trigger`` row: () for every one, None for none."""
    if hook not in handles:
        return ()
    keys = [key for key, fired in event_triggers.items() if fired == trigger]
    acting = [key for key in keys if key in handles[hook]] if keys else list(handles[hook])
    if not acting:
        return None  # the class's compiled cells leave the call out for these events
    if keys and len(acting) == len(keys):
        return ()
    return tuple(sorted(_key_name(key) for key in acting))


def row_label(
    row: Mapping[str, Any],
    marked: frozenset[str] = frozenset(),
    *,
    hooks: bool = True,
    handles: Handles | None = None,
    event_triggers: Mapping[Hashable, str] | None = None,
) -> str:
    """``trigger [guard] / hooks`` for a declared row; names in ``marked`` get a ``*``.

    Args:
        row: a declared row.
        marked: guard and hook names to mark with ``*``.
        hooks: show the row's hooks.
        handles: hook -> the event keys it acts on (see the module docstring).
        event_triggers: the declaration's event key -> trigger map (for ``handles``).
    """

    def shown(name: str) -> str:
        return f"{name}*" if name in marked else name

    guards = [shown(g) for g in _names(row.get("conditions"))]
    guards += [f"!{shown(g)}" for g in _names(row.get("unless"))]
    trigger = str(row["trigger"])
    label = trigger
    if guards:
        label += f" [{' & '.join(guards)}]"
    if not hooks:
        return label
    shown_hooks = []
    for hook in _names(row.get("before")):
        types = _acting(hook, trigger, handles or {}, event_triggers or {})
        if types is not None:
            shown_hooks.append(shown(hook) + (f"({', '.join(types)})" if types else ""))
    if shown_hooks:
        label += " / " + ", ".join(shown_hooks)
    return label


def _row_edges(
    declaration: Declaration, marked: frozenset[str], hooks: bool, handles: Handles
) -> list[Edge]:
    edges = []
    for row in declaration.transitions:
        label = row_label(
            row, marked, hooks=hooks, handles=handles, event_triggers=declaration.event_triggers
        )
        for source in _names(row["source"]):
            dest = row["dest"] if row["dest"] is not None else source
            kind: EdgeKind = "stay" if dest == source else "move"
            edges.append(Edge(source, dest, str(row["trigger"]), label, kind))
    for rule in declaration.ignored:
        label = f"{', '.join(rule.triggers)} (ignored)"
        edges.extend(Edge(s, s, rule.triggers[0], label, "ignored") for s in rule.states)
    return edges


def _rejected_edges(declaration: Declaration) -> list[Edge]:
    edges = []
    for state in declaration.state_names():
        for rule in declaration.rejections:
            if state in rule.states:
                label = f"{', '.join(rule.triggers)} ({rule.rule})"
                edges.append(Edge(state, REJECTED, rule.triggers[0], label, "rejected"))
    return edges


def _fold_loops(states: Sequence[str], edges: list[Edge]) -> tuple[list[Edge], tuple[str, ...]]:
    """The edges without the self-loops whose label stands on more than half the states,
    and one note naming those labels and where they stand."""
    where: dict[str, list[str]] = {}
    for edge in edges:
        if edge.kind in ("stay", "ignored"):
            where.setdefault(edge.label, []).append(edge.source)
    folded = {label: on for label, on in where.items() if 2 * len(on) > len(states)}
    if not folded:
        return edges, ()
    groups: dict[tuple[str, ...], list[str]] = {}
    for label, on in folded.items():
        groups.setdefault(tuple(on), []).append(label)
    notes = []
    for where_on, labels in groups.items():
        others = [s for s in states if s not in where_on]
        place = f"every state but {', '.join(others)}" if others else "every state"
        notes.append(f"{' | '.join(labels)}: state stays, in {place}")
    return [e for e in edges if e.kind == "move" or e.label not in folded], tuple(notes)


def draw_declaration(
    declaration: Declaration,
    *,
    title: str | None = None,
    self_loops: bool = True,
    illegal: bool = False,
    marked: Sequence[str] = (),
    hooks: bool = True,
    handles: Handles | None = None,
) -> Drawing:
    """The drawing of ``declaration``.

    Args:
        declaration: the declared machine.
        title: the diagram's title (default: the declaration's name).
        self_loops: draw the rows and ignored cells whose state stays (those that
            stand on more than half of the states as one note under the title).
        illegal: also draw every rejected cell, as an edge to :data:`REJECTED`
            labelled with its triggers and the id of the rule that rejects them
            (the rule's reason and fix are in the declaration and the specs).
        marked: guard and hook names to mark with ``*``.
        hooks: show the hooks each row runs.
        handles: hook -> the event keys it acts on (a modifier class's ``@handles``).
    """
    if illegal and REJECTED in declaration.state_names():
        raise ValueError(
            f"declaration {declaration.name!r} has a state named {REJECTED!r}, the name of the "
            "pseudo-state illegal moves point to. To fix, draw it without illegal moves."
        )
    edges = _row_edges(declaration, frozenset(marked), hooks, handles or {})
    leaving = {e.source for e in edges if e.kind == "move"}
    final = tuple(s for s in declaration.state_names() if s not in leaving)
    states = declaration.state_names()
    notes: tuple[str, ...] = ()
    if self_loops:
        edges, notes = _fold_loops(states, edges)
    else:
        edges = [e for e in edges if e.kind == "move"]
    if illegal:
        edges += _rejected_edges(declaration)
        states += (REJECTED,)
    return Drawing(
        name=declaration.name,
        title=title or declaration.name,
        states=states,
        initial=declaration.initial,
        final=final,
        edges=tuple(edges),
        notes=notes,
    )
