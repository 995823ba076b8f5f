"""The one module that imports ``transitions``: machines, diagrams and a slow driver.

Everything here is built from a :class:`~modfsm.engine.kernel.compiler.Declaration`; nothing
is declared twice. Three uses:

* :func:`build_machine` - a ``transitions.Machine`` (no auto transitions) with
  the declared states and rows, for inspection and markup;
* :func:`diagram_source` - a :class:`~modfsm.engine.tools.diagrams.drawing.Drawing` of a
  declaration as mermaid ``stateDiagram-v2`` or graphviz ``dot`` text, through
  ``transitions``' ``GraphMachine`` (the mermaid engine needs nothing installed;
  the graphviz engine needs the Python package ``graphviz``);
* :class:`TransitionsDriver` - runs an object's hooks through ``transitions``'
  dispatch. A call costs about 16-24x as much as the reference's flag logic,
  which the compiled table beats (``benchmarks/dispatch.py``; figures in
  ``benchmarks/README.md``). It exists to cross-check the compiler and to
  measure that cost; never use it at runtime.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Literal

from transitions import Machine
from transitions.core import EventData

from modfsm.engine.kernel.compiler import Declaration, describe
from modfsm.engine.kernel.errors import IllegalTransitionError

if TYPE_CHECKING:  # modfsm.engine.tools.diagrams imports this module
    from modfsm.engine.tools.diagrams.drawing import Drawing

__all__ = ["TransitionsDriver", "build_machine", "diagram_source", "machine_rows"]


def machine_rows(declaration: Declaration) -> list[dict[str, Any]]:
    """The declaration's rows as ``transitions`` expects them (lists for multi-valued keys).

    Ignored cells become internal rows with no callbacks, after the declared rows.
    """
    rows = []
    for row in declaration.transitions:
        rows.append(
            {key: list(value) if isinstance(value, tuple) else value for key, value in row.items()}
        )
    for rule in declaration.ignored:
        for trigger in rule.triggers:
            rows.append({"trigger": trigger, "source": list(rule.states), "dest": None})
    return rows


def build_machine(declaration: Declaration, model: Any = None) -> Machine:
    """A ``transitions.Machine`` with the declaration's states and rows.

    Guards and hooks stay names; they resolve on ``model`` only if a trigger fires.
    """
    return Machine(
        model=model if model is not None else Machine.self_literal,
        states=list(declaration.state_names()),
        initial=declaration.initial,
        transitions=machine_rows(declaration),
        auto_transitions=False,
        name=declaration.name,
    )


_DOT_SPACING: Final = {"nodesep": "0.25", "ranksep": "0.45"}
"""Room between nodes for the edge labels, in inches (graphviz only)."""

_JOIN: Final = {"mermaid": " | ", "graphviz": r"\n"}
"""How the labels of the edges between one pair of states are joined: a line each in dot."""

_STYLES: Final[dict[str, Any]] = {
    "node": {
        "default": {
            "style": "rounded,filled",
            "shape": "rectangle",
            "fillcolor": "white",
            "color": "black",
            "peripheries": "1",
        },
        "initial": {"fillcolor": "lightyellow", "peripheries": "2"},
        "final": {"fillcolor": "lightgrey"},
        "rejected": {"style": "dashed,rounded,filled", "fillcolor": "mistyrose", "color": "red"},
    },
    "edge": {
        "default": {"color": "black"},
        "rejected": {
            "color": "red",
            "fontcolor": "red",
            "style": "dashed",
            "tailport": "s",
            "weight": "5",
        },
    },
    "graph": {"default": {"color": "black", "fillcolor": "white", "style": "solid"}},
}
"""modfsm's styles for ``GraphMachine``: initial, final (absorbing) and rejected. A rejected
edge leaves its state from below and pulls its box right under it (a heavy weight), so that it
crosses no label (``tests/unit/test_diagrams_render.py`` checks this on dot's layout)."""


_WRAP_AT: Final = 24
"""In dot, a label longer than this many characters puts its guard and its hooks on lines of
their own (``[guard]``, ``/ hooks``), so that labels stay narrow."""


def _wrapped(label: str, engine: str) -> str:
    if engine == "mermaid" or len(label) <= _WRAP_AT:
        return label
    return label.replace(" [", r"\n[").replace(" / ", r"\n/ ")


def _rejected_nodes(drawing: Drawing) -> dict[str, str]:
    """Source state -> the name of its own pseudo-state for its rejected edges."""
    taken = set(drawing.states)
    nodes = {}
    for edge in drawing.edges:
        if edge.kind == "rejected" and edge.source not in nodes:
            name = f"{edge.dest}_{edge.source}"
            while name in taken:
                name += "_"
            taken.add(name)
            nodes[edge.source] = name
    return nodes


def diagram_source(drawing: Drawing, engine: Literal["mermaid", "graphviz"]) -> str:
    """The drawing as mermaid ``stateDiagram-v2`` or graphviz ``dot`` text.

    Built by ``transitions``' ``GraphMachine`` from the drawing's states and
    edges. The edges between one pair of states become one labelled edge, their
    labels joined by `` | `` in mermaid and one per line in ``dot`` (where a long
    label puts its ``[guard]`` and its ``/ hooks`` on lines of their own); an edge whose
    state stays is a reflexive row, so ``transitions`` adds no ``[internal]``
    marks. The rejected edges of each state point to a pseudo-state of its own,
    named ``<rejected>_<state>`` and labelled like the drawing's rejected state,
    so that no two of their labels meet. Node styles: ``initial``, ``final``
    (absorbing) and ``rejected``; rejected edges are dashed in ``dot``. The
    drawing's notes follow the title (``; `` in mermaid, a line each in ``dot``).
    Two fixes to the mermaid text: the title becomes mermaid front matter
    (``title: "..."``, which ``transitions`` writes as a bare line mermaid
    ignores), and trailing spaces are removed. The text depends only on the
    drawing: the same drawing gives the same bytes.

    Raises:
        ModuleNotFoundError: ``engine="graphviz"`` and the Python package
            ``graphviz`` is not installed (``transitions`` would fall back to mermaid).
    """
    if engine == "graphviz" and importlib.util.find_spec("graphviz") is None:
        raise ModuleNotFoundError(
            "the graphviz engine needs the Python package graphviz", name="graphviz"
        )
    from transitions.extensions import GraphMachine  # loads markup and nesting: on first use

    rejected = _rejected_nodes(drawing)
    pseudo = {e.dest for e in drawing.edges if e.kind == "rejected"}
    states = [s for s in drawing.states if s not in pseudo] + list(rejected.values())
    merged: dict[tuple[str, str], list[str]] = {}
    for edge in drawing.edges:
        dest = rejected[edge.source] if edge.kind == "rejected" else edge.dest
        merged.setdefault((edge.source, dest), []).append(_wrapped(edge.label, engine))
    title = "; " if engine == "mermaid" else r"\n"
    machine = GraphMachine(
        states=states,
        initial=drawing.initial,
        transitions=[
            {"trigger": "draw", "source": source, "dest": dest, "label": _JOIN[engine].join(labels)}
            for (source, dest), labels in merged.items()
        ],
        auto_transitions=False,
        graph_engine=engine,
        title=title.join((drawing.title, *drawing.notes)),
        name=drawing.name,
    )
    # Instance attributes, read when the graph is drawn; the spacing only for graphviz
    # (mermaid would print it as statements it does not know).
    machine.style_attributes = _STYLES
    machine.machine_attributes = {
        "directed": "true",
        "strict": "false",
        "rankdir": "TB",
        **(_DOT_SPACING if engine == "graphviz" else {}),
    }
    # Both engines' Graph classes keep custom_styles; BaseGraph's stub does not declare it.
    graph: Any = machine.model_graphs[id(machine)]
    graph.reset_styling()
    for state in drawing.states:
        if state == drawing.initial:
            graph.set_node_style(state, "initial")
        elif state in drawing.final:
            graph.set_node_style(state, "final")
    for source, node in rejected.items():
        graph.set_node_style(node, "rejected")
        graph.custom_styles["edge"][source][node] = "rejected"
    text: str = machine.get_graph().source
    # transitions labels a node with its name: the pseudo-states read as the rejected state.
    for node in rejected.values():
        (dest,) = pseudo
        if engine == "mermaid":
            text = text.replace(f'state "{node}" as {node}\n', f'state "{dest}" as {node}\n')
        else:
            text = text.replace(f'\t{node} [label="{node}\\l"', f'\t{node} [label="{dest}\\l"')
    if engine == "mermaid":
        lines = text.split("\n")
        if lines[:1] == ["---"] and lines[2:3] == ["---"]:
            lines[1] = f"title: {json.dumps(title.join((drawing.title, *drawing.notes)))}"
        text = "\n".join(line.rstrip() for line in lines)
    return text if text.endswith("\n") else text + "\n"


class TransitionsDriver:
    """Fire a declaration's triggers on ``obj`` through ``transitions``' own dispatch.

    The prelude hooks run as ``prepare_event``; a gate prelude that returns False
    makes every row's extra ``gate`` condition fail, so nothing moves.
    ``transitions`` evaluates conditions row by row, so a guard shared by two rows
    would run twice when the first row fails; the driver remembers each guard's
    result for the duration of one call, which is the declared semantics (and the
    reference's). The current state is ``driver.state`` (kept by ``transitions``);
    ``obj``'s own state is not touched.
    """

    state: str

    def __init__(self, declaration: Declaration, obj: Any) -> None:
        self.declaration = declaration
        self.obj = obj
        self._gate_open = True
        self._guard_results: dict[str, bool] = {}
        self._preludes = {t.name: t.prelude for t in declaration.triggers}
        self._ignored = {
            (state, trigger)
            for rule in declaration.ignored
            for state in rule.states
            for trigger in rule.triggers
        }
        self._gates = {h.name for h in declaration.hooks if h.gate}
        rows = []
        for row in machine_rows(declaration):
            trigger = row["trigger"]
            converted: dict[str, Any] = {
                "trigger": trigger,
                "source": row["source"],
                "dest": row["dest"],
            }
            conditions = [self._guard(name, True) for name in _listed(row.get("conditions"))]
            unless = [self._guard(name, False) for name in _listed(row.get("unless"))]
            if self._preludes[trigger] in self._gates:
                conditions.insert(0, self._gate_condition)
            converted["conditions"] = conditions + unless
            converted["before"] = [self._hook(name) for name in _listed(row.get("before"))]
            rows.append(converted)
        self.machine = Machine(
            model=self,
            states=list(declaration.state_names()),
            initial=declaration.initial,
            transitions=rows,
            auto_transitions=False,
            send_event=True,
            prepare_event=[self._prelude],
            name=declaration.name,
        )

    def fire(self, trigger: str, state: Any, event: Any, kwargs: dict[str, Any]) -> None:
        """Fire ``trigger``; one invalid in the current state raises IllegalTransitionError."""
        if trigger not in self.machine.get_triggers(self.state):
            raise IllegalTransitionError(
                f"{trigger} is not allowed on {describe(self.obj)} in {self.state!r} "
                "(transitions dispatch)",
                modifier=self.obj,
                state=self.state,
                trigger=trigger,
                rule="?",
                allowed=(),
            )
        if (self.state, trigger) in self._ignored:
            return
        self._guard_results.clear()
        self.machine.events[trigger].trigger(self, state, event, kwargs)

    def _prelude(self, data: EventData) -> None:
        name = self._preludes[data.event.name]
        self._gate_open = True
        if name is None:
            return
        state, event, kwargs = data.args
        hook = getattr(self.obj, name)
        if name not in self._gates:
            hook(state, event, **kwargs)
            return
        result = hook(state=state, **kwargs)
        if result is not True and result is not False:
            raise TypeError(f"{name} returned {result!r}, expected a bool")
        self._gate_open = result

    def _gate_condition(self, _: EventData) -> bool:
        return self._gate_open

    def _guard(self, name: str, target: bool) -> Callable[[EventData], bool]:
        def check(data: EventData) -> bool:
            if name not in self._guard_results:
                _, event, _ = data.args
                self._guard_results[name] = bool(getattr(self.obj, name)(event))
            return self._guard_results[name] is target

        return check

    def _hook(self, name: str) -> Callable[[EventData], None]:
        def call(data: EventData) -> None:
            state, event, kwargs = data.args
            getattr(self.obj, name)(state, event, **kwargs)

        return call


def _listed(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)
