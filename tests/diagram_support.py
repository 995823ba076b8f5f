"""Reading diagrams back (mermaid and dot edges and states), and the graphviz requirement."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
from collections import Counter
from typing import Any

import pytest

_MERMAID_EDGE = re.compile(r"^\s*(\w+) --> (\w+): (.+)$", re.M)
_MERMAID_STATE = re.compile(r'^\s*state "(\w+)" as (\w+)$', re.M)
_DOT_EDGE = re.compile(r'^\t(\w+) -> (\w+) \[label=("(?:[^"\\]|\\.)*"|\w+)(.*)\]$', re.M)
_DOT_NODE = re.compile(r"^\t(\w+) \[label=", re.M)
_DOT_NODE_LABEL = re.compile(r'^\t(\w+) \[label="(\w+)\\l"', re.M)

Edge = tuple[str, str, str]


def require_graphviz() -> None:
    """Skip without graphviz's dot, unless ``MODFSM_REQUIRE_GRAPHVIZ`` is set: then fail."""
    if shutil.which("dot") is not None:
        return
    if os.environ.get("MODFSM_REQUIRE_GRAPHVIZ"):
        pytest.fail("MODFSM_REQUIRE_GRAPHVIZ is set and graphviz's dot is not on PATH")
    pytest.skip("graphviz's dot is not installed (make test installs it)")


def mermaid_edges(text: str) -> Counter[Edge]:
    """Every (source, dest, label) of a mermaid state diagram, one per ``|``-joined label."""
    return Counter(
        (source, dest, label)
        for source, dest, joined in _MERMAID_EDGE.findall(text)
        for label in joined.split(" | ")
    )


def mermaid_states(text: str) -> list[str]:
    """The states a mermaid state diagram declares, in order (not the pseudo-states whose
    label is not their name)."""
    return [name for label, name in _MERMAID_STATE.findall(text) if label == name]


def mermaid_labelled(text: str) -> dict[str, str]:
    """Node name -> its label, for the nodes whose label is not their name."""
    return {name: label for label, name in _MERMAID_STATE.findall(text) if label != name}


def dot_labels(joined: str) -> list[str]:
    """The labels of one dot edge: a line each (``\\n``), a line that starts with ``[`` or
    ``/`` continuing the label above it (a long label's guard and hooks)."""
    labels: list[str] = []
    for line in joined.split("\\n"):
        if line.startswith(("[", "/ ")) and labels:
            labels[-1] += " " + line
        else:
            labels.append(line)
    return labels


def dot_edges(text: str) -> Counter[Edge]:
    """Every (source, dest, label) of a dot digraph, one per label (see :func:`dot_labels`)."""
    found: Counter[Edge] = Counter()
    for source, dest, quoted, _ in _DOT_EDGE.findall(text):
        joined = quoted[1:-1] if quoted.startswith('"') else quoted
        found.update((source, dest, label) for label in dot_labels(joined))
    return found


def dot_edge_attributes(text: str) -> dict[tuple[str, str], str]:
    """(source, dest) -> the attributes after the label, as written."""
    return {(s, d): rest.strip() for s, d, _, rest in _DOT_EDGE.findall(text)}


def dot_states(text: str) -> list[str]:
    """The nodes a dot digraph declares, in order."""
    return _DOT_NODE.findall(text)


def dot_labelled(text: str) -> dict[str, str]:
    """Node name -> its label, for the nodes whose label is not their name."""
    return {name: label for name, label in _DOT_NODE_LABEL.findall(text) if label != name}


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, after checking the signature."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


Box = tuple[float, float, float, float]
"""(left, bottom, right, top) in points."""


def dot_layout(source: str) -> dict[str, Any]:
    """Graphviz's layout of a dot source (``dot -Tjson``): positions, label texts and paths."""
    done = subprocess.run(
        ["dot", "-Tjson"], input=source.encode(), capture_output=True, check=True, timeout=120
    )
    layout: dict[str, Any] = json.loads(done.stdout)
    return layout


def label_boxes(layout: dict[str, Any]) -> list[tuple[int, str, Box]]:
    """(edge index, text, box) of every line of every edge label, from its text operations:
    ``width`` wide, from a fifth of the font size below the baseline to 0.7 of it above."""
    found = []
    for index, edge in enumerate(layout.get("edges", [])):
        size = 14.0
        for op in edge.get("_ldraw_", []):
            if op["op"] == "F":
                size = float(op["size"])
            elif op["op"] == "T":
                x, y = op["pt"]
                width = float(op["width"])
                left = {"c": x - width / 2, "l": x, "r": x - width}[op["align"]]
                found.append(
                    (index, op["text"], (left, y - size * 0.2, left + width, y + size * 0.7))
                )
    return found


def node_boxes(layout: dict[str, Any]) -> list[tuple[str, Box]]:
    """(name, box) of every node."""
    found = []
    for node in layout.get("objects", []):
        if "pos" in node and "width" in node:
            x, y = map(float, node["pos"].split(","))
            half_w, half_h = float(node["width"]) * 36, float(node["height"]) * 36
            found.append((node["name"], (x - half_w, y - half_h, x + half_w, y + half_h)))
    return found


def overlap(a: Box, b: Box) -> bool:
    """Whether two boxes share more than an edge."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def edge_points(layout: dict[str, Any], samples: int = 16) -> list[tuple[int, float, float]]:
    """(edge index, x, y) of points along every edge's drawn path (its cubic Bezier pieces)."""
    found = []
    for index, edge in enumerate(layout.get("edges", [])):
        for op in edge.get("_draw_", []):
            if op["op"] not in ("b", "B"):
                continue
            points = op["points"]
            for k in range(0, len(points) - 3, 3):
                (x0, y0), (x1, y1), (x2, y2), (x3, y3) = points[k : k + 4]
                for step in range(samples + 1):
                    t = step / samples
                    u = 1 - t
                    a, b, c, d = u**3, 3 * u * u * t, 3 * u * t * t, t**3
                    found.append(
                        (
                            index,
                            a * x0 + b * x1 + c * x2 + d * x3,
                            a * y0 + b * y1 + c * y2 + d * y3,
                        )
                    )
    return found
