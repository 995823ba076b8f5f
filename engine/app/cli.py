"""The ``modfsm`` command line.

``modfsm run [RECIPE]`` trains and compresses the built-in digits MLP with a
recipe (the default one without RECIPE) and prints a summary;
``modfsm demo`` runs the illustrative training loop; ``modfsm diagram [TARGET]``
draws a declared machine (mermaid, dot, SVG, PNG) or a recipe's timeline
(PNG); ``modfsm trace verify FILE`` replays a session
trace against the specification (exit 0: it follows it and the run finalized,
1: a divergence or an incomplete trace, 2: unreadable); ``modfsm verify``
proves the declared tables and model-checks them with Spin (exit 0: every
property holds, 1: one fails, 2: Spin is missing or failed). Every option and
output path is checked before any work; bad input exits with code 2 and one
message, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from modfsm.engine.app import limits, paths

__all__ = ["main"]


def _whole(
    minimum: int, maximum: int | None = None, noun: str = "a number"
) -> Callable[[str], int]:
    """An argparse type: a whole number in [minimum, maximum] (no maximum: unbounded)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {noun} >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(
                f"expected {noun} in [{minimum}, {maximum}], got {value}"
            )
        return value

    return parse


_positive = _whole(1)
_demo_steps = _whole(1, limits.DEMO_STEPS)
_seed = _whole(0, limits.MAX_SEED, "a seed")
_run_steps = _whole(1, limits.MAX_STEPS)


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def _add_run(commands: Any) -> None:
    run = commands.add_parser(
        "run",
        help="train and compress the built-in digits MLP with a recipe, then print a summary",
        description="Train the built-in MLP on scikit-learn's 8x8 digits with a recipe (default: "
        "gradual magnitude pruning to 75%, then int8 quantization-aware training) and print "
        "each modifier's window and state, sparsity per layer, quantization error and "
        "accuracy. Recipe windows are in optimizer steps. Sample recipes: docs/recipes/. "
        "Exit 2 with one message for a bad option, recipe or checkpoint.",
    )
    run.add_argument("recipe", nargs="?", type=Path, help="a recipe YAML file (default: built-in)")
    run.add_argument("--steps", type=_run_steps, default=600, help="optimizer steps (default 600)")
    run.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    run.add_argument("--batch-size", type=_positive, default=32, help="images per batch (32)")
    run.add_argument("--lr", type=_rate, default=1e-3, help="Adam learning rate (default 1e-3)")
    run.add_argument("--device", default="cpu", help="torch device (default cpu)")
    run.add_argument("--trace", type=Path, metavar="FILE", help="write the session trace (JSONL)")
    run.add_argument(
        "--checkpoint", type=Path, metavar="DIR", help="keep checkpoints in DIR (atomic writes)"
    )
    run.add_argument(
        "--checkpoint-every", type=_positive, default=100, metavar="N",
        help="steps between checkpoints (default 100)",
    )  # fmt: skip
    run.add_argument(
        "--resume", action="store_true", help="continue from the checkpoint in --checkpoint DIR"
    )
    run.add_argument(
        "--stop-at", type=_positive, metavar="STEP",
        help="stop after STEP steps without finalizing, leaving a checkpoint to --resume",
    )  # fmt: skip
    run.add_argument(
        "--overwrite", action="store_true",
        help="start again over the checkpoint (and trace) another run left; without it, "
        "a run refuses to replace them",
    )  # fmt: skip
    _add_import(run, "reading the recipe")
    run.add_argument(
        "--json", type=Path, metavar="FILE", help="also write the summary as JSON to FILE"
    )
    loudness = run.add_mutually_exclusive_group()
    loudness.add_argument(
        "-q", "--quiet", action="store_true",
        help="print nothing but errors (no summary, no progress bar, no warnings)",
    )  # fmt: skip
    loudness.add_argument(
        "-v", "--verbose", action="store_true",
        help="also log each modifier's window opening and closing (logger 'modfsm')",
    )  # fmt: skip


def _run(args: argparse.Namespace) -> int:
    if args.json is not None and (problem := paths.file_problem(args.json)):
        print(f"modfsm run: --json cannot be written: {problem}. To fix, pass a file in a "
              "folder you can write to.", file=sys.stderr)  # fmt: skip
        return 2
    level = logging.ERROR if args.quiet else logging.INFO if args.verbose else logging.WARNING
    with _stderr_log(level):
        return _run_logged(args)


