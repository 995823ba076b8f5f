"""State diagrams drawn from the declared machines, and recipe timelines.

``draw(target)`` gives a :class:`Drawing` of a declared machine (``lifecycle``,
``stage``, ``session``) or of a modifier class's lifecycle; ``render(drawing,
format)`` turns it into mermaid, dot, SVG or PNG bytes through ``transitions``'
``GraphMachine`` and graphviz. ``draw_timeline(recipe, trace=...)`` draws a
recipe's modifier windows (and, from a trace, the states each modifier was in)
as a PNG with matplotlib. ``write_docs`` and ``stale_docs`` keep the committed
pictures under ``docs/diagrams/`` current (``python -m modfsm.engine.tools.diagrams``).
Semantics of the pictures: ``docs/diagrams.md``.

>>> from modfsm.engine.tools.diagrams import draw, render
>>> text = render(draw("stage"), "mermaid").decode()
>>> print(text.splitlines()[1])
title: "modfsm stage lifecycle"
>>> "pending --> initialized: initialize" in text
True
"""

from modfsm.engine.tools.diagrams.docs import (
    DOC_FORMATS,
    DOC_TARGETS,
    doc_files,
    stale_docs,
    write_docs,
)
from modfsm.engine.tools.diagrams.drawing import (
    REJECTED,
    Drawing,
    Edge,
    Handles,
    draw_declaration,
    row_label,
)
from modfsm.engine.tools.diagrams.errors import (
    DiagramError,
    GraphvizNotFoundError,
    UnknownTargetError,
)
from modfsm.engine.tools.diagrams.render import (
    FORMATS,
    INSTALL_HINT,
    find_dot,
    format_for,
    graphviz_version,
    render,
    svg_source_digest,
)
from modfsm.engine.tools.diagrams.targets import (
    HOOKS_SHOWN,
    MACHINE_TARGETS,
    TITLES,
    draw,
    draw_modifier,
    handled,
    overridden,
)
from modfsm.engine.tools.diagrams.timeline import (
    StateSpan,
    Window,
    axis_end,
    draw_timeline,
    recipe_title,
    state_spans,
    trace_mismatch,
    windows,
)

__all__ = [
    "DOC_FORMATS",
    "DOC_TARGETS",
    "FORMATS",
    "HOOKS_SHOWN",
    "INSTALL_HINT",
    "MACHINE_TARGETS",
    "REJECTED",
    "TITLES",
    "DiagramError",
    "Drawing",
    "Edge",
    "GraphvizNotFoundError",
    "Handles",
    "StateSpan",
    "UnknownTargetError",
    "Window",
    "axis_end",
    "doc_files",
    "draw",
    "draw_declaration",
    "draw_modifier",
    "draw_timeline",
    "find_dot",
    "format_for",
    "graphviz_version",
    "handled",
    "overridden",
    "recipe_title",
    "render",
    "row_label",
    "stale_docs",
    "state_spans",
    "svg_source_digest",
    "trace_mismatch",
    "windows",
    "write_docs",
]
