"""The modfsm command line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from modfsm.engine import LIFECYCLE
from modfsm.engine.app.cli import main

SCRIPT = Path(sys.executable).parent / "modfsm"
ROOT = Path(__file__).resolve().parents[2]
DEFAULT = ROOT / "engine" / "app" / "data" / "default_recipe.yaml"


def test_the_console_script_prints_the_lifecycle_diagram() -> None:
    result = subprocess.run(
        [str(SCRIPT), "diagram"], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.startswith('---\ntitle: "modfsm modifier lifecycle"\n---\nstateDiagram-v2')
    for state in LIFECYCLE.state_names():
        assert f'state "{state}" as {state}' in result.stdout
    assert result.stdout == (ROOT / "docs" / "diagrams" / "lifecycle.mmd").read_text()


def test_diagram_writes_a_file(tmp_path: Path) -> None:
    target = tmp_path / "lifecycle.mmd"
    assert main(["diagram", "--output", str(target)]) == 0
    assert "stateDiagram-v2" in target.read_text(encoding="utf-8")


def test_diagram_to_an_unwritable_path_exits_2_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["diagram", "--output", str(tmp_path / "missing" / "x.mmd")]) == 2
    assert "cannot write" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "starts"),
    [
        (["diagram", "stage", "--format", "dot"], 'digraph "modfsm stage lifecycle" {'),
        (["diagram", "session", "-f", "mermaid"], '---\ntitle: "modfsm session step grammar; '),
        (["diagram", "MagnitudePruningModifier"], '---\ntitle: "MagnitudePruningModifier lif'),
    ],
)
def test_diagram_prints_each_target_in_the_format_asked(
    argv: list[str], starts: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith(starts)


def test_diagram_options_add_illegal_moves_and_drop_self_loops(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["diagram", "lifecycle", "--illegal", "--no-self-loops"]) == 0
    out = capsys.readouterr().out
    assert (
        "created --> rejected_created: batch_start, batch_end, other_event (R3) | finalize (R6)"
    ) in out
    assert "started --> started" not in out
    assert main(["diagram", "session", "--hooks"]) == 0
    assert "idle --> finalized: finalize\n" in capsys.readouterr().out
    assert main(["diagram", "session"]) == 0
    assert "absorb" not in capsys.readouterr().out
    assert main(["diagram", "lifecycle", "--no-hooks"]) == 0
    assert "on_update" not in capsys.readouterr().out


@pytest.mark.parametrize(("suffix", "magic"), [(".svg", b"<?xml"), (".png", b"\x89PNG\r\n")])
def test_diagram_draws_svg_and_png_named_by_the_output_suffix(
    suffix: str, magic: bytes, tmp_path: Path
) -> None:
    from tests.diagram_support import require_graphviz

    require_graphviz()
    target = tmp_path / f"session{suffix}"
    assert main(["diagram", "session", "-o", str(target)]) == 0
    assert target.read_bytes().startswith(magic)
    assert target.stat().st_size > 5000


def test_diagram_of_an_unknown_target_exits_2_listing_the_targets(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["diagram", "lifecylce"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("modfsm diagram: unknown diagram target 'lifecylce'. ")
    assert "Targets: the machines lifecycle, calibration, stage, session; a modifier class (" in err
    assert "MagnitudePruningModifier" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("format", ["svg", "png"])
def test_diagram_without_graphviz_exits_2_with_the_fix(
    format: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["diagram", "stage", "--format", format, "-o", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err == (
        f"modfsm diagram: the {format} format needs graphviz's dot program, not found on PATH. "
        "To fix, install graphviz (apt-get install graphviz) or use --format mermaid.\n"
    )
    assert not (tmp_path / "x").exists()
    assert main(["diagram", "stage", "--format", "mermaid"]) == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["diagram", "stage", "-f", "png"], "png is binary. To fix, pass -o FILE.png."),
        (["diagram", "stage", "--trace", "t.jsonl"], "--trace and --steps draw a recipe's"),
        (["diagram", "stage", "--steps", "5"], "--trace and --steps draw a recipe's"),
        (["diagram", "DEFAULT", "--illegal", "-o", "t.png"], "--illegal, --no-self-loops and"),
        (["diagram", "DEFAULT", "--hooks", "-o", "t.png"], "--hooks draw a machine, not a"),
        (["diagram", "DEFAULT"], "a recipe's timeline is drawn as png only. To fix, pass -o"),
        (["diagram", "DEFAULT", "-o", "t.svg"], "a recipe's timeline is drawn as png only."),
        (["diagram", "DEFAULT", "-f", "svg", "-o", "t.png"], "is drawn as png only."),
        (["diagram", "missing.yaml", "-o", "t.png"], "no such file or directory"),
        (["diagram", "DEFAULT", "--trace", "missing.jsonl", "-o", "t.png"], "cannot read"),
    ],
)
def test_diagram_refuses_what_it_cannot_draw_with_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    argv = [str(DEFAULT) if a == "DEFAULT" else str(tmp_path / a) if "." in a else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message.lower() in err.lower()
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_diagram_draws_a_recipe_timeline_with_the_states_of_a_trace(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "s_stage:\n  e_modifiers:\n    EventLogModifier: {start: 1, end: 2, update: 1}\n"
    )
    trace = tmp_path / "run.jsonl"
    _run_trace(trace)
    target = tmp_path / "timeline.png"
    from modfsm.engine.config.factory import ModifierFactory
    from tests.doubles import EventLog

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ModifierFactory, "_registered_registry", {})
        ModifierFactory.register("EventLogModifier", EventLog)
        code = main(["diagram", str(recipe), "--trace", str(trace), "-o", str(target)])
        assert code == 0
        alone = tmp_path / "alone.png"
        assert main(["diagram", str(recipe), "--steps", "3", "-o", str(alone)]) == 0
    assert target.read_bytes().startswith(b"\x89PNG\r\n")
    assert target.read_bytes() != alone.read_bytes()


def test_diagram_warns_when_the_trace_is_not_a_run_of_the_recipe(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "s_stage:\n  e_modifiers:\n    EventLogModifier: {start: 2, end: 3, update: 1}\n"
    )
    trace = tmp_path / "run.jsonl"
    _run_trace(trace)  # a run of a list of modifiers: stage default_stage
    from modfsm.engine.config.factory import ModifierFactory
    from tests.doubles import EventLog

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ModifierFactory, "_registered_registry", {})
        ModifierFactory.register("EventLogModifier", EventLog)
        target = tmp_path / "timeline.png"
        assert main(["diagram", str(recipe), "--trace", str(trace), "-o", str(target)]) == 0
    assert capsys.readouterr().err == (
        f"modfsm diagram: warning: {trace} is not a run of {recipe}: the trace has no "
        "modifier s_stage.0 (EventLog). The windows are the recipe's, the states the trace's. "
        "To fix, pass the recipe the run used.\n"
    )
    assert target.read_bytes().startswith(b"\x89PNG\r\n")  # drawn anyway


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--steps", "0"], "expected a number >= 1, got 0"),
        (["demo", "--steps", "many"], "expected a whole number, got 'many'"),
        (["explode"], "invalid choice: 'explode'"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_bad_arguments_exit_2_without_a_traceback(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_demo_command_prints_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--steps", "2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "on_initialize, on_start -> started" in out
    assert (tmp_path / "lifecycle.mmd").exists()


def _run_trace(path: Path) -> None:
    from modfsm.engine.loop.session import Session
    from tests.doubles import EventLog

    session = Session()
    session.initialize(recipe=[EventLog(start=1, end=2)], trace=path)
    for _ in range(3):
        session.batch_start()
        session.optim_pre_step()
        session.optim_post_step()
        session.batch_end()
    session.finalize()


def test_trace_verify_accepts_a_real_trace(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    _run_trace(path)
    result = subprocess.run([str(SCRIPT), "trace", "verify", str(path)], capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"OK: {path} follows the specification (")
    assert " 1 segment, " in result.stdout


def test_trace_verify_reports_the_first_divergence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "run.jsonl"
    _run_trace(path)
    lines = path.read_text().splitlines()
    target = next(i for i, line in enumerate(lines) if '"to": "ended"' in line)
    lines[target] = lines[target].replace('"to": "ended"', '"to": "started"')
    path.write_text("\n".join(lines) + "\n")
    assert main(["trace", "verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"DIVERGENCE in {path}, line {target + 1}:" in out
    assert "the spec expects started -> ended" in out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),
        ("{not json\n", "line 1: not JSON"),
        ("[1, 2]\n", "expected a JSON object"),
    ],
)
def test_trace_verify_refuses_unreadable_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, message: str
) -> None:
    path = tmp_path / "trace.jsonl"
    if content is not None:
        path.write_text(content)
    assert main(["trace", "verify", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_verify_prints_every_property_with_its_verdict_and_exits_0(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from modfsm.engine.tools.verify.properties import MACHINES
    from modfsm.engine.tools.verify.structure import STRUCTURAL
    from tests.verify_support import require_spin

    require_spin()
    assert main(["verify"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("modfsm verify: structural proofs over the declared tables; "
                          "model checking with Spin Version ")  # fmt: skip
    rows = {(line.split()[0], line.split()[1]): line for line in out.splitlines()[4:] if line}
    for machine in MACHINES:
        for prop in [*STRUCTURAL, *(p.id for p in machine.temporal)]:
            assert "  holds  " in rows[(machine.name, prop)], (machine.name, prop)
    total = sum(len(STRUCTURAL) + len(m.temporal) for m in MACHINES)
    assert f"\n{total} of {total} properties hold; Spin searched at most " in out


def test_verify_without_spin_still_proves_the_tables_and_exits_2_with_the_fix(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    assert main(["verify", "--machine", "stage"]) == 2
    captured = capsys.readouterr()
    assert re.search(r"^stage +V4 +deterministic: .* holds +- +- +-$", captured.out, re.M)
    assert re.search(r"^stage +STT1 +applied is absorbing +not checked +- +- +-$", captured.out,
                     re.M)  # fmt: skip
    assert "6 of 13 properties hold, 7 not checked." in captured.out
    assert "To fix, install spin (apt-get install spin)" in captured.err


def test_verify_exits_1_and_prints_the_counterexample_of_a_failing_property(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from modfsm.engine.tools.verify import properties
    from tests import verify_support

    verify_support.require_spin()
    monkeypatch.setattr(properties, "MACHINES", (verify_support.STARTS_WITHOUT_ON_START,))
    assert main(["verify"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"^lifecycle +LT2 +started is never set without on_start running in that "
                     r"call +FAILS +\d+ +\d+ +\d+$", out, re.M)  # fmt: skip
    assert (
        "FAILS lifecycle LT2 (started is never set without on_start running in that call)\n"
        "  [] ((started && !was_started) -> ran_on_start) is violated by this run:\n"
        "  1. initialize [on_initialize=true, should_start=false] / on_initialize -> initialized\n"
        "  2. batch_start [should_start=true] / on_event, on_update -> started\n"
    ) in out
    assert (
        "FAILS lifecycle V6 (a flag turns on only in a call that runs its hooks)\n"
        "  - row 2 (batch_start from initialized [should_start] -> started) turns started on in "
        "initialized without running on_start\n"
    ) in out


def test_verify_writes_the_generated_models(tmp_path: Path) -> None:
    from tests.verify_support import require_spin

    require_spin()
    assert main(["verify", "--machine", "stage", "--write-models", str(tmp_path / "models")]) == 0
    text = (tmp_path / "models" / "stage.pml").read_text(encoding="utf-8")
    generated = "/* Generated by modfsm.engine.tools.verify.promela from the declaration "
    assert text.startswith(generated)
    assert "ltl STT1 { [] (applied -> [] applied) }" in text


CLIP_MODULE = """
from typing import Any

