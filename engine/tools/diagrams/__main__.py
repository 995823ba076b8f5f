"""``python -m modfsm.engine.tools.diagrams [FOLDER] [--check]``: write or check the pictures.

Writes ``lifecycle``, ``stage`` and ``session`` as ``.mmd``, ``.dot`` and
``.svg`` into FOLDER (default ``docs/diagrams``); with ``--check``, writes
nothing and exits 1 when a file is missing or stale (listing each).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from modfsm.engine.kernel.errors import LifecycleError
from modfsm.engine.tools.diagrams.docs import REGENERATE, stale_docs, write_docs


def main(argv: Sequence[str] | None = None) -> int:
    """Write (or check) the pictures; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m modfsm.engine.tools.diagrams",
        description="Write the declared machines' diagrams (mermaid, dot, SVG) into FOLDER.",
    )
    parser.add_argument("folder", nargs="?", type=Path, default=Path("docs/diagrams"))
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args(argv)
    try:
        if args.check:
            problems = stale_docs(args.folder)
            for problem in problems:
                print(f"{args.folder}: {problem}", file=sys.stderr)
            if problems:
                print(f"To fix, run {REGENERATE}.", file=sys.stderr)
            return 1 if problems else 0
        for path in write_docs(args.folder):
            print(path)
    except (LifecycleError, OSError) as error:
        print(f"python -m modfsm.engine.tools.diagrams: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
