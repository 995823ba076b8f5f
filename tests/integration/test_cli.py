"""The modfsm command line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from engine import LIFECYCLE
from engine.cli import main

SCRIPT = Path(sys.executable).parent / "modfsm"


def test_the_console_script_prints_the_lifecycle_diagram() -> None:
    result = subprocess.run(
        [str(SCRIPT), "diagram"], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.startswith("---\nmodfsm modifier lifecycle\n---\nstateDiagram-v2")
    for state in LIFECYCLE.state_names():
        assert f'state "{state}" as {state}' in result.stdout


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
    from engine.session import Session
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
    from engine.verify.properties import MACHINES
    from engine.verify.structure import STRUCTURAL
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
    from engine.verify import properties
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
    assert text.startswith("/* Generated by engine.verify.promela from the declaration ")
    assert "ltl STT1 { [] (applied -> [] applied) }" in text
