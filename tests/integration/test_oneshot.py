"""``modfsm oneshot`` end to end on a small built-in LM (trained once per test session, in a
temporary cache) and through the command line on a local model folder: the papers' headline
relations, the written model, the trace, and the refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks.oneshot import GPTQ_CHANNEL, GPTQ_W4A16, SPARSEGPT, magnitude_prune, rtn
from modfsm.engine.app import causal_lm
from modfsm.engine.app.oneshot import (
    OneshotConfig,
    OneshotResult,
    format_summary,
    oneshot,
    read_compressed,
)
from modfsm.engine.tools.replay import read_jsonl, verify

pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).parent / "modfsm"
#: every linear layer has 128 inputs or a multiple (group 128 applies), trained in seconds
SMALL = causal_lm.LMSettings(
    hidden=128, intermediate=256, layers=2, heads=2, kv_heads=1, max_positions=64,
    data_bytes=300_000, seq_len=32, batch_size=8, steps=400, lr=1e-2, warmup=5,
    eval_sequences=16,
)  # fmt: skip


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("lm-cache")
    causal_lm.load_builtin_lm(folder, progress=False, settings=SMALL)
    return folder


def run(cache: Path, recipe: Any, **options: Any) -> OneshotResult:
    settings = {"calib": 32, "seq_len": 32, "eval_sequences": 32, **options}
    config = OneshotConfig(recipe=recipe, cache_dir=cache, lm_settings=SMALL, **settings)
    return oneshot(config)


def baseline(cache: Path, apply: Any) -> float:
    built = causal_lm.load_builtin_lm(cache, progress=False, settings=SMALL)
    apply(built.model)
    return causal_lm.perplexity(built.model, causal_lm.heldout_batches(built.corpus, 32, 32))


@pytest.mark.parametrize(
    ("recipe", "weights"),
    [
        (GPTQ_W4A16, {"num_bits": 4, "symmetric": True, "strategy": "group", "group_size": 128}),
        (GPTQ_CHANNEL, {"num_bits": 4, "symmetric": True, "strategy": "channel"}),
    ],
    ids=["w4a16-g128", "w4-channel"],
)
def test_gptq_keeps_perplexity_closer_to_the_float_model_than_round_to_nearest(
    cache: Path, recipe: str, weights: dict[str, Any]
) -> None:
    result = run(cache, recipe)
    rounded = baseline(cache, lambda model: rtn(model, weights))
    # the perplexity increase over the float model is smaller than round-to-nearest's
    assert result.perplexity_after - result.perplexity_before < rounded - result.perplexity_before
    quantized = [row for row in result.layers if row.name != "lm_head"]
    assert {row.bits for row in quantized} == {4}


@pytest.mark.parametrize("structure", ["0:0", "2:4"])
def test_sparsegpt_keeps_perplexity_closer_than_magnitude_pruning(
    cache: Path, structure: str
) -> None:
    result = run(cache, SPARSEGPT.format(structure=structure), pipeline="sequential")
    pruned = baseline(cache, lambda model: magnitude_prune(model, structure))
    assert result.perplexity_after - result.perplexity_before < pruned - result.perplexity_before
    layers = [row for row in result.layers if row.name != "lm_head"]
    assert {round(row.sparsity, 6) for row in layers} == {0.5}


def test_the_2_of_4_pattern_holds_exactly_in_the_written_model(cache: Path, tmp_path: Path) -> None:
    run(cache, SPARSEGPT.format(structure="2:4"), output=tmp_path / "out")
    weights = read_compressed(tmp_path / "out")
    linear = [name for name in weights if ".layers." in name and name.endswith("proj.weight")]
    assert len(linear) == 14
    for name in linear:
        groups = (weights[name] != 0).reshape(-1, 4).sum(dim=1)
        assert set(groups.tolist()) == {2}, name


def test_sparsify_then_quantize_runs_end_to_end_and_writes_what_it_computed(
    cache: Path, tmp_path: Path
) -> None:
    recipe = ROOT / "docs" / "recipes" / "oneshot_sparse_then_gptq.yaml"
    result = run(cache, recipe, output=tmp_path / "out", trace=tmp_path / "run.jsonl")
    assert result.modifiers == ("SparseGPTModifier", "GPTQModifier")
    layers = [row for row in result.layers if row.name != "lm_head"]
    assert all(row.bits == 4 and row.sparsity >= 0.5 for row in layers)
    assert result.compressed_bytes < result.float_bytes / 2
    assert (tmp_path / "out" / "recipe.yaml").read_text() == recipe.read_text()
    weights = read_compressed(tmp_path / "out")
    built = causal_lm.load_builtin_lm(cache, progress=False, settings=SMALL)
    assert set(weights) == set(built.model.state_dict())
    outcome = verify(read_jsonl(tmp_path / "run.jsonl"))
    assert outcome.ok, outcome.divergence


ONESHOT_RECIPES = sorted((ROOT / "docs" / "recipes").glob("oneshot_*.yaml"))


@pytest.mark.parametrize("recipe", ONESHOT_RECIPES, ids=lambda path: path.name)
def test_every_sample_one_shot_recipe_runs_end_to_end(cache: Path, recipe: Path) -> None:
    assert len(ONESHOT_RECIPES) >= 6
    result = run(cache, recipe, calib=8)
    assert result.modifiers
    changed = [row for row in result.layers if row.bits is not None or row.sparsity >= 0.5]
    assert len(changed) == 14, result.layers  # every decoder Linear layer, not the head
    assert result.perplexity_after < 2 * result.perplexity_before
    printed = format_summary(result)
    assert ("\nkv cache: " in printed) == ("kv_cache_scheme" in recipe.read_text())


def test_the_default_recipe_is_the_sample_gptq_recipe() -> None:
    from modfsm.engine.app.oneshot import default_recipe_text

    assert default_recipe_text() == (ROOT / "docs/recipes/oneshot_gptq_w4a16.yaml").read_text()


def small_model_folder(folder: Path) -> Path:
    """The small built-in LM saved as a plain transformers folder (a ``--model`` argument)."""
    torch.manual_seed(0)
    model = causal_lm.build_model(SMALL)
    model.save_pretrained(folder)
    return folder


def cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), "oneshot", *argv], capture_output=True, text=True,
                          check=False, cwd=cwd, timeout=300)  # fmt: skip


def test_the_command_compresses_a_local_model_folder_and_writes_model_recipe_and_trace(
    tmp_path: Path,
) -> None:
    model = small_model_folder(tmp_path / "model")
    recipe = ROOT / "docs" / "recipes" / "oneshot_sparsegpt_2of4.yaml"
    done = cli(str(recipe), "--model", str(model), "--calib", "8", "--seq-len", "32",
               "--eval", "8", "--pipeline", "basic", "--output", "out", "--trace", "t.jsonl",
               cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"modfsm oneshot: SparseGPTModifier on {model}"
    assert "8 calibration sequences of 32 tokens, basic pipeline" in lines[1]
    assert lines[2].startswith("perplexity (held-out): ")
    assert any(line.startswith("model.layers.1.mlp.down_proj") and "50.0%" in line
               for line in lines)  # fmt: skip
    assert lines[-1].startswith("wrote ")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "config.json", "model.safetensors", "recipe.yaml",
    ]  # fmt: skip
    json.loads((tmp_path / "out" / "config.json").read_text())
    checked = subprocess.run([str(SCRIPT), "trace", "verify", "t.jsonl"], capture_output=True,
                             text=True, check=False, cwd=tmp_path, timeout=120)  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "missing"], "--model 'missing' does not exist. To fix, pass --model a folder"),
        (["--model", "MODEL", "--output", "MODEL"], "already exists, and a compressed model is "
         "never written over another"),
        (["BAD", "--model", "MODEL"], "NoSuchModifier"),
        (["--model", "MODEL", "--calib", "0"], "argument --calib: expected a number >= 1"),
        (["--model", "MODEL", "--pipeline", "fast"], "argument --pipeline: invalid choice"),
        (["/dev/zero", "--model", "MODEL"], "the file is larger than 1,048,576 bytes"),
    ],
    ids=["missing-model", "output-exists", "unknown-modifier", "calib-0", "pipeline", "endless"],
)
def test_bad_input_exits_2_with_one_message_and_writes_nothing(
    argv: list[str], message: str, tmp_path: Path
) -> None:
    small_model_folder(tmp_path / "MODEL")
    (tmp_path / "BAD").write_text(
        "my_stage:\n  my_modifiers:\n    NoSuchModifier: {}\n"
        "    GPTQModifier: {scheme: W4A16, frobnicate: 1}\n"
    )
    before = sorted(p.name for p in tmp_path.rglob("*"))
    done = cli(*argv, cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    if "NoSuchModifier" in argv or argv[0] == "BAD":
        assert "frobnicate" in done.stderr  # every unsupported item, at once