def _import_modules(modules: Sequence[str], command: str, only: str | None = None) -> bool:
    """Import ``--import`` modules and register their modifier classes (with ``only``, that
    class of the last one); False (after one message on stderr) if one fails. The current
    folder is searched first."""
    from modfsm.engine.config.factory import ModifierFactory
    from modfsm.engine.kernel.errors import LifecycleError

    if modules and os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # a local module, as `python -m` would find it
    try:
        for position, module in enumerate(modules):
            last = position == len(modules) - 1
            ModifierFactory.import_modifiers(module, only if last else None)
    except LifecycleError as error:
        print(f"modfsm {command}: {error}", file=sys.stderr)
        return False
    return True


def _add_import(parser: Any, what: str) -> None:
    parser.add_argument(
        "--import", dest="imports", action="append", default=[], metavar="MODULE",
        help=f"import MODULE (a module or package; the current folder is searched first) "
        f"before {what}, and make its modifier classes available (repeatable)",
    )  # fmt: skip


def _refused(command: str, error: BaseException) -> int:
    """Print a refusal (a modfsm error or a missing package) as one line; exit code 2."""
    message = str(error)
    prefix = "" if message.startswith(f"modfsm {command}:") else f"modfsm {command}: "
    print(f"{prefix}{message}", file=sys.stderr)
    return 2


def _add_oneshot(commands: Any) -> None:
    oneshot = commands.add_parser(
        "oneshot",
        help="compress a causal language model in one shot with a recipe (GPTQ, SparseGPT, ...)",
        description="Compress a causal LM with a recipe in one shot: the built-in byte-level "
        "Llama (trained once, about 90 s on 2 cores, and cached) or --model PATH (a local "
        "transformers folder). Calibrates the recipe's modifiers on windows of the training "
        "text through a calibration pipeline, then prints the held-out perplexity before and "
        "after, each layer's sparsity and bit width, and the compressed size; --output writes "
        "the model (safetensors with the scales and zero points) and the recipe. Default "
        "recipe: GPTQ W4A16, group 128. Sample recipes: docs/recipes/oneshot_*.yaml. Exit 2 "
        "with one message for a bad option, recipe, model or output folder.",
    )
    oneshot.add_argument("recipe", nargs="?", type=Path,
                         help="a recipe YAML file (default: built-in GPTQ W4A16)")  # fmt: skip
    oneshot.add_argument(
        "--model", type=Path, metavar="PATH",
        help="a local transformers model folder (default: the built-in LM)",
    )  # fmt: skip
    oneshot.add_argument("--calib", type=_positive, default=64, metavar="N",
                         help="calibration sequences (default 64)")  # fmt: skip
    oneshot.add_argument("--seq-len", type=_positive, metavar="L",
                         help="tokens per sequence (default: 128)")  # fmt: skip
    oneshot.add_argument("--pipeline", choices=("basic", "sequential"), default="sequential",
                         help="calibrate on the float model (basic) or layer by layer on the "
                         "compressed layers before (sequential, the default)")  # fmt: skip
    oneshot.add_argument(
        "--output", "-o", type=Path, metavar="DIR",
        help="write the compressed model and the recipe to DIR (must not exist)",
    )  # fmt: skip
    oneshot.add_argument(
        "--trace", type=Path, metavar="FILE", help="write the session trace (JSONL)"
    )
    oneshot.add_argument(
        "--seed", type=_seed, default=0, help="chooses the calibration windows (0)"
    )
    oneshot.add_argument(
        "--eval", dest="eval_sequences", type=_positive, default=64, metavar="N",
        help="held-out sequences for the perplexity (default 64)",
    )  # fmt: skip
    _add_import(oneshot, "reading the recipe")
    oneshot.add_argument("-q", "--quiet", action="store_true",
                         help="print nothing but errors (no summary, no progress bar)")  # fmt: skip


def _oneshot(args: argparse.Namespace) -> int:
    from modfsm.engine.app.oneshot import OneshotConfig, format_summary, oneshot
    from modfsm.engine.kernel.errors import LifecycleError

    if not _import_modules(args.imports, "oneshot"):
        return 2
    config = OneshotConfig(
        recipe=args.recipe, model=args.model, calib=args.calib, seq_len=args.seq_len,
        pipeline=args.pipeline, output=args.output, trace=args.trace, seed=args.seed,
        eval_sequences=args.eval_sequences,
    )  # fmt: skip
    try:
        result = oneshot(config, progress=sys.stderr.isatty() and not args.quiet)
    except (LifecycleError, ModuleNotFoundError) as error:
        return _refused("oneshot", error)
    if not args.quiet:
        sys.stdout.write(format_summary(result) + "\n")
    return 0


