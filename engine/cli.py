"""The ``modfsm`` command line.

``modfsm demo`` runs the illustrative training loop; ``modfsm diagram`` prints
the lifecycle as mermaid text. Bad arguments exit with code 2 and a message,
never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

__all__ = ["main"]


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modfsm",
        description="An explicit, verified state-machine engine for training-loop modifiers.",
    )
    try:
        version = metadata.version("modfsm")
    except metadata.PackageNotFoundError:  # running from a source tree without install
        version = "unknown"
    parser.add_argument("--version", action="version", version=f"modfsm {version}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="train a tiny MLP with two illustrative modifiers and show their hooks"
    )
    demo.add_argument("--steps", type=_positive, default=12, help="training steps (default 12)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument(
        "--out", type=Path, default=Path("demo-out"),
        help="folder for lifecycle.mmd (default demo-out)",
    )  # fmt: skip

    diagram = commands.add_parser("diagram", help="print the modifier lifecycle as mermaid text")
    diagram.add_argument("--output", "-o", type=Path, help="write to this file instead of stdout")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from engine.demo import run_demo

        print(f"modfsm demo: {args.steps} steps, seed {args.seed}")
        run_demo(steps=args.steps, seed=args.seed, out=args.out, stream=sys.stdout)
        return 0
    from engine._transitions import mermaid
    from engine.lifecycle import LIFECYCLE

    text = mermaid(LIFECYCLE, title="modfsm modifier lifecycle")
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        args.output.write_text(text, encoding="utf-8")
    except OSError as error:
        print(f"modfsm diagram: cannot write {args.output}: {error.strerror}. "
              "To fix, pass a writable path with --output.", file=sys.stderr)  # fmt: skip
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
