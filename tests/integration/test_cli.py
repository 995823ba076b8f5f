"""The modfsm command line."""

from __future__ import annotations

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