def _run_logged(args: argparse.Namespace) -> int:
    from modfsm.engine.app.runner import RunConfig, format_summary, run, summary_data
    from modfsm.engine.kernel.errors import LifecycleError

    if not _import_modules(args.imports, "run"):
        return 2
    config = RunConfig(
        recipe=args.recipe,
        steps=args.steps,
        seed=args.seed,
        batch_size=args.batch_size,
        lr=args.lr,
        device=args.device,
        trace=args.trace,
        checkpoint=args.checkpoint,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        stop_at=args.stop_at,
        overwrite=args.overwrite,
    )
    try:
        result = run(config, progress=sys.stderr.isatty() and not args.quiet)
    except (LifecycleError, ModuleNotFoundError) as error:
        return _refused("run", error)
    except OSError as error:
        print(f"modfsm run: {error.filename or ''}: {error.strerror}. To fix, check the path "
              "and its permissions.", file=sys.stderr)  # fmt: skip
        return 2
    if args.json is not None:
        _write_atomically(args.json, json.dumps(summary_data(result), indent=2) + "\n")
    if not args.quiet:
        sys.stdout.write(format_summary(result))
    return 0


@contextlib.contextmanager
def _stderr_log(level: int) -> Iterator[None]:
    """Show the ``modfsm`` logger's records from ``level`` on stderr while the command
    runs (the logger is left as it was found afterwards)."""
    logger = logging.getLogger("modfsm")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("modfsm: %(levelname)s: %(message)s"))
    handler.setLevel(level)
    was = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > level:
        logger.setLevel(level)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(was)


def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in its folder: a reader sees the
    old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


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
    _add_run(commands)

    demo = commands.add_parser(
        "demo",
        help="train a tiny MLP with two illustrative modifiers and show their hooks",
        description="Train a tiny MLP for a few steps with two illustrative modifiers and "
        "print, step by step, which lifecycle hooks each one ran and the state it is in; "
        "write the lifecycle diagram (mermaid) to OUT/lifecycle.mmd.",
    )
    demo.add_argument(
        "--steps", type=_demo_steps, default=12,
        help=f"training steps, 1 to {limits.DEMO_STEPS} (default 12; it prints a line a step)",
    )  # fmt: skip
    demo.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    demo.add_argument(
        "--out", type=Path, default=Path("demo-out"),
        help="folder for lifecycle.mmd (default demo-out)",
    )  # fmt: skip

    _add_diagram(commands)
    _add_oneshot(commands)

    trace = commands.add_parser(
        "trace",
        help="work with session traces",
        description="Work with the JSONL traces a Session writes (Session(trace=PATH), "
        "modfsm run --trace FILE). 'modfsm trace verify FILE' replays one against the "
        "declared tables.",
    )
    trace_commands = trace.add_subparsers(dest="trace_command", required=True, metavar="ACTION")
    verify = trace_commands.add_parser(
        "verify",
        help="replay a JSONL trace against the specification; report the first divergence",
        description="Replay a trace against the declared step grammar, stage lifecycle and "
        "modifier lifecycle. Exit 0: the run finalized and every record follows the "
        "specification; 1: a divergence (the first is printed), or a trace that stops before "
        "the run finalized (incomplete); 2: not a readable trace.",
    )
    verify.add_argument("file", type=Path, help="a trace written by Session(trace=PATH)")
    _add_verify(commands)
    return parser


def _add_verify(commands: Any) -> None:
    from modfsm.engine.model.machines import DECLARED_MACHINES

    names = list(DECLARED_MACHINES)
    verify = commands.add_parser(
        "verify",
        help="prove the declared tables and model-check them with Spin; print every verdict",
        description="Run the structural proofs (V1-V6) over the declared lifecycle, calibration "
        "lifecycle, stage and session tables, then check their temporal properties with the "
        "Spin model checker on a Promela model generated from each table, and print a table "
        "of verdicts. Exit 0 when every property holds, 1 when one fails (its counterexample "
        "is printed), 2 when Spin or a C compiler is missing.",
    )
    verify.add_argument(
        "--machine", action="append", choices=names, metavar="NAME",
        help=f"verify only this machine (repeatable; one of {', '.join(names)})",
    )  # fmt: skip
    verify.add_argument(
        "--write-models", type=Path, metavar="DIR",
        help="also write each generated Promela model to DIR/<machine>.pml",
    )  # fmt: skip


