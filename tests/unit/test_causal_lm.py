"""The built-in causal LM (modfsm.engine.app.causal_lm): names, data, cache, evaluation.

Every test but the module-name check uses a much smaller model and a few dozen steps
(:data:`TINY`); the real model is trained by ``python -m modfsm.engine.app.causal_lm``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import attrs
import pytest
import torch

from modfsm.engine.app import causal_lm
from modfsm.engine.app.causal_lm import (
    BUILTIN,
    METADATA,
    BuiltinLM,
    ByteTokenizer,
    Corpus,
    LMSettings,
    ModelFolderError,
    build_model,
    calibration_batches,
    heldout_batches,
    load_builtin_lm,
    load_corpus,
    load_local_lm,
    perplexity,
)
from modfsm.engine.kernel.errors import ConfigError

TINY = LMSettings(
    hidden=32,
    intermediate=64,
    layers=1,
    heads=2,
    kv_heads=1,
    max_positions=64,
    data_bytes=150_000,
    seq_len=32,
    batch_size=8,
    steps=40,
    lr=1e-2,
    warmup=5,
    eval_sequences=16,
)

LLAMA_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")  # fmt: skip


@attrs.define
class Trainings:
    """Counts the calls of causal_lm.train made through load_builtin_lm."""

    calls: int = 0


@pytest.fixture
def trainings(monkeypatch: pytest.MonkeyPatch) -> Trainings:
    counter = Trainings()
    real = causal_lm.train

    def counted(*args: Any, **kwargs: Any) -> Any:
        counter.calls += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(causal_lm, "train", counted)
    return counter


@pytest.fixture(scope="module")
def trained_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder holding the trained TINY model (trained once for the module)."""
    root = tmp_path_factory.mktemp("cache")
    load_builtin_lm(root, progress=False, settings=TINY)
    return root


@pytest.fixture
def cache(trained_cache: Path, tmp_path: Path) -> Path:
    """A private copy of the trained cache, free to damage."""
    root = tmp_path / "cache"
    shutil.copytree(trained_cache, root)
    return root


def model_folder(root: Path) -> Path:
    (folder,) = (path for path in root.iterdir() if path.name.startswith("builtin-lm-"))
    return folder


def weights(lm: BuiltinLM) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in lm.model.state_dict().items()}


# --- the model ----------------------------------------------------------------------------


def test_the_builtin_model_has_the_llama_family_module_names() -> None:
    model = build_model(BUILTIN)
    linears = {name for name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear)}  # fmt: skip
    expected = {f"model.layers.{i}.{name}" for i in range(4) for name in LLAMA_LINEARS}
    assert linears == expected | {"lm_head"}
    names = {name for name, _ in model.named_modules()}
    for i in range(4):
        assert {f"model.layers.{i}.input_layernorm",
                f"model.layers.{i}.post_attention_layernorm"} <= names  # fmt: skip
    assert {"model.embed_tokens", "model.norm"} <= names
    assert type(model).__name__ == "LlamaForCausalLM"


def test_every_linear_layer_of_the_builtin_model_takes_groups_of_128() -> None:
    model = build_model(BUILTIN)
    config = model.config
    sizes = {
        name: (module.in_features, module.out_features)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    }
    assert all(inputs % 128 == 0 for inputs, _ in sizes.values())
    assert sizes["model.layers.0.mlp.down_proj"] == (384, 128)
    assert sizes["model.layers.0.self_attn.k_proj"] == (128, 64)  # 2 kv heads of 32
    heads = (config.num_attention_heads, config.num_key_value_heads)
    assert (config.vocab_size, heads) == (256, (4, 2))
    assert config.max_position_embeddings >= 256
    assert config.tie_word_embeddings is False
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert sum(parameter.numel() for parameter in model.parameters()) == 853_120


def test_construction_is_deterministic_and_leaves_the_global_random_state_alone() -> None:
    state = torch.random.get_rng_state()
    first, second = build_model(TINY).state_dict(), build_model(TINY).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(first[name], second[name]) for name in first)
    other = build_model(attrs.evolve(TINY, seed=1)).state_dict()
    assert not torch.equal(first["lm_head.weight"], other["lm_head.weight"])


