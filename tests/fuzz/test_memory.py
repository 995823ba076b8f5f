"""Hostile input cannot make ``modfsm`` hold much memory: each command runs in its own process
and its peak resident memory stays within 150 MB of the same command on a harmless input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MEASURE = """
import resource, sys
from modfsm.engine.app.cli import main
code = main(sys.argv[1:])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, code)
"""
MARGIN_MB = 150


def peak_mb(*argv: str) -> tuple[int, int]:
    """(peak resident MB, exit code) of ``modfsm ARGV`` in a fresh process."""
    done = subprocess.run([sys.executable, "-c", MEASURE, *argv], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    peak, code = done.stdout.split()[-2:]
    return int(peak), int(code)


def bomb(path: Path, depth: int) -> Path:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"] + [
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, depth)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow
def test_recipes_and_traces_cannot_blow_up_memory(tmp_path: Path) -> None:
    harmless_trace = tmp_path / "ok.jsonl"
    harmless_trace.write_text('{"kind": "header"}\n')
    baseline_trace, _ = peak_mb("trace", "verify", str(harmless_trace))
    huge_line = tmp_path / "line.jsonl"
    huge_line.write_bytes(b"[" + b"1," * 3_000_000 + b"1]\n")
    for argv in (["trace", "verify", "/dev/zero"], ["trace", "verify", str(huge_line)]):
        peak, code = peak_mb(*argv)
        assert code == 2
        assert peak < baseline_trace + MARGIN_MB, (argv, peak, baseline_trace)

    harmless_recipe = tmp_path / "ok.yaml"
    harmless_recipe.write_text("s_stage:\n  m_modifiers:\n    NoSuchModifier: {}\n")
    baseline_recipe, _ = peak_mb("diagram", str(harmless_recipe), "-o", str(tmp_path / "a.png"))
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * (1 << 22) + "\n")
    for recipe in (bomb(tmp_path / "bomb.yaml", 9), big):
        peak, code = peak_mb("diagram", str(recipe), "-o", str(tmp_path / "b.png"))
        assert code == 2
        assert peak < baseline_recipe + MARGIN_MB, (recipe.name, peak, baseline_recipe)