def _add_diagram(commands: Any) -> None:
    diagram = commands.add_parser(
        "diagram",
        help="draw a declared machine (mermaid, dot, svg, png) or a recipe's timeline (png)",
        description="Draw TARGET: 'lifecycle' (the modifier lifecycle, the default), "
        "'calibration' (its variant with llm-compressor 0.13+'s calibration events), 'stage', "
        "'session' (the step grammar), or a modifier class (by name, or as module:Class or "
        "module.Class; its lifecycle, with the guards and hooks the class defines marked *), "
        "as mermaid or dot text, or as svg or png "
        "through graphviz; or RECIPE.yaml: the recipe's timeline as png (with --trace, the "
        "states each modifier was in). Edges read 'trigger [guard] / hooks'; see "
        "docs/diagrams.md. Exit 2 for an unknown target, a missing graphviz or a bad option.",
    )
    diagram.add_argument(
        "target", nargs="?", default="lifecycle", metavar="TARGET",
        help="lifecycle (default), calibration, stage, session, a modifier class name, or a "
        "recipe .yaml",
    )  # fmt: skip
    diagram.add_argument(
        "--format", "-f", choices=("mermaid", "dot", "svg", "png"),
        help="output format (default: from the -o suffix, else mermaid; png for a recipe)",
    )  # fmt: skip
    diagram.add_argument(
        "--output", "-o", type=Path, metavar="FILE",
        help="write to FILE (default: stdout, text formats only)",
    )  # fmt: skip
    diagram.add_argument(
        "--illegal", action="store_true",
        help="also draw the rejected calls, as dashed edges to a 'rejected' pseudo-state",
    )  # fmt: skip
    diagram.add_argument(
        "--no-self-loops", dest="self_loops", action="store_false",
        help="leave out the calls that keep the state (updates, no-ops, ignored calls)",
    )  # fmt: skip
    diagram.add_argument(
        "--hooks", action=argparse.BooleanOptionalAction, default=None,
        help="show (--hooks) or leave out (--no-hooks) the hooks each edge runs (default: shown, "
        "except the session's own bookkeeping hooks)",
    )  # fmt: skip
    diagram.add_argument(
        "--trace", type=Path, metavar="FILE",
        help="recipe only: a trace of a run (JSONL); adds the modifiers' states over the run",
    )  # fmt: skip
    _add_import(diagram, "drawing (TARGET may then name one of its classes)")
    diagram.add_argument(
        "--steps", type=_positive, metavar="N",
        help="recipe only: end the x axis at N (default: the trace's end, else 1.25 x the "
        "largest start/end)",
    )  # fmt: skip


def _diagram(args: argparse.Namespace) -> int:
    from modfsm.engine.kernel.errors import LifecycleError
    from modfsm.engine.tools.diagrams import MACHINE_TARGETS, draw, format_for, render

    def fail(message: str) -> int:
        print(f"modfsm diagram: {message}", file=sys.stderr)
        return 2

    if args.output is not None and (problem := paths.file_problem(args.output)):
        return fail(f"--output cannot be written: {problem}. To fix, pass a file in a folder "
                    "you can write to.")  # fmt: skip
    target: str = args.target
    imports, only = list(args.imports), None
    module, dot, name = target.replace(":", ".").rpartition(".")
    as_file = Path(target).suffix.lower() in (".yaml", ".yml") or Path(target).is_file()
    if dot and module and name.isidentifier() and not as_file:  # module:Class, module.Class
        imports.append(module)
        target = only = name
    if not _import_modules(imports, "diagram", only):
        return 2
    is_recipe = target not in MACHINE_TARGETS and (
        target.endswith((".yaml", ".yml")) or Path(target).is_file()
    )
    try:
        if is_recipe:
            if args.illegal or not args.self_loops or args.hooks is not None:
                return fail("--illegal, --no-self-loops and --hooks draw a machine, not a "
                            "recipe. To fix, leave them out.")  # fmt: skip
            content = _timeline(args)
        else:
            if args.trace is not None or args.steps is not None:
                return fail("--trace and --steps draw a recipe's timeline. To fix, pass a "
                            "recipe file as TARGET.")  # fmt: skip
            format = format_for(args.output, args.format)
            if format == "png" and args.output is None:
                return fail("png is binary. To fix, pass -o FILE.png.")
            drawing = draw(target, self_loops=args.self_loops, illegal=args.illegal,
                           hooks=args.hooks)  # fmt: skip
            content = render(drawing, format)
    except LifecycleError as error:  # unknown target, graphviz missing, bad recipe or trace
        return fail(str(error))
    except OSError as error:
        return fail(f"cannot read {error.filename}: {error.strerror}. To fix, check the path.")
    if args.output is None:
        sys.stdout.write(content.decode())
        return 0
    try:
        args.output.write_bytes(content)
    except OSError as error:
        return fail(f"cannot write {args.output}: {error.strerror}. To fix, pass a writable "
                    "path with --output.")  # fmt: skip
    return 0