@pytest.mark.parametrize(
    ("field", "value"),
    [("hidden", 0), ("heads", 3), ("seq_len", 65), ("lr", 0.0), ("heldout_every", 1),
     ("batch_size", True)],
)  # fmt: skip
def test_settings_that_cannot_build_a_model_are_refused(field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"^LMSettings: {field}=.* To fix, give ") as caught:
        attrs.evolve(TINY, **{field: value})
    assert caught.value.field == field


# --- the tokenizer ------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "def f(x):\n    return x\n", "héllo wörld ✓", "\x00\xff"])
def test_the_byte_tokenizer_round_trips_text(text: str) -> None:
    tokenizer = ByteTokenizer()
    ids = tokenizer.encode(text)
    assert ids.dtype == torch.long
    assert ids.tolist() == list(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text


def test_the_byte_tokenizer_round_trips_any_bytes() -> None:
    tokenizer = ByteTokenizer()
    data = bytes(range(256))
    assert tokenizer.decode_bytes(tokenizer.encode(data)) == data
    assert tokenizer.decode([0xFF, 0x41]) == "\ufffdA"  # not UTF-8: replaced, not an error


def test_the_byte_tokenizer_refuses_an_id_that_is_not_a_byte() -> None:
    with pytest.raises(ConfigError, match=r"^ByteTokenizer: id 256 is not a byte\. To fix, "):
        ByteTokenizer().decode([65, 256])


# --- the data -----------------------------------------------------------------------------


def test_the_corpus_is_split_by_file_without_tests() -> None:
    corpus = load_corpus(TINY)
    files = corpus.train_files + corpus.heldout_files
    assert not set(corpus.train_files) & set(corpus.heldout_files)
    assert len(corpus.heldout_files) == len(files) // TINY.heldout_every
    assert all(name.endswith(".py") for name in files)
    assert not any({"test", "tests", "site-packages"} & set(name.split("/")) for name in files)
    assert sum(map(len, (corpus.train, corpus.heldout))) >= TINY.data_bytes
    assert load_corpus(TINY) == corpus


def test_the_corpus_digest_covers_the_bytes_used(tmp_path: Path) -> None:
    for index in range(12):
        (tmp_path / f"module{index}.py").write_text(f"x = {index}\n" * 40)
    small = attrs.evolve(TINY, data_bytes=1)
    settings = attrs.evolve(small, data_bytes=100_000, seq_len=8, max_positions=8)
    before = load_corpus(settings, root=tmp_path)
    (tmp_path / "module3.py").write_text("x = 3\n" * 39 + "x = 4\n")
    after = load_corpus(settings, root=tmp_path)
    assert before.train_files + before.heldout_files == after.train_files + after.heldout_files
    assert before.digest != after.digest
    with pytest.raises(ConfigError, match=r"is too small .* To fix, raise data_bytes"):
        load_corpus(small, root=tmp_path)


def synthetic_corpus() -> Corpus:
    """Training bytes are below 128, held-out bytes 128 and above."""
    return Corpus(train=bytes(range(128)) * 8, heldout=bytes(range(128, 256)) * 4,
                  train_files=("a.py",), heldout_files=("b.py",), digest="0" * 64)  # fmt: skip


def ids(batches: list[dict[str, torch.Tensor]]) -> list[list[int]]:
    return [row for batch in batches for row in batch["input_ids"].tolist()]


def test_calibration_batches_are_deterministic_per_seed_and_from_the_train_split() -> None:
    corpus = synthetic_corpus()
    first = calibration_batches(corpus, 10, 16, seed=3, batch_size=4)
    again = calibration_batches(corpus, 10, 16, seed=3, batch_size=4)
    other = calibration_batches(corpus, 10, 16, seed=4, batch_size=4)
    assert [batch["input_ids"].shape for batch in first] == [(4, 16), (4, 16), (2, 16)]
    assert ids(first) == ids(again)
    assert ids(first) != ids(other)
    for batch in first:
        assert torch.equal(batch["attention_mask"], torch.ones_like(batch["input_ids"]))
        for row in batch["input_ids"]:
            assert bytes(row.tolist()) in corpus.train
            assert max(row.tolist()) < 128  # no held-out byte


def test_heldout_batches_are_fixed_windows_of_the_heldout_split() -> None:
    corpus = Corpus(train=b"t" * 500, heldout=bytes(range(256)), train_files=("a.py",),
                    heldout_files=("b.py",), digest="0" * 64)  # fmt: skip
    batches = heldout_batches(corpus, 5, 16, batch_size=2)
    starts = [row[0] for row in ids(batches)]
    assert starts == [0, 60, 120, 180, 240]  # evenly spread, the last one ends at the end
    assert heldout_batches(corpus, 5, 16, batch_size=2)[2]["input_ids"].tolist() == [
        list(range(240, 256))
    ]


def test_windows_longer_than_the_split_are_refused() -> None:
    too_long = r"held-out split holds 512 tokens, too few for windows of 600"
    with pytest.raises(ConfigError, match=too_long):
        heldout_batches(synthetic_corpus(), 2, 600)
    with pytest.raises(ConfigError, match=r"n=0 is not valid"):
        calibration_batches(synthetic_corpus(), 0, 8, seed=0)


# --- perplexity ---------------------------------------------------------------------------


def test_a_model_that_predicts_nothing_has_the_vocabulary_as_perplexity() -> None:
    model = build_model(TINY)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    batches = heldout_batches(load_corpus(TINY), 4, 16)
    assert perplexity(model, batches) == pytest.approx(256.0)


def test_perplexity_skips_masked_positions_and_restores_the_mode() -> None:
    model = build_model(TINY)
    model.train()
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    both = perplexity(model, [{"input_ids": ids, "attention_mask": mask}])
    model.train(False)
    with torch.no_grad():
        nll = [
            float(model(input_ids=ids[:1], labels=ids[:1]).loss) * 15,
            float(model(input_ids=ids[1:, :8], labels=ids[1:, :8]).loss) * 7,
        ]
    assert both == pytest.approx(torch.tensor(sum(nll) / 22).exp().item(), rel=1e-5)
    model.train()
    perplexity(model, [{"input_ids": ids}])
    assert model.training


# --- the cache ----------------------------------------------------------------------------


def test_a_trained_tiny_model_has_a_lower_heldout_perplexity(cache: Path) -> None:
    lm = load_builtin_lm(cache, progress=False, settings=TINY)
    assert lm.perplexity < 0.5 * lm.perplexity_before
    assert lm.perplexity_before == pytest.approx(perplexity(build_model(TINY), lm.heldout()))
    assert perplexity(lm.model, lm.heldout()) == pytest.approx(lm.perplexity, rel=1e-5)
    assert not lm.model.training
    assert (lm.path, lm.parameters) == (model_folder(cache), 25_696)


def test_the_cache_is_made_once_and_then_reused(tmp_path: Path, trainings: Trainings) -> None:
    made = load_builtin_lm(tmp_path, progress=False, settings=TINY)
    reused = load_builtin_lm(tmp_path, progress=False, settings=TINY)
    assert (made.trained, reused.trained, trainings.calls) == (True, False, 1)
    assert made.perplexity == reused.perplexity
    saved = weights(made)
    assert all(torch.equal(saved[name], tensor) for name, tensor in weights(reused).items())
    assert {path.name for path in made.path.iterdir()} == {
        "config.json", "generation_config.json", METADATA, "model.safetensors"
    }  # fmt: skip
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == [
        f".{made.path.name}.lock"
    ]  # no temporary folder is left


def test_a_truncated_weights_file_is_detected_and_trained_again(
    cache: Path, trainings: Trainings
) -> None:
    weights_file = model_folder(cache) / "model.safetensors"
    data = weights_file.read_bytes()
    weights_file.write_bytes(data[: len(data) // 2])
    lm = load_builtin_lm(cache, progress=False, settings=TINY)
    assert (lm.trained, trainings.calls) == (True, 1)
    assert weights_file.read_bytes() == data  # training is deterministic
    assert not load_builtin_lm(cache, progress=False, settings=TINY).trained


def test_a_flipped_weight_byte_is_detected_and_trained_again(
    cache: Path, trainings: Trainings
) -> None:
    weights_file = model_folder(cache) / "model.safetensors"
    data = bytearray(weights_file.read_bytes())
    data[-5] ^= 0x01
    weights_file.write_bytes(bytes(data))
    assert load_builtin_lm(cache, progress=False, settings=TINY).trained
    assert trainings.calls == 1


def test_edited_metadata_is_detected_and_trained_again(
    cache: Path, trainings: Trainings, capsys: pytest.CaptureFixture[str]
) -> None:
    metadata_file = model_folder(cache) / METADATA
    metadata = json.loads(metadata_file.read_text())
    metadata["perplexity"] = 1.0
    metadata_file.write_text(json.dumps(metadata))
    lm = load_builtin_lm(cache, progress=True, settings=TINY)
    assert (lm.trained, trainings.calls) == (True, 1)
    assert lm.perplexity > 1.0
    assert "was changed after it was written (its seal differs)" in capsys.readouterr().err


def test_a_cache_made_for_another_key_is_not_used(cache: Path, trainings: Trainings) -> None:
    other = attrs.evolve(TINY, steps=TINY.steps + 1)
    made = model_folder(cache)
    other_folder = cache / f"builtin-lm-{causal_lm.cache_key(other, load_corpus(other))[:16]}"
    shutil.copytree(made, other_folder)  # the right name, the wrong contents
    lm = load_builtin_lm(cache, progress=False, settings=other)
    assert (lm.trained, lm.path, trainings.calls) == (True, other_folder, 1)
    assert json.loads((other_folder / METADATA).read_text())["settings"]["steps"] == 41
    assert not load_builtin_lm(cache, progress=False, settings=TINY).trained  # untouched


def test_the_cache_key_changes_with_settings_and_data() -> None:
    corpus = load_corpus(TINY)
    key = causal_lm.cache_key(TINY, corpus)
    assert key == causal_lm.cache_key(TINY, load_corpus(TINY))
    assert key != causal_lm.cache_key(attrs.evolve(TINY, lr=2e-2), corpus)
    assert key != causal_lm.cache_key(TINY, attrs.evolve(corpus, digest="1" * 64))


def test_two_loads_at_once_train_once(tmp_path: Path, trainings: Trainings) -> None:
    results: list[BuiltinLM] = []

    def load() -> None:
        results.append(load_builtin_lm(tmp_path, progress=False, settings=TINY))

    threads = [threading.Thread(target=load) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(lm.trained for lm in results) == [False, True]
    assert trainings.calls == 1


def test_a_copy_that_loses_the_race_is_discarded(tmp_path: Path) -> None:
    folder, temporary = tmp_path / "builtin-lm-x", tmp_path / ".builtin-lm-x.tmp-1"
    for path, text in ((folder, "winner"), (temporary, "loser")):
        path.mkdir()
        (path / "model.safetensors").write_text(text)
    assert causal_lm._install(temporary, folder) is False
    assert not temporary.exists()
    assert (folder / "model.safetensors").read_text() == "winner"


def test_leftovers_of_a_dead_writer_are_removed(cache: Path, trainings: Trainings) -> None:
    folder = model_folder(cache)
    leftover = cache / f".{folder.name}.tmp-abc"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"half")
    shutil.rmtree(folder)
    load_builtin_lm(cache, progress=False, settings=TINY)
    assert not leftover.exists()


def test_an_unwritable_cache_folder_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    refused = (r"^the built-in LM cannot be cached: .* is a file, not a folder\. To fix, set "
               r"MODFSM_CACHE to a folder you can write")  # fmt: skip
    with pytest.raises(ConfigError, match=refused):
        load_builtin_lm(blocker, progress=False, settings=TINY)


def test_the_default_cache_folder_follows_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MODFSM_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert causal_lm.default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("MODFSM_CACHE")
    assert causal_lm.default_cache_dir() == tmp_path / "xdg" / "modfsm"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert causal_lm.default_cache_dir() == tmp_path / ".cache" / "modfsm"


# --- a local model ------------------------------------------------------------------------


def test_a_saved_model_folder_loads_with_the_byte_tokenizer(cache: Path) -> None:
    folder = model_folder(cache)
    local = load_local_lm(folder)
    builtin = load_builtin_lm(cache, progress=False, settings=TINY)
    assert isinstance(local.tokenizer, ByteTokenizer)
    assert type(local.model).__name__ == "LlamaForCausalLM"
    assert not local.model.training
    assert perplexity(local.model, builtin.heldout()) == pytest.approx(builtin.perplexity, rel=1e-5)


def test_a_saved_model_folder_loads_its_own_tokenizer(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "def": 1, "f": 2}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    model = build_model(TINY)
    model.save_pretrained(tmp_path)
    # transformers leaves the tokenizer's constructor unannotated
    fast = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")  # type: ignore[no-untyped-call]
    fast.save_pretrained(tmp_path)
    local = load_local_lm(tmp_path)
    assert not isinstance(local.tokenizer, ByteTokenizer)
    corpus = Corpus(train=b"def f " * 40, heldout=b"f def " * 40, train_files=("a.py",),
                    heldout_files=("b.py",), digest="0" * 64)  # fmt: skip
    (batch,) = calibration_batches(corpus, 1, 6, seed=0, tokenizer=local.tokenizer)
    assert set(batch["input_ids"].flatten().tolist()) == {1, 2}


FIX = "To fix, pass --model a folder written by save_pretrained (config.json and its weights)."


@pytest.mark.parametrize(
    ("setup", "problem"),
    [
        ("missing", "does not exist"),
        ("file", "is a file, not a model folder"),
        ("empty", "is not a model folder (it has no config.json)"),
    ],
)
def test_a_path_that_is_not_a_model_folder_is_refused(
    tmp_path: Path, setup: str, problem: str
) -> None:
    path = tmp_path / "model"
    if setup == "file":
        path.write_text("")
    elif setup == "empty":
        path.mkdir()
    with pytest.raises(ModelFolderError) as caught:
        load_local_lm(path)
    assert str(caught.value) == f"--model {str(path)!r} {problem}. {FIX}"
    assert (caught.value.path, caught.value.field) == (path, "model")
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("damage", ["config", "weights", "truncated"])
def test_a_damaged_model_folder_is_refused_with_its_path(tmp_path: Path, damage: str) -> None:
    build_model(TINY).save_pretrained(tmp_path)
    weights_file = tmp_path / "model.safetensors"
    if damage == "config":
        (tmp_path / "config.json").write_text("{not json")
    elif damage == "weights":
        weights_file.unlink()
    else:
        weights_file.write_bytes(weights_file.read_bytes()[:100])
    with pytest.raises(ModelFolderError, match=rf"^--model {str(tmp_path)!r} cannot be loaded as "
                       r"a causal language model \(.*\)\. To fix, check that it holds a complete "
                       r"causal LM"):  # fmt: skip
        load_local_lm(tmp_path)


def test_a_model_without_a_tokenizer_needs_a_byte_vocabulary(tmp_path: Path) -> None:
    from transformers import LlamaForCausalLM

    config = causal_lm.llama_config(TINY)
    config.vocab_size = 300
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    refused = (r"holds no tokenizer, and its vocabulary \(300 tokens\) is not bytes \(256\)\. "
               r"To fix, save the model's tokenizer")  # fmt: skip
    with pytest.raises(ModelFolderError, match=refused):
        load_local_lm(tmp_path)


# --- transformers is optional -------------------------------------------------------------


def test_importing_the_module_does_not_import_transformers() -> None:
    code = "import sys, modfsm.engine.app.causal_lm; print('transformers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, env={**os.environ, "PYTHONWARNINGS": "error"})  # fmt: skip
    assert result.stdout.strip() == "False"


def test_a_missing_transformers_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ModuleNotFoundError, match=r"need transformers\. To fix, pip install "
                       r"'modfsm\[transformers\]' \(or transformers\)\.$"):  # fmt: skip
        load_builtin_lm(Path("unused"), progress=False, settings=TINY)
    assert ByteTokenizer().decode(ByteTokenizer().encode("still works")) == "still works"


# --- the script ---------------------------------------------------------------------------


def test_the_script_reports_perplexity_time_and_cache(
    cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = causal_lm.load_builtin_lm

    def tiny(cache_dir: Path | None = None, *, progress: bool = True) -> BuiltinLM:
        return real(cache_dir, progress=progress, settings=TINY)

    monkeypatch.setattr(causal_lm, "load_builtin_lm", tiny)
    assert causal_lm.main(["--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "model: LlamaForCausalLM, 25,696 parameters" in out
    assert "held-out perplexity per byte: " in out
    assert "loaded from the cache in " in out
    assert str(model_folder(cache)) in out
