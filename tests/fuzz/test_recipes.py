"""Hostile recipes: ``modfsm run RECIPE`` runs one or refuses it with exit 2 and one message,
and changes no file (the training loop is stubbed: see ``oracle``)."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.oracle import EXAMPLES, LOADED, assert_refused, invoke, unchanged
from tests.fuzz.strategies import YAML_KEYS, YAML_VALUES, damaged_bytes

ROOT = Path(__file__).resolve().parents[2]
SEEDS = [
    *sorted((ROOT / "tests" / "recipes" / "good").glob("*.yaml")),
    ROOT / "tests" / "recipes" / "run" / "short.yaml",
    ROOT / "engine" / "app" / "data" / "default_recipe.yaml",
]
TEXTS = [path.read_bytes() for path in SEEDS]
ONE_SHOT_TEXTS = [
    p.read_bytes() for p in sorted((ROOT / "docs" / "recipes").glob("oneshot_*.yaml"))
]
_SCALAR = re.compile(rb"(?m)(:[ \t]+)([^\s#][^\n#]*)$")
_KEY = re.compile(rb"(?m)^([ \t]*(?:- )?)([A-Za-z_][\w.]*)(:)")


@st.composite
def hostile_recipes(draw: st.DrawFn, texts: list[bytes] = TEXTS) -> bytes:
    """A shipped recipe with a value, a key, lines or bytes replaced; or a built bomb."""
    text = draw(st.sampled_from(texts))
    kind = draw(st.sampled_from(["value", "key", "lines", "bytes", "nest", "bomb", "tail"]))
    if kind == "value" and (spots := list(_SCALAR.finditer(text))):
        spot = draw(st.sampled_from(spots))
        value = draw(YAML_VALUES).encode()
        return text[: spot.start(2)] + value + text[spot.end(2) :]
    if kind == "key" and (spots := list(_KEY.finditer(text))):
        spot = draw(st.sampled_from(spots))
        return text[: spot.start(2)] + draw(YAML_KEYS).encode() + text[spot.end(2) :]
    if kind == "lines":
        lines = text.split(b"\n")
        at = draw(st.integers(0, len(lines) - 1))
        operation = draw(st.sampled_from(["drop", "repeat", "indent", "dedent", "swap"]))
        if operation == "drop":
            del lines[at]
        elif operation == "repeat":
            lines.insert(at, lines[at])
        elif operation == "indent":
            lines[at] = b"  " + lines[at]
        elif operation == "dedent":
            lines[at] = lines[at].lstrip()
        else:
            other = draw(st.integers(0, len(lines) - 1))
            lines[at], lines[other] = lines[other], lines[at]
        return b"\n".join(lines)
    if kind == "nest":
        depth = draw(st.sampled_from([63, 65, 200, 5000]))
        return b"s_stage:\n  x: " + b"[" * depth + b"1" + b"]" * depth + b"\n"
    if kind == "bomb":
        width, depth = draw(st.integers(2, 12)), draw(st.integers(2, 9))
        lines = [b"a0: &a0 [x]"] + [
            b"a%d: &a%d [%s]" % (i, i, b", ".join([b"*a%d" % (i - 1)] * width))
            for i in range(1, depth)
        ]
        return b"\n".join(lines) + b"\n" + text
    if kind == "tail":
        tail = draw(st.sampled_from([b"\n---\nb: 1\n", b"\x00", b"\xff\xfe", b"\t:", b"key"]))
        return text + (b"\n" + draw(YAML_KEYS).encode() + b": 1\n" if tail == b"key" else tail)
    return draw(damaged_bytes(text))


@settings(max_examples=EXAMPLES, suppress_health_check=[HealthCheck.too_slow])
@given(recipe=hostile_recipes())
def test_a_hostile_recipe_runs_or_is_refused_with_one_message(recipe: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "recipe.yaml"
        path.write_bytes(recipe)
        argv = ["run", str(path), "--steps", "5"]
        with unchanged(Path(folder), repr(recipe[:200])):
            outcome = invoke(argv, "recipes")
        if outcome.code != 0:
            assert_refused(outcome, argv)
        else:
            assert outcome.out.startswith("modfsm run: "), outcome


@settings(max_examples=EXAMPLES // 2, suppress_health_check=[HealthCheck.too_slow])
@given(recipe=hostile_recipes(ONE_SHOT_TEXTS))
def test_a_hostile_one_shot_recipe_is_refused_with_one_message_before_any_work(
    recipe: bytes,
) -> None:
    # the one-shot modifiers (GPTQ, SparseGPT, SmoothQuant, AWQ, NVFP4, KV-cache schemes)
    # check every argument before the model loads; one that passes stops there (oracle)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "recipe.yaml"
        path.write_bytes(recipe)
        argv = ["oneshot", str(path), "--calib", "1"]
        with unchanged(Path(folder), repr(recipe[:200])):
            outcome = invoke(argv, "one-shot recipes")
        assert_refused(outcome, argv)
        assert outcome.loaded == (LOADED in outcome.err), outcome
