"""What a state diagram shows, read from a declaration: states, edges and their labels.

A :class:`Drawing` is plain data; ``modfsm.engine.tools.transitions_adapter`` turns it into a
``transitions`` ``GraphMachine`` (mermaid or graphviz engine) and
:mod:`modfsm.engine.tools.diagrams.render` into text or pictures. Nothing here is
declared twice: every edge comes from a row, an ignore rule or a rejection
rule of the :class:`~modfsm.engine.kernel.declaration.Declaration`, in declaration order, so
the same declaration always gives the same drawing.

An edge label reads ``trigger [guard] / hook, hook``: ``[g]`` the row needs
guard ``g`` to hold, ``[!g]`` to fail; the hooks are the row's, in the order
they run. A name marked ``*`` is defined by the drawn modifier class rather
than inherited from :class:`~modfsm.engine.runtime.modifier.Modifier`. See ``docs/diagrams.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

import attrs

from modfsm.engine.kernel.declaration import Declaration

__all__ = ["REJECTED", "Drawing", "Edge", "EdgeKind", "draw_declaration", "row_label"]

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
    """

    name: str
    title: str
    states: tuple[str, ...]
    initial: str
    final: tuple[str, ...]
    edges: tuple[Edge, ...]


def _names(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def row_label(row: Mapping[str, Any], marked: frozenset[str] = frozenset()) -> str:
    """``trigger [guard] / hooks`` for a declared row; names in ``marked`` get a ``*``."""

    def shown(name: str) -> str:
        return f"{name}*" if name in marked else name

    guards = [shown(g) for g in _names(row.get("conditions"))]
    guards += [f"!{shown(g)}" for g in _names(row.get("unless"))]
    label = str(row["trigger"])
    if guards:
        label += f" [{' & '.join(guards)}]"
    hooks = _names(row.get("before"))
    if hooks:
        label += " / " + ", ".join(shown(h) for h in hooks)
    return label


def _row_edges(declaration: Declaration, marked: frozenset[str]) -> list[Edge]:
    edges = []
    for row in declaration.transitions:
        label = row_label(row, marked)
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


def draw_declaration(
    declaration: Declaration,
    *,
    title: str | None = None,
    self_loops: bool = True,
    illegal: bool = False,
    marked: Sequence[str] = (),
) -> Drawing:
    """The drawing of ``declaration``.

    Args:
        declaration: the declared machine.
        title: the diagram's title (default: the declaration's name).
        self_loops: draw the rows and ignored cells whose state stays.
        illegal: also draw every rejected cell, as an edge to :data:`REJECTED`
            labelled with its triggers and the id of the rule that rejects them
            (the rule's reason and fix are in the declaration and the specs).
        marked: guard and hook names to mark with ``*``.
    """
    if illegal and REJECTED in declaration.state_names():
        raise ValueError(
            f"declaration {declaration.name!r} has a state named {REJECTED!r}, the name of the "
            "pseudo-state illegal moves point to. To fix, draw it without illegal moves."
        )
    edges = _row_edges(declaration, frozenset(marked))
    leaving = {e.source for e in edges if e.kind == "move"}
    final = tuple(s for s in declaration.state_names() if s not in leaving)
    if not self_loops:
        edges = [e for e in edges if e.kind == "move"]
    states = declaration.state_names()
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
    )