def _timeline(args: argparse.Namespace) -> bytes:
    from modfsm.engine.config.recipe import Recipe
    from modfsm.engine.tools.diagrams import DiagramError, draw_timeline, trace_mismatch
    from modfsm.engine.tools.diagrams.render import SUFFIXES
    from modfsm.engine.tools.replay import read_jsonl

    if (
        args.output is None
        or (args.format or SUFFIXES.get(args.output.suffix.lower(), "png")) != "png"
    ):
        raise DiagramError("a recipe's timeline is drawn as png only. To fix, pass "
                           "-o FILE.png (and no other --format).")  # fmt: skip
    recipe = Recipe.load(Path(args.target))
    trace = read_jsonl(args.trace) if args.trace is not None else None
    if trace is not None and (problem := trace_mismatch(recipe, trace)):
        print(f"modfsm diagram: warning: {args.trace} is not a run of {args.target}: {problem}. "
              "The windows are the recipe's, the states the trace's. To fix, pass the "
              "recipe the run used.", file=sys.stderr)  # fmt: skip
    return draw_timeline(recipe, trace=trace, steps=args.steps)


def _verify_machines(args: argparse.Namespace) -> int:
    from modfsm.engine.tools.verify.properties import MACHINES
    from modfsm.engine.tools.verify.report import format_report, verify
    from modfsm.engine.tools.verify.spin import ModelCheckError

    if args.write_models is not None and (problem := paths.folder_problem(args.write_models)):
        print(f"modfsm verify: --write-models cannot be written: {problem}. To fix, pass a "
              "folder you can write to.", file=sys.stderr)  # fmt: skip
        return 2
    chosen = [m for m in MACHINES if args.machine is None or m.name in args.machine]
    try:
        report = verify(chosen, write_models=args.write_models)
    except ModelCheckError as error:  # spin or the compiler broke: nothing was decided
        print(f"modfsm verify: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"modfsm verify: cannot write {error.filename}: {error.strerror}. To fix, pass "
              "a writable folder to --write-models.", file=sys.stderr)  # fmt: skip
        return 2
    sys.stdout.write(format_report(report))
    if report.missing is not None:
        print(f"modfsm verify: {report.missing}", file=sys.stderr)
    return report.exit_code


def _verify(path: Path) -> int:
    from modfsm.engine.kernel.errors import ConfigError
    from modfsm.engine.tools.replay import read_jsonl, verify

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
    plural = "s" if result.segments != 1 else ""
    summary = (
        f"{result.records} records, {result.segments} segment{plural}, {result.calls} calls, "
        f"{result.transitions} transitions, {result.stage_transitions} stage transitions"
    )
    if result.divergence is not None:
        print(f"DIVERGENCE in {path}, {result.divergence}")
        print(f"(checked {summary} before it)")
        return 1
    ending = "; the run failed at the end, as recorded" if result.ended_in_failure else ""
    if not result.complete:
        print(f"INCOMPLETE: {path} follows the specification as far as it goes, but the run "
              f"never finalized: it stops in position {result.final_position!r} ({summary}"
              f"{ending}). A run stopped with --stop-at is complete once resumed with "
              "--resume into the same --trace file.")  # fmt: skip
        return 1
    print(f"OK: {path} follows the specification ({summary}{ending})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        return _command(args)
    except OSError as error:  # a path the checks above could not foresee (too long, ...)
        command = args.command if args.command != "trace" else "trace verify"
        where = f"{error.filename}: " if error.filename else ""
        print(f"modfsm {command}: {where}{error.strerror or error}. To fix, check the path "
              "and its permissions.", file=sys.stderr)  # fmt: skip
        return 2


def _command(args: argparse.Namespace) -> int:
    if args.command == "run":
        return _run(args)
    if args.command == "demo":
        from modfsm.engine.app.demo import run_demo

        problem = paths.folder_problem(args.out)
        if problem:
            print(f"modfsm demo: --out cannot be written: {problem}. To fix, pass a folder "
                  "you can write to (it is created if missing).", file=sys.stderr)  # fmt: skip
            return 2
        print(f"modfsm demo: {args.steps} steps, seed {args.seed}")
        run_demo(steps=args.steps, seed=args.seed, out=args.out, stream=sys.stdout)
        return 0
    if args.command == "trace":
        return _verify(args.file)
    if args.command == "verify":
        return _verify_machines(args)
    if args.command == "oneshot":
        return _oneshot(args)
    return _diagram(args)


if __name__ == "__main__":
    sys.exit(main())