import attrs

from modfsm.engine import Event, EventType, Modifier, State, handles


@attrs.define
class ClipModifier(Modifier):
    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        return True

    @handles(EventType.OPTIM_POST_STEP)
    def on_update(self, state: State, event: Event, **kwargs: Any) -> None:
        pass
"""


@pytest.mark.parametrize(
    "args",
    [
        ["clipmods:ClipModifier"],
        ["clipmods.ClipModifier"],
        ["--import", "clipmods", "ClipModifier"],
    ],
    ids=["module:Class", "module.Class", "--import"],
)
def test_diagram_draws_a_class_of_a_local_module(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "clipmods.py").write_text(CLIP_MODULE, encoding="utf-8")
    done = subprocess.run(
        [str(SCRIPT), "diagram", *args], capture_output=True, text=True, check=False,
        cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(
        '---\ntitle: "ClipModifier lifecycle; * = defined by ClipModifier: on_initialize, '
        'on_update; hook(types) = acts on those events only (@handles)"\n---\nstateDiagram-v2\n'
    )
    # @handles(OPTIM_POST_STEP): on_update is left out where it never acts, and named with
    # its event type where the trigger stands for several types
    assert "initialized --> started: batch_start [should_start] / on_start\n" in done.stdout
    assert "started --> ended: batch_end [should_end] / on_end\n" in done.stdout
    assert (
        "started --> started: batch_start | batch_end [!should_end] | "
        "other_event / on_update*(optim_post_step)\n"
    ) in done.stdout


def test_diagram_of_a_module_that_cannot_be_imported_exits_2_naming_it(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(SCRIPT), "diagram", "nosuchmods:ClipModifier"], capture_output=True, text=True,
        check=False, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith(
        "modfsm diagram: nosuchmods:ClipModifier: the module failed to import "
        "(ModuleNotFoundError: No module named 'nosuchmods')."
    )
