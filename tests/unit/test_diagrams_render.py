"""Rendering: formats, SVG and PNG through graphviz (valid, stable), missing graphviz."""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from modfsm.engine.tools.diagrams import (
    DiagramError,
    GraphvizNotFoundError,
    draw,
    format_for,
    graphviz_version,
    render,
    svg_source_digest,
)
from tests.diagram_support import (
    dot_layout,
    edge_points,
    label_boxes,
    node_boxes,
    overlap,
    png_size,
    require_graphviz,
)


@pytest.mark.parametrize(
    ("path", "given", "expected"),
    [
        (None, None, "mermaid"),
        (Path("x.mmd"), None, "mermaid"),
        (Path("x.gv"), None, "dot"),
        (Path("x.dot"), None, "dot"),
        (Path("x.SVG"), None, "svg"),
        (Path("x.png"), None, "png"),
        (Path("x.txt"), None, "mermaid"),
        (Path("x.png"), "dot", "dot"),
    ],
)
def test_the_format_comes_from_the_option_else_the_file_suffix(
    path: Path | None, given: str | None, expected: str
) -> None:
    assert format_for(path, given) == expected


def test_an_unknown_format_is_refused_with_the_choices() -> None:
    with pytest.raises(DiagramError) as caught:
        render(draw("stage"), "jpeg")
    assert str(caught.value) == (
        "unknown diagram format 'jpeg'. To fix, use one of mermaid, dot, svg, png."
    )


@pytest.mark.parametrize("target", ["lifecycle", "calibration", "stage", "session"])
def test_svg_is_a_valid_stable_svg_naming_its_dot_source(target: str) -> None:
    require_graphviz()
    svg = render(draw(target), "svg")
    assert svg == render(draw(target), "svg")
    text = svg.decode()
    assert text.startswith('<?xml version="1.0" encoding="UTF-8" standalone="no"?>')
    assert "<svg width=" in text
    assert text.rstrip().endswith("</svg>")
    assert len(svg) > 2000
    dot = render(draw(target), "dot")
    assert svg_source_digest(text) == hashlib.sha256(dot).hexdigest()
    for state in draw(target).states:
        assert f"<title>{state}</title>" in text


@pytest.mark.parametrize("target", ["lifecycle", "session"])
def test_png_is_a_valid_stable_png(target: str) -> None:
    require_graphviz()
    png = render(draw(target, illegal=True), "png")
    assert png == render(draw(target, illegal=True), "png")
    width, height = png_size(png)
    assert width > 500
    assert height > 200
    assert len(png) > 10_000


def test_an_svg_not_drawn_by_modfsm_names_no_source() -> None:
    assert svg_source_digest("<svg></svg>") is None


def test_diagrams_are_the_same_bytes_in_another_process() -> None:
    require_graphviz()
    code = (
        "import hashlib, sys\n"
        "from modfsm.engine.tools.diagrams import draw, render\n"
        "for f in ('mermaid', 'dot', 'svg'):\n"
        "    print(hashlib.sha256(render(draw('lifecycle', illegal=True), f)).hexdigest())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env={"PYTHONHASHSEED": "12345", "PATH": os.environ["PATH"]},
        cwd=Path(__file__).parents[2],
    )
    here = [
        hashlib.sha256(render(draw("lifecycle", illegal=True), f)).hexdigest()
        for f in ("mermaid", "dot", "svg")
    ]
    assert done.stdout.split() == here


