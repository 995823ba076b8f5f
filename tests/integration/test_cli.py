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
