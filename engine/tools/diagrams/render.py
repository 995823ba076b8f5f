"""Render a :class:`~modfsm.engine.tools.diagrams.drawing.Drawing` as mermaid, dot, SVG or PNG.

``mermaid`` and ``dot`` are text made by ``transitions``' ``GraphMachine``
(``modfsm.engine.tools.transitions_adapter``); ``svg`` and ``png`` are that ``dot`` text laid out
by the graphviz ``dot`` program. The output depends only on the drawing and,
for ``svg`` and ``png``, on the graphviz version: the same inputs give the same
bytes. Each SVG carries a comment with the SHA-256 of the ``dot`` source it was
drawn from (:func:`svg_source_digest`), so a committed SVG can be checked
against its declaration without graphviz, or with another graphviz version.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import shutil
import subprocess
from pathlib import Path
from typing import Final

from modfsm.engine.tools.diagrams.drawing import Drawing
from modfsm.engine.tools.diagrams.errors import DiagramError, GraphvizNotFoundError
from modfsm.engine.tools.transitions_adapter import diagram_source

__all__ = [
    "FORMATS",
    "INSTALL_HINT",
    "find_dot",
    "format_for",
    "graphviz_version",
    "render",
    "svg_source_digest",
]

FORMATS: Final = ("mermaid", "dot", "svg", "png")
"""The output formats of a state diagram."""

SUFFIXES: Final = {
    ".mmd": "mermaid",
    ".mermaid": "mermaid",
    ".dot": "dot",
    ".gv": "dot",
    ".svg": "svg",
    ".png": "png",
}
"""File suffix -> the format it implies."""

INSTALL_HINT: Final = "To fix, install graphviz (apt-get install graphviz) or use --format mermaid."

_TIMEOUT_S: Final = 120
_MARK: Final = "<!-- modfsm: drawn from dot source sha256 "
_VERSION: Final = re.compile(r"graphviz version (\S+)")


def format_for(path: Path | None, given: str | None = None) -> str:
    """The format to write: ``given``, else the one ``path``'s suffix implies, else mermaid."""
    if given is not None:
        if given not in FORMATS:
            raise DiagramError(
                f"unknown diagram format {given!r}. To fix, use one of {', '.join(FORMATS)}."
            )
        return given
    if path is None:
        return "mermaid"
    return SUFFIXES.get(path.suffix.lower(), "mermaid")


def find_dot(format: str = "svg") -> str:
    """The path of graphviz's ``dot`` program.

    Raises:
        GraphvizNotFoundError: it is not on ``PATH``; the message names ``format``
            and the fix.
    """
    found = shutil.which("dot")
    if found is None:
        raise GraphvizNotFoundError(
            f"the {format} format needs graphviz's dot program, not found on PATH. {INSTALL_HINT}",
            format=format,
        )
    return found


def graphviz_version() -> str:
    """The installed graphviz's version (``2.43.0``), as ``dot -V`` says it."""
    done = _dot(["-V"], b"", "svg")
    found = _VERSION.search(done.stderr.decode(errors="replace"))
    return found.group(1) if found else "unknown"


def _dot(arguments: list[str], source: bytes, format: str) -> subprocess.CompletedProcess[bytes]:
    program = find_dot(format)
    try:
        done = subprocess.run(
            [program, *arguments],
            input=source,
            capture_output=True,
            timeout=_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise DiagramError(f"graphviz's dot failed to run: {error}. {INSTALL_HINT}") from error
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip()
        raise DiagramError(f"graphviz's dot failed (exit {done.returncode}): {message}")
    return done


def _dot_source(drawing: Drawing, format: str) -> str:
    if importlib.util.find_spec("graphviz") is None:
        raise GraphvizNotFoundError(
            f"the {format} format needs the Python package graphviz, not installed. To fix, "
            "pip install 'modfsm[diagrams]' (or graphviz), or use --format mermaid.",
            format=format,
        )
    return diagram_source(drawing, "graphviz")


def svg_source_digest(svg: str) -> str | None:
    """The SHA-256 of the ``dot`` source an SVG from :func:`render` was drawn from."""
    start = svg.find(_MARK)
    if start < 0:
        return None
    return svg[start + len(_MARK) :].split(" ", 1)[0]


def render(drawing: Drawing, format: str) -> bytes:
    """The drawing in ``format`` (one of :data:`FORMATS`), as bytes (text is UTF-8).

    Raises:
        DiagramError: an unknown format, or graphviz failed.
        GraphvizNotFoundError: ``dot``, ``svg`` or ``png`` without the Python
            package ``graphviz``, or ``svg`` or ``png`` without the ``dot`` program.
    """
    format = format_for(None, format)
    if format == "mermaid":
        return diagram_source(drawing, "mermaid").encode()
    source = _dot_source(drawing, format).encode()
    if format == "dot":
        return source
    drawn = _dot([f"-T{format}"], source, format).stdout
    if format == "svg":
        digest = hashlib.sha256(source).hexdigest()
        svg = drawn.decode()
        at = svg.index("<svg")
        drawn = f"{svg[:at]}{_MARK}{digest} -->\n{svg[at:]}".encode()
    return drawn