@pytest.mark.parametrize("format", ["svg", "png"])
def test_without_graphviz_svg_and_png_fail_naming_the_format_and_the_fix(
    format: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(GraphvizNotFoundError) as caught:
        render(draw("lifecycle"), format)
    assert caught.value.format == format
    assert isinstance(caught.value, FileNotFoundError)
    assert str(caught.value) == (
        f"the {format} format needs graphviz's dot program, not found on PATH. To fix, "
        "install graphviz (apt-get install graphviz) or use --format mermaid."
    )
    with pytest.raises(GraphvizNotFoundError):
        graphviz_version()


def test_without_graphviz_mermaid_and_dot_text_still_work(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert render(draw("stage"), "mermaid").startswith(b"---\n")
    assert render(draw("stage"), "dot").startswith(b'digraph "modfsm stage lifecycle" {')


def test_without_the_python_graphviz_package_dot_fails_with_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> Any:
        return None if name == "graphviz" else real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(GraphvizNotFoundError) as caught:
        render(draw("stage"), "dot")
    assert str(caught.value).startswith(
        "the dot format needs the Python package graphviz, not installed. To fix, "
        "pip install 'modfsm[diagrams]' (or graphviz), or use --format mermaid."
    )
    assert render(draw("stage"), "mermaid").startswith(b"---\n")


def test_graphviz_reports_its_version() -> None:
    require_graphviz()
    version = graphviz_version()
    assert version[0].isdigit()
    assert f"Generated by graphviz version {version}" in render(draw("stage"), "svg").decode()


MACHINES = ("lifecycle", "calibration", "stage", "session")


@pytest.mark.parametrize("target", MACHINES)
def test_each_machine_fits_a_documentation_page_as_svg(target: str) -> None:
    require_graphviz()
    svg = render(draw(target), "svg").decode()
    width = re.search(r'<svg width="(\d+)pt"', svg)
    assert width is not None
    assert int(width.group(1)) <= 1200
    # with the session's hooks it is wider: the default leaves them out for that reason
    if target == "session":
        hooked = re.search(
            r'<svg width="(\d+)pt"', render(draw(target, hooks=True), "svg").decode()
        )
        assert hooked is not None
        assert int(hooked.group(1)) > int(width.group(1))


def test_the_overlap_check_sees_labels_on_top_of_each_other_and_on_a_state() -> None:
    text = {"op": "T", "pt": [100.0, 50.0], "align": "c", "width": 80.0, "text": "a"}
    layout: dict[str, Any] = {
        "objects": [{"name": "s", "pos": "150,50", "width": "1", "height": "0.5"}],
        "edges": [
            {"_ldraw_": [{"op": "F", "size": 14.0, "face": "Times"}, text]},
            {"_ldraw_": [{**text, "pt": [120.0, 55.0], "text": "b"}]},
        ],
    }
    (_, _, first), (_, _, second) = label_boxes(layout)
    ((_, state),) = node_boxes(layout)
    assert overlap(first, second)
    assert overlap(first, state)
    assert not overlap(first, (200.0, 0.0, 300.0, 100.0))


@pytest.mark.parametrize("target", MACHINES)
@pytest.mark.parametrize("illegal", [False, True])
@pytest.mark.parametrize("hooks", [False, True])
def test_no_edge_label_overlaps_another_label_or_a_state(
    target: str, illegal: bool, hooks: bool
) -> None:
    require_graphviz()
    layout = dot_layout(render(draw(target, illegal=illegal, hooks=hooks), "dot").decode())
    labels = label_boxes(layout)
    assert labels
    for (_, text, box), (_, other, other_box) in itertools.combinations(labels, 2):
        assert not overlap(box, other_box), (text, other)
    for _, text, box in labels:
        for name, node in node_boxes(layout):
            assert not overlap(box, node), (text, name)


@pytest.mark.parametrize("target", MACHINES)
def test_no_rejected_edge_crosses_a_label_and_no_edge_crosses_a_rejected_label(
    target: str,
) -> None:
    require_graphviz()
    layout = dot_layout(render(draw(target, illegal=True), "dot").decode())
    rejected = {i for i, edge in enumerate(layout["edges"]) if edge.get("color") == "red"}
    assert rejected
    points = edge_points(layout)
    for index, text, (left, bottom, right, top) in label_boxes(layout):
        for other, x, y in points:
            crossing = other != index and left < x < right and bottom < y < top
            assert not (crossing and rejected & {index, other}), (text, other)
