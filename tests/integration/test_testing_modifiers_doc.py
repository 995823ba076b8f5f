"""docs/testing-modifiers.md is true: its examples run, pass where it says so and fail as shown."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

DOC = (Path(__file__).resolve().parents[2] / "docs" / "testing-modifiers.md").read_text(
    encoding="utf-8"
)
BLOCKS = re.findall(r"```python\n(.*?)```", DOC, re.S)
SHOWN = re.search(r"Output:\n\n```text\n(.*?)```", DOC, re.S)


def run_blocks(count: int) -> dict[str, Any]:
    """Execute the first ``count`` python blocks in one namespace, as a reader would."""
    namespace: dict[str, Any] = {"__name__": "testing_modifiers_doc"}
    for code in BLOCKS[:count]:
        exec(compile(code, "docs/testing-modifiers.md", "exec"), namespace)
    return namespace


def test_the_test_in_the_title_takes_at_most_10_lines() -> None:
    assert "# Property-test your modifier in 10 lines" in DOC
    test = BLOCKS[1]
    assert "class TestClipWeights(ModifierContract)" in test
    assert len(test.strip().splitlines()) <= 10


def test_the_documented_test_class_runs_every_check_and_passes() -> None:
    namespace = run_blocks(2)
    case = namespace["TestClipWeights"]()
    tests = [name for name in dir(case) if name.startswith("test_")]
    assert len(tests) == 5
    for name in tests:
        getattr(case, name)()


def test_the_documented_failure_prints_exactly_the_output_shown(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert SHOWN is not None
    run_blocks(3)
    assert capsys.readouterr().out == SHOWN.group(1)


def test_the_documented_fixture_use_passes(modfsm_contract: Callable[..., Any]) -> None:
    namespace = run_blocks(4)
    namespace["test_clip_weights_keeps_the_contract"](modfsm_contract)
