"""Recipe timelines: each modifier's window over the schedule and, from a trace, its states.

The top panel has one bar per modifier of the recipe (label ``stage / Type``),
from ``start`` to ``end`` on the schedule index (the unit of the recipe's
``start``/``end``: optimizer steps, or epochs when a bound is a float), stages
in shaded bands separated by lines. An open end (``end`` None) runs to the
right edge, marked ``>``; ``start`` at or below 0 opens at ``initialize``, drawn
from 0; ``start`` None never opens (no bar, a note). The update points — whole
multiples of ``update`` inside ``[start, end]``, where
:meth:`~modfsm.engine.model.events.Event.should_update` holds — are ticks across the bar.

Given a trace (``Session(trace=...)``, ``modfsm run --trace``), a second panel
shows, per modifier of the trace, the lifecycle state it was in from each
``transition`` record to the next, on the same axis (``global_step``, divided by
``steps_per_epoch`` when the trace's header sets it); a state entered at the
trace's last step (the finalized states) is a diamond. The x axis ends at
``steps``, else the trace's last step, else 1.25 times the largest bound.

Drawn with matplotlib's Agg canvas (no pyplot, no global backend), with
matplotlib's default style, a fixed size and resolution and no ``Software``
metadata, so the same inputs give the same PNG bytes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any, Final

import attrs

from modfsm.engine.config.recipe import Recipe
from modfsm.engine.model.events import simplest_fraction
from modfsm.engine.model.lifecycle import LIFECYCLE
from modfsm.engine.tools.diagrams.errors import DiagramError

__all__ = [
    "StateSpan",
    "Window",
    "axis_end",
    "draw_timeline",
    "recipe_title",
    "state_spans",
    "trace_mismatch",
    "windows",
]

_STAGE_COLOURS: Final = (
    "#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3",
    "#937860", "#DA8BC3", "#8C8C8C", "#CCB974", "#64B5CD",
)  # fmt: skip
_STATE_COLOURS: Final = {  # a distinct hue each; finalized states are also hatched
    "created": "#bdbdbd",
    "initialized": "#6baed6",
    "started": "#31a354",
    "ended": "#9e9ac8",
    "ended_unstarted": "#fdae6b",
    "finalized_initialized": "#08306b",
    "finalized_started": "#e7298a",
    "finalized_ended": "#54278f",
    "finalized_ended_unstarted": "#8c2d04",
}
_MAX_TICKS: Final = 2000


@attrs.frozen
class Window:
    """One modifier of a recipe and its schedule.

    Attributes:
        id: ``<stage>.<index>``, the id a session and its trace give the modifier.
        stage: the stage's name.
        type: the modifier class name.
        start, end, update: its schedule, as the built modifier holds it.
    """

    id: str
    stage: str
    type: str
    start: float | None
    end: float | None
    update: float | None

    def update_points(self, horizon: float) -> tuple[float, ...]:
        """The whole multiples of ``update`` in ``[start, end]`` (``end`` None: ``horizon``)."""
        if self.start is None or self.update is None or self.update <= 0:
            return ()
        step = simplest_fraction(self.update)
        low = simplest_fraction(max(self.start, 0))
        high = simplest_fraction(min(self.end, horizon) if self.end is not None else horizon)
        first = math.ceil(low / step)
        count = math.floor(high / step) - first + 1
        if count <= 0 or count > _MAX_TICKS:
            return ()
        return tuple(float(Fraction(first + k) * step) for k in range(count))


@attrs.frozen
class StateSpan:
    """A modifier of a trace in ``state`` from schedule index ``start`` to ``end``."""

    modifier: str
    type: str
    state: str
    start: float
    end: float


def windows(recipe: Recipe) -> tuple[Window, ...]:
    """The modifiers of ``recipe`` with their schedules, in order.

    Raises:
        RecipeError: the recipe does not build (every problem listed).
    """
    out = []
    for stage in recipe.build():
        for modifier in stage.modifiers:
            out.append(
                Window(
                    id=f"{stage.group}.{modifier.index}",
                    stage=str(stage.group),
                    type=type(modifier).__name__,
                    start=modifier.start,
                    end=modifier.end,
                    update=modifier.update,
                )
            )
    return tuple(out)


def _field(record: Mapping[str, Any], key: str, line: int) -> Any:
    if key not in record:
        raise DiagramError(
            f"trace record {line} ({record.get('kind')}) has no {key!r}. To fix, pass a "
            "trace written by modfsm (Session(trace=...) or modfsm run --trace)."
        )
    return record[key]


def state_spans(records: Sequence[Mapping[str, Any]]) -> tuple[StateSpan, ...]:
    """The lifecycle states of each modifier of a trace over the schedule index.

    Each header opens every modifier's state at the header's ``global_step``;
    each ``transition`` record closes the modifier's state and opens ``to``. A
    state lasts until the next change or the trace's last step; consecutive
    spans of one state are merged, and a state left at the index it was entered
    is dropped, except the last state of each modifier.

    Raises:
        DiagramError: the trace has no header first, or a record lacks a field.
    """
    if not records or records[0].get("kind") != "header":
        raise DiagramError(
            "the trace does not start with a header record. To fix, pass a trace written "
            "by modfsm (Session(trace=...) or modfsm run --trace)."
        )
    current: dict[str, tuple[str, float, str]] = {}  # id -> (state, since, type)
    closed: list[StateSpan] = []
    per_epoch: float | None = None
    last = 0.0

    def close(modifier: str, at: float) -> None:
        if modifier in current:
            state, since, type_ = current.pop(modifier)
            closed.append(StateSpan(modifier, type_, state, since, at))

    for line, record in enumerate(records, start=1):
        kind = record.get("kind")
        if kind == "header":
            per_epoch = record.get("steps_per_epoch")
            counters = _field(record, "counters", line)
            at = float(counters["global_step"]) / (per_epoch or 1)
            for modifier in _field(record, "modifiers", line):
                close(modifier["id"], at)
                current[modifier["id"]] = (modifier["state"], at, modifier["type"])
        elif kind == "transition":
            at = float(_field(record, "step", line)) / (per_epoch or 1)
            modifier = _field(record, "modifier", line)
            type_ = current[modifier][2] if modifier in current else "?"
            close(modifier, at)
            current[modifier] = (_field(record, "to", line), at, type_)
        elif "step" in record:
            at = float(record["step"]) / (per_epoch or 1)
        else:
            continue
        last = max(last, at)
    for modifier in list(current):
        close(modifier, last)
    return _tidy(closed)


def _tidy(spans: list[StateSpan]) -> tuple[StateSpan, ...]:
    by_modifier: dict[str, list[StateSpan]] = {}
    for span in spans:
        by_modifier.setdefault(span.modifier, []).append(span)
    out: list[StateSpan] = []
    for own in by_modifier.values():
        merged: list[StateSpan] = []
        for span in own:
            if merged and merged[-1].state == span.state and merged[-1].end == span.start:
                merged[-1] = attrs.evolve(merged[-1], end=span.end)
            else:
                merged.append(span)
        out.extend(s for n, s in enumerate(merged) if s.end > s.start or n == len(merged) - 1)
    return tuple(out)


def _in_epochs(found: Sequence[Window]) -> bool:
    bounds = [v for w in found for v in (w.start, w.end, w.update)]
    return any(isinstance(v, float) for v in bounds)


def axis_end(found: Sequence[Window], spans: Sequence[StateSpan], steps: float | None) -> float:
    """Where the x axis ends: ``steps``; else the trace's last index; else 1.25 times the
    largest positive ``start``/``end`` (rounded up to a whole step unless in epochs); else 10."""
    if steps is not None:
        return float(steps)
    if spans:
        return max(span.end for span in spans) or 1.0
    bounds = [v for w in found for v in (w.start, w.end) if v is not None and v > 0]
    if not bounds:
        return 10.0
    far = max(bounds) * 1.25
    return far if _in_epochs(found) else float(math.ceil(far))


def _number(value: float) -> str:
    return f"{value:g}"


def _draw_windows(axes: Any, found: Sequence[Window], horizon: float) -> None:
    from matplotlib.lines import Line2D

    stages = list(dict.fromkeys(w.stage for w in found))
    for row, window in enumerate(found):
        position = stages.index(window.stage)
        colour = _STAGE_COLOURS[position % len(_STAGE_COLOURS)]
        if row == 0 or found[row - 1].stage != window.stage:
            rows = [r for r, w in enumerate(found) if w.stage == window.stage]
            axes.axhspan(rows[0] - 0.5, rows[-1] + 0.5, color="#f2f2f2" if position % 2 else
                         "#ffffff", zorder=0)  # fmt: skip
            if row:
                axes.axhline(row - 0.5, color="#555555", linewidth=1.0)
        end = "-" if window.end is None else _number(window.end)
        shown = f"[{'None' if window.start is None else _number(window.start)}, {end})"
        if window.update is not None:
            shown += f", update {_number(window.update)}"
        if window.start is None:
            axes.text(0, row, f"  never opens (start None) {shown}", va="center", fontsize=8)
            continue
        left = max(window.start, 0)
        right = horizon if window.end is None else min(window.end, horizon)
        if right <= left:
            axes.text(left, row, f"  empty window {shown}", va="center", fontsize=8)
            continue
        axes.barh(row, right - left, left=left, height=0.5, color=colour, alpha=0.85,
                  edgecolor="black", linewidth=0.6)  # fmt: skip
        if window.end is None:
            axes.plot([horizon], [row], marker=">", color="black", markersize=7, clip_on=False)
        points = window.update_points(horizon)
        if points:
            axes.vlines(points, row - 0.3, row + 0.3, colors="black", linewidths=0.7)
        axes.text(left, row - 0.32, shown, va="bottom", fontsize=8)
    axes.set_yticks(range(len(found)), [f"{w.stage} / {w.type}" for w in found])
    axes.set_ylim(len(found) - 0.5, -0.6)
    axes.legend(
        handles=[
            Line2D(
                [],
                [],
                color="black",
                marker="|",
                linestyle="none",
                markersize=9,
                label="update point",
            ),
            Line2D([], [], color="black", marker=">", linestyle="none", label="open end"),
        ],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
    )


def _draw_states(axes: Any, spans: Sequence[StateSpan]) -> None:
    from matplotlib.patches import Patch

    modifiers = list(dict.fromkeys(span.modifier for span in spans))
    types = {span.modifier: span.type for span in spans}
    extra = sorted({s.state for s in spans} - set(_STATE_COLOURS))
    colours = {**_STATE_COLOURS}
    colours.update({s: _STAGE_COLOURS[n % len(_STAGE_COLOURS)] for n, s in enumerate(extra)})
    for span in spans:
        row = modifiers.index(span.modifier)
        if span.end > span.start:
            axes.barh(row, span.end - span.start, left=span.start, height=0.5,
                      color=colours[span.state], edgecolor="black", linewidth=0.4,
                      hatch=_hatch(span.state))  # fmt: skip
        else:
            axes.plot([span.start], [row], marker="D", color=colours[span.state],
                      markeredgecolor="black", markersize=7, clip_on=False)  # fmt: skip
    axes.set_yticks(range(len(modifiers)), [f"{m} ({types[m]})" for m in modifiers])
    axes.set_ylim(len(modifiers) - 0.5, -0.5)
    present = {s.state for s in spans}
    order = [*LIFECYCLE.state_names(), *extra]
    axes.legend(
        handles=[
            Patch(facecolor=colours[s], hatch=_hatch(s), label=s, edgecolor="black", linewidth=0.4)
            for s in order
            if s in present
        ],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
        title="lifecycle state",
        title_fontsize=8,
    )


def _hatch(state: str) -> str | None:
    """Finalized states are hatched, so no two states differ by shade alone."""
    return "///" if state.startswith("finalized") else None


def recipe_title(recipe: Recipe) -> str:
    """How a timeline names its recipe: the file's name, or, for a recipe given as text
    or data, its stages."""
    origin = str(recipe.origin)
    if not origin.startswith("<"):
        return Path(origin).name
    stages = [str(stage.group) for stage in recipe.build()]
    return f"a recipe given as text (stages {', '.join(stages)})"


def trace_mismatch(recipe: Recipe, records: Sequence[Mapping[str, Any]]) -> str | None:
    """Why the trace is not one of this recipe's runs (None if its first header lists the
    recipe's modifiers, with their types and schedules): the first difference."""
    headers = [r for r in records if r.get("kind") == "header"]
    if not headers:
        return None  # state_spans refuses it with its own message
    traced = {m.get("id"): m for m in headers[0].get("modifiers", ())}
    for window in windows(recipe):
        found = traced.pop(window.id, None)
        if found is None:
            return f"the trace has no modifier {window.id} ({window.type})"
        if found.get("type") != window.type:
            return (f"modifier {window.id} is a {found.get('type')} in the trace, a "
                    f"{window.type} in the recipe")  # fmt: skip
        for key in ("start", "end", "update"):
            if key in found and found[key] != getattr(window, key):
                return (f"modifier {window.id} has {key}={found[key]!r} in the trace, "
                        f"{getattr(window, key)!r} in the recipe")  # fmt: skip
    if traced:
        return f"the trace has modifiers the recipe has not: {', '.join(map(str, traced))}"
    return None


