"""Reading diagrams back (mermaid and dot edges and states), and the graphviz requirement."""

from __future__ import annotations

import os
import re
import shutil
import struct
from collections import Counter

import pytest

_MERMAID_EDGE = re.compile(r"^\s*(\w+) --> (\w+): (.+)$", re.M)
_MERMAID_STATE = re.compile(r'^\s*state "(\w+)" as (\w+)$', re.M)
_DOT_EDGE = re.compile(r'^\t(\w+) -> (\w+) \[label=("(?:[^"\\]|\\.)*"|\w+)(.*)\]$', re.M)
_DOT_NODE = re.compile(r"^\t(\w+) \[label=", re.M)

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
    """The states a mermaid state diagram declares, in order."""
    return [name for label, name in _MERMAID_STATE.findall(text) if label == name]


def dot_edges(text: str) -> Counter[Edge]:
    """Every (source, dest, label) of a dot digraph, one per ``|``-joined label."""
    found: Counter[Edge] = Counter()
    for source, dest, quoted, _ in _DOT_EDGE.findall(text):
        joined = quoted[1:-1] if quoted.startswith('"') else quoted
        found.update((source, dest, label) for label in joined.split(" | "))
    return found


def dot_edge_attributes(text: str) -> dict[tuple[str, str], str]:
    """(source, dest) -> the attributes after the label, as written."""
    return {(s, d): rest.strip() for s, d, _, rest in _DOT_EDGE.findall(text)}


def dot_states(text: str) -> list[str]:
    """The nodes a dot digraph declares, in order."""
    return _DOT_NODE.findall(text)


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, after checking the signature."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height
