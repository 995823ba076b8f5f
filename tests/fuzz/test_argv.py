"""Hostile command lines for every subcommand: ``modfsm ARGV`` ends with exit 0, 1 or 2; a
refusal (2) is one message and writes nothing; it never raises a traceback.

Each example runs in a fresh folder holding a recipe, a trace, a file, a folder and a
checkpoint folder, so paths can be valid, missing, of the wrong kind or occupied.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.oracle import EXAMPLES, LOADED, assert_one_message, invoke, snapshot
from tests.fuzz.strategies import HOSTILE_NUMBERS, HOSTILE_TEXT

ROOT = Path(__file__).resolve().parents[2]
SHORT = ROOT / "tests" / "recipes" / "run" / "short.yaml"
PATHS = st.sampled_from(
    ["recipe.yaml", "trace.jsonl", "file.txt", "folder", "folder/", "missing.yaml",
     "missing/deeper/x.yaml", "ckpt", "ckpt/checkpoint.pt", "/dev/null", "/dev/zero", "/proc",
     "/", ".", "", "out.png", "out.svg", "out.mmd", "new_folder", "file.txt/inside"]
)  # fmt: skip
VALUES = st.one_of(HOSTILE_NUMBERS, HOSTILE_TEXT, PATHS)


def _option(names: list[str], flags: list[str]) -> st.SearchStrategy[list[str]]:
    with_value = st.tuples(st.sampled_from(names), VALUES).map(list)
    return st.one_of(with_value, st.sampled_from(flags).map(lambda f: [f]), with_value)


RUN = _option(
    ["--steps", "--seed", "--batch-size", "--lr", "--device", "--trace", "--checkpoint",
     "--checkpoint-every", "--stop-at", "--device", "--bogus"],
    ["--resume", "--overwrite", "--help-me", "-x"],
)  # fmt: skip
DEMO = _option(["--steps", "--seed", "--out", "--nope"], ["--quiet"])
DIAGRAM = _option(["--format", "-f", "--output", "-o", "--trace", "--steps"],
                  ["--illegal", "--no-self-loops"])  # fmt: skip
VERIFY = _option(["--machine", "--write-models"], ["--all"])
ONESHOT = _option(
    ["--model", "--calib", "--seq-len", "--pipeline", "--output", "-o", "--trace", "--seed",
     "--eval", "--import", "--bogus"],
    ["-q", "--quiet", "--nope"],
)  # fmt: skip
TARGETS = st.one_of(
    st.sampled_from(["lifecycle", "calibration", "stage", "session", "MagnitudePruningModifier",
                     "QuantizationModifier", "Modifier", "NoSuchModifier", "recipe.yaml",
                     "trace.jsonl", "file.txt", "folder", "missing.yaml", "/dev/zero"]),
    HOSTILE_TEXT,
)  # fmt: skip


@st.composite
def command_lines(draw: st.DrawFn) -> list[str]:
    command = draw(st.sampled_from(["run", "demo", "diagram", "trace", "verify", "oneshot",
                                    "other"]))  # fmt: skip
    options: list[str] = []
    count = draw(st.integers(0, 4))
    if command == "run":
        if draw(st.booleans()):
            options.append(draw(st.one_of(PATHS, HOSTILE_TEXT)))
        for _ in range(count):
            options += draw(RUN)
        # a run that passes every check only initializes and finalizes here (see oracle)
        return ["run", *options]
    if command == "oneshot":  # one that passes every check stops before the model loads
        if draw(st.booleans()):
            options.append(draw(st.one_of(PATHS, HOSTILE_TEXT)))
        for _ in range(count):
            options += draw(ONESHOT)
        return ["oneshot", *options]
    if command == "demo":
        for _ in range(count):
            options += draw(DEMO)
        steps = draw(st.sampled_from(["1", "3", "0", "1001", "-2", "x"]))
        return ["demo", "--steps", steps, *options]
    if command == "diagram":
        if draw(st.booleans()):
            options.append(draw(TARGETS))
        for _ in range(count):
            options += draw(DIAGRAM)
        return ["diagram", *options]
    if command == "trace":
        action = draw(st.sampled_from(["verify", "verify", "show", ""]))
        files = draw(st.lists(st.one_of(PATHS, HOSTILE_TEXT), max_size=2))
        return ["trace", *([action] if action else []), *files]
    if command == "verify":  # always with something wrong: a real verify runs Spin (slow)
        bad = draw(st.sampled_from([["--machine", "nope"], ["--write-models", "file.txt"],
                                    ["--write-models", "file.txt/inside"], ["--bogus"],
                                    ["--machine"]]))  # fmt: skip
        for _ in range(count):
            options += draw(VERIFY)
        return ["verify", *options, *bad]
    return draw(st.lists(st.one_of(VALUES, st.sampled_from(["--version", "-h", "--help"])),
                         max_size=3))  # fmt: skip


@contextlib.contextmanager
def workspace() -> Iterator[Path]:
    """A fresh folder with one of each kind of path, as the current directory."""
    before = Path.cwd()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        shutil.copy(SHORT, root / "recipe.yaml")
        (root / "trace.jsonl").write_text('{"kind": "header"}\n')
        (root / "file.txt").write_text("not a recipe\n")
        (root / "folder").mkdir()
        (root / "ckpt").mkdir()
        (root / "ckpt" / "checkpoint.pt").write_bytes(b"modfsm.run/2\nnot really\n")
        os.chdir(root)
        try:
            yield root
        finally:
            os.chdir(before)


@settings(max_examples=EXAMPLES * 2, suppress_health_check=[HealthCheck.too_slow])
@given(argv=command_lines())
def test_any_command_line_ends_in_a_documented_way(argv: list[str]) -> None:
    with workspace() as root:
        before = snapshot(root)
        outcome = invoke(argv, "command lines")
        where = f"modfsm {argv!r}"
        assert outcome.code in (0, 1, 2), (where, outcome)
        if outcome.code == 2:
            if argv[:1] == ["-h"] or "--help" in argv or "-h" in argv:
                return  # argparse prints help and exits 0 before anything else
            assert_one_message(outcome.err, where)
            assert snapshot(root) == before, where
            assert not outcome.trained, where
            if outcome.loaded:  # modfsm oneshot passed every check: nothing was written
                assert LOADED in outcome.err, where