def draw_timeline(
    recipe: Recipe,
    *,
    trace: Sequence[Mapping[str, Any]] | None = None,
    steps: float | None = None,
    name: str | None = None,
) -> bytes:
    """The recipe's timeline (and the trace's states) as PNG bytes.

    Args:
        recipe: the recipe; it is built (validated) first.
        trace: the records of a trace (:func:`modfsm.engine.tools.replay.read_jsonl`), or None.
        steps: where the x axis ends (default: the trace's last step, else 1.25
            times the recipe's largest bound).
        name: the name in the title (default: the recipe file's name).

    Raises:
        RecipeError: the recipe does not build.
        DiagramError: matplotlib is missing, or the trace is not a modfsm trace.
    """
    found = windows(recipe)
    spans = state_spans(trace) if trace is not None else ()
    horizon = axis_end(found, spans, steps)
    try:
        import matplotlib.style
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ModuleNotFoundError as error:
        raise DiagramError(
            "the recipe timeline needs matplotlib, not installed. To fix, pip install "
            "'modfsm[diagrams]' (or matplotlib)."
        ) from error
    title = name if name is not None else recipe_title(recipe)
    rows = [len(found)] + ([len({s.modifier for s in spans})] if trace is not None else [])
    with matplotlib.style.context("default"):
        figure = Figure(figsize=(11, 1.6 + 0.55 * sum(rows) + 0.5 * len(rows)), dpi=100,
                        layout="constrained")  # fmt: skip
        FigureCanvasAgg(figure)
        panels = figure.subplots(
            len(rows), 1, sharex=True, squeeze=False, gridspec_kw={"height_ratios": rows}
        )[:, 0]
        _draw_windows(panels[0], found, horizon)
        panels[0].set_title("modifier windows", fontsize=10, loc="left")
        if trace is not None:
            _draw_states(panels[1], spans)
            panels[1].set_title("lifecycle states in the trace", fontsize=10, loc="left")
        unit = "epochs" if _in_epochs(found) else "steps"
        panels[-1].set_xlabel(f"schedule index ({unit})")
        panels[-1].set_xlim(0, horizon * 1.02)
        figure.suptitle(f"Recipe timeline: {title}", fontsize=12)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()
