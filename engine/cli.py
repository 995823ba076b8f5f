"""The ``modfsm`` command line.

``modfsm demo`` runs the illustrative training loop; ``modfsm diagram`` prints
the lifecycle as mermaid text; ``modfsm trace verify FILE`` replays a session
trace against the specification (exit 0: it follows it, 1: divergence, 2:
unreadable). Bad arguments exit with code 2 and a message, never a traceback.
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

    trace = commands.add_parser("trace", help="work with session traces")
    trace_commands = trace.add_subparsers(dest="trace_command", required=True, metavar="ACTION")
    verify = trace_commands.add_parser(
        "verify", help="replay a JSONL trace against the specification; report the first divergence"
    )
    verify.add_argument("file", type=Path, help="a trace written by Session(trace=PATH)")
    return parser


def _verify(path: Path) -> int:
    from engine.errors import ConfigError
    from engine.trace import read_jsonl, verify

    try:
        records = read_jsonl(path)
    except OSError as error:
        print(f"modfsm trace verify: cannot read {path}: {error.strerror}. To fix, pass the "
              "path of a trace file.", file=sys.stderr)  # fmt: skip
        return 2
    except ConfigError as error:
        print(f"modfsm trace verify: {error}", file=sys.stderr)
        return 2
    result = verify(records)
    summary = f"{result.records} records, {result.calls} calls, {result.transitions} transitions"
    if result.divergence is not None:
        print(f"DIVERGENCE in {path}, {result.divergence}")
        print(f"(checked {summary} before it)")
        return 1
    ending = "; the run failed at the end, as recorded" if result.ended_in_failure else ""
    print(f"OK: {path} follows the specification ({summary}{ending})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from engine.demo import run_demo

        print(f"modfsm demo: {args.steps} steps, seed {args.seed}")
        run_demo(steps=args.steps, seed=args.seed, out=args.out, stream=sys.stdout)
        return 0
    if args.command == "trace":
        return _verify(args.file)
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
