"""A built-in causal language model for one-shot compression that needs no download.

:func:`load_builtin_lm` returns a tiny ``transformers`` ``LlamaForCausalLM`` (about 0.85 M
parameters: hidden 128, intermediate 384, 4 layers, 4 attention heads sharing 2
key/value heads, rotary positions up to 256, untied ``lm_head``) trained on bytes of
the Python standard library's own sources. Its module names are the Llama family's
in Hugging Face (``model.layers.N.self_attn.q_proj``, ``model.layers.N.mlp.down_proj``,
``model.norm``, ``lm_head``, ...), so recipes written for Llama checkpoints target it
unchanged, and every linear layer's input size is a multiple of 128 (group-128
quantization applies to all of them).

Theory of operation:

1. **Data** (:func:`load_corpus`). The ``.py`` files of ``sysconfig.get_paths()["stdlib"]``,
   less tests, ``site-packages``, the generated codec tables (``encodings``,
   ``pydoc_data``) and files over 256 KiB, ordered by the SHA-256 of their relative
   path (a fixed shuffle, the same on every machine), taken in that order up to
   :attr:`LMSettings.data_bytes`. Every tenth file is held out. The standard library
   differs between Python patch releases, so the corpus carries a digest of the bytes
   it holds, and the cache key includes it.
2. **Training** (:func:`train`). Seeded construction (:func:`build_model`), AdamW,
   linear warmup then cosine decay, random 128-byte windows of the training split,
   a fixed number of steps: 85 s on 2 idle CPU cores (400 steps of 32 x 128 bytes;
   held-out perplexity per byte 269 before, 5.07 after). Other processes on the same
   cores slow it far more than their share (11 minutes measured at a load of 4: torch's
   threads wait on each other), so the weights, not the time, are fixed.
3. **Cache**. The trained model is written with ``save_pretrained`` (safetensors) into
   a temporary folder beside its place, with a metadata file holding the cache key,
   the perplexities and the SHA-256 of every file, sealed by a digest of its own; all
   is fsynced, then the folder is renamed into place. A lock file makes a second
   process wait for the first to finish rather than train too; a process that still
   finds the place taken discards its copy. A load checks the key, the seal and every
   digest before ``from_pretrained``: a damaged, edited or mismatched cache is trained
   again, never trusted.

:func:`calibration_batches`, :func:`heldout_batches` and :func:`perplexity` serve the
compression work on any causal LM; :func:`load_local_lm` opens ``--model PATH``.

``transformers`` is optional for modfsm: it is imported inside the functions that need
it, which raise ``ModuleNotFoundError`` with the fix when it is missing.

Run ``python -m modfsm.engine.app.causal_lm`` to train (or load) the built-in model and
print its perplexity and timings.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import shutil
import sys
import sysconfig
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import attrs
import torch

from modfsm.engine.app.paths import folder_problem
from modfsm.engine.kernel.errors import ConfigError, ConfigTypeError

if TYPE_CHECKING:
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedModel,
        PreTrainedTokenizerBase,
    )

__all__ = [
    "BUILTIN",
    "FORMAT",
    "METADATA",
    "BuiltinLM",
    "ByteTokenizer",
    "Corpus",
    "LMSettings",
    "LocalLM",
    "ModelFolderError",
    "build_model",
    "cache_key",
    "calibration_batches",
    "default_cache_dir",
    "heldout_batches",
    "llama_config",
    "load_builtin_lm",
    "load_corpus",
    "load_local_lm",
    "main",
    "perplexity",
    "train",
]

FORMAT: Final = "modfsm.builtin-lm/1"
METADATA: Final = "modfsm-builtin-lm.json"
"""The metadata file inside a cached model's folder."""
_METADATA_MAX_BYTES: Final = 1 << 20
_FILE_MAX_BYTES: Final = 256 * 1024
_EXCLUDED_PARTS: Final = frozenset(
    {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__",
     "encodings", "pydoc_data"}
)  # fmt: skip
_TOKENIZER_FILES: Final = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "spiece.model",
)
_EXTRA_FIX: Final = "pip install 'modfsm[transformers]' (or transformers)"


# --- settings ------------------------------------------------------------------------------


@attrs.frozen
class LMSettings:
    """Everything that decides the built-in model's weights: architecture, data, training.

    All of it enters the cache key. :data:`BUILTIN` is the built-in model; tests use
    smaller ones.
    """

    hidden: int = 128
    intermediate: int = 384
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    max_positions: int = 256
    rope_theta: float = 10000.0
    data_bytes: int = 4 << 20
    """The corpus: standard-library files up to this many bytes."""
    heldout_every: int = 10
    """Every this-many-th file of the corpus is held out."""
    seq_len: int = 128
    batch_size: int = 32
    steps: int = 400
    lr: float = 4e-3
    warmup: int = 30
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    clip: float = 1.0
    eval_sequences: int = 256
    """Held-out windows of ``seq_len`` bytes the perplexity is measured on."""
    seed: int = 0

    def __attrs_post_init__(self) -> None:
        positive = {
            name: getattr(self, name)
            for name in ("hidden", "intermediate", "layers", "heads", "kv_heads",
                         "max_positions", "data_bytes", "heldout_every", "seq_len",
                         "batch_size", "eval_sequences")
        }  # fmt: skip
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise _settings_error(name, value, "a positive int")
        if self.heldout_every < 2:
            raise _settings_error("heldout_every", self.heldout_every, "an int of at least 2")
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise _settings_error(
                "heads",
                self.heads,
                f"a divisor of hidden ({self.hidden}) and a multiple of kv_heads ({self.kv_heads})",
            )
        if self.seq_len > self.max_positions:
            raise _settings_error("seq_len", self.seq_len, f"at most {self.max_positions}")
        if self.steps < 0 or self.warmup < 0:
            raise _settings_error("steps", (self.steps, self.warmup), "steps and warmup >= 0")
        if not (self.lr > 0 and 0 <= self.min_lr_ratio <= 1 and self.weight_decay >= 0
                and self.clip > 0 and self.rope_theta > 0):  # fmt: skip
            raise _settings_error(
                "lr",
                self.lr,
                "lr, clip, rope_theta > 0, 0 <= min_lr_ratio <= 1, weight_decay >= 0",
            )


def _settings_error(field: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(
        f"LMSettings: {field}={value!r} is not valid. To fix, give {expected}.",
        owner="LMSettings",
        field=field,
        value=value,
    )


BUILTIN: Final = LMSettings()
"""The built-in model's settings."""


# --- the tokenizer -------------------------------------------------------------------------


@attrs.frozen
class ByteTokenizer:
    """Bytes are tokens: 256 ids, no special tokens.

    >>> tokenizer = ByteTokenizer()
    >>> tokenizer.encode("héllo").tolist()
    [104, 195, 169, 108, 108, 111]
    >>> tokenizer.decode(tokenizer.encode("héllo"))
    'héllo'
    """

    vocab_size: int = attrs.field(default=256, init=False)

    def encode(self, text: str | bytes) -> torch.Tensor:
        """The ids (a 1-D int64 tensor) of ``text``'s UTF-8 bytes (or of ``bytes`` as given)."""
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        return _bytes_to_ids(data)

    def decode_bytes(self, ids: torch.Tensor | Sequence[int]) -> bytes:
        """The bytes ``ids`` stand for.

        Raises:
            ConfigError: an id outside [0, 256).
        """
        values = ids.flatten().tolist() if isinstance(ids, torch.Tensor) else list(ids)
        bad = [value for value in values if not 0 <= value < self.vocab_size]
        if bad:
            raise ConfigError(
                f"ByteTokenizer: id {bad[0]!r} is not a byte. To fix, decode ids in [0, 256).",
                owner="ByteTokenizer",
                field="ids",
                value=bad[0],
            )
        return bytes(values)

    def decode(self, ids: torch.Tensor | Sequence[int]) -> str:
        """The text ``ids`` stand for (UTF-8; a broken sequence decodes to U+FFFD)."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


Tokenizer: TypeAlias = "ByteTokenizer | PreTrainedTokenizerBase"
"""What turns text into ids: bytes, or a ``transformers`` tokenizer."""


def _bytes_to_ids(data: bytes) -> torch.Tensor:
    if not data:
        return torch.zeros(0, dtype=torch.long)
    # frombuffer needs a writable buffer (it warns on bytes), hence the bytearray copy.
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


# --- the data ------------------------------------------------------------------------------


@attrs.frozen
class Corpus:
    """Standard-library sources, split by file into train and held-out bytes.

    Attributes:
        train: the training files, concatenated in order.
        heldout: the held-out files, concatenated in order.
        train_files: the training files' paths, relative to the standard library.
        heldout_files: the held-out files' paths.
        digest: SHA-256 over every file's path, split and bytes.
    """

    train: bytes = attrs.field(repr=False)
    heldout: bytes = attrs.field(repr=False)
    train_files: tuple[str, ...] = attrs.field(repr=False)
    heldout_files: tuple[str, ...] = attrs.field(repr=False)
    digest: str

    def describe(self) -> str:
        """``412 files (3,700,000 bytes) for training, 46 (420,000) held out``."""
        return (
            f"{len(self.train_files)} files ({len(self.train):,} bytes) for training, "
            f"{len(self.heldout_files)} ({len(self.heldout):,}) held out"
        )


def _eligible(root: Path) -> list[tuple[str, Path]]:
    """The standard library's sources that may be used, as (relative path, path)."""
    found: list[tuple[str, Path]] = []
    for folder, subfolders, names in os.walk(root, followlinks=False):
        subfolders[:] = sorted(name for name in subfolders if name not in _EXCLUDED_PARTS)
        for name in sorted(names):
            path = Path(folder) / name
            if not name.endswith(".py") or name.startswith("test_") or path.is_symlink():
                continue
            if path.stat().st_size <= _FILE_MAX_BYTES:
                found.append((path.relative_to(root).as_posix(), path))
    return found


def load_corpus(settings: LMSettings = BUILTIN, root: Path | None = None) -> Corpus:
    """Read the corpus: standard-library sources in a fixed order, split by file.

    Files are ordered by the SHA-256 of their relative path and taken until
    ``settings.data_bytes``; the ``settings.heldout_every``-th, ``2 *``-th, ... file is
    held out.

    Args:
        settings: how many bytes to read and how often to hold a file out.
        root: the folder to read (default: the running Python's standard library).

    Raises:
        ConfigError: too little text to train on or to measure on.
    """
    root = Path(sysconfig.get_paths()["stdlib"]) if root is None else root
    ordered = sorted(_eligible(root), key=lambda item: hashlib.sha256(item[0].encode()).digest())
    digest = hashlib.sha256(FORMAT.encode())
    parts: dict[str, tuple[list[bytes], list[str]]] = {"train": ([], []), "heldout": ([], [])}
    total = 0
    for index, (name, path) in enumerate(ordered):
        if total >= settings.data_bytes:
            break
        data = path.read_bytes()
        total += len(data)
        held_out = index % settings.heldout_every == settings.heldout_every - 1
        split = "heldout" if held_out else "train"
        parts[split][0].append(data)
        parts[split][1].append(name)
        digest.update(f"{split}\0{name}\0{len(data)}\0".encode() + hashlib.sha256(data).digest())
    corpus = Corpus(
        train=b"".join(parts["train"][0]),
        heldout=b"".join(parts["heldout"][0]),
        train_files=tuple(parts["train"][1]),
        heldout_files=tuple(parts["heldout"][1]),
        digest=digest.hexdigest(),
    )
    if min(len(corpus.train), len(corpus.heldout)) <= settings.seq_len:
        raise ConfigError(
            f"the corpus from {str(root)!r} is too small ({corpus.describe()}) for windows of "
            f"{settings.seq_len} bytes. To fix, raise data_bytes (now {settings.data_bytes:,}) "
            "or read a fuller standard library.",
            owner="load_corpus",
            field="data_bytes",
            value=settings.data_bytes,
        )
    return corpus


def _token_stream(text: bytes, tokenizer: Tokenizer | None) -> torch.Tensor:
    if tokenizer is None or isinstance(tokenizer, ByteTokenizer):
        return _bytes_to_ids(text)
    encoded = tokenizer(
        text.decode("utf-8", errors="replace"),
        add_special_tokens=False,
        return_attention_mask=False,
        verbose=False,
    )
    return torch.tensor(encoded["input_ids"], dtype=torch.long)


def _windows(stream: torch.Tensor, starts: torch.Tensor, seq_len: int) -> torch.Tensor:
    return stream[starts[:, None] + torch.arange(seq_len)]


def _as_batches(windows: torch.Tensor, batch_size: int) -> list[dict[str, torch.Tensor]]:
    return [
        {"input_ids": chunk, "attention_mask": torch.ones_like(chunk)}
        for chunk in torch.split(windows, batch_size)
    ]


def _check_sizes(owner: str, n: int, seq_len: int, batch_size: int) -> None:
    for field, value in (("n", n), ("seq_len", seq_len), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(
                f"{owner}: {field}={value!r} is not valid. To fix, give a positive int.",
                owner=owner,
                field=field,
                value=value,
            )


def _stream_for(owner: str, text: bytes, tokenizer: Tokenizer | None, seq_len: int,
                split: str) -> torch.Tensor:  # fmt: skip
    stream = _token_stream(text, tokenizer)
    if len(stream) <= seq_len:
        raise ConfigError(
            f"{owner}: the {split} split holds {len(stream)} tokens, too few for windows of "
            f"{seq_len}. To fix, use a shorter seq_len or a larger corpus.",
            owner=owner,
            field="seq_len",
            value=seq_len,
        )
    return stream


def calibration_batches(
    corpus: Corpus,
    n: int,
    seq_len: int,
    seed: int,
    *,
    batch_size: int = 1,
    tokenizer: Tokenizer | None = None,
) -> list[dict[str, torch.Tensor]]:
    """``n`` random windows of the *training* split, for calibrating a compression.

    The same ``seed`` gives the same windows.

    Args:
        corpus: the text (:func:`load_corpus`, or ``BuiltinLM.corpus``).
        n: how many windows (sequences) in all.
        seq_len: tokens per window.
        seed: chooses the windows.
        batch_size: windows per batch (the last batch may hold fewer).
        tokenizer: how text becomes ids; bytes (:class:`ByteTokenizer`) by default, or
            a ``transformers`` tokenizer.

    Returns:
        Batches of ``input_ids`` and ``attention_mask`` (all ones), int64
        ``(batch, seq_len)``.
    """
    _check_sizes("calibration_batches", n, seq_len, batch_size)
    stream = _stream_for("calibration_batches", corpus.train, tokenizer, seq_len, "train")
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(stream) - seq_len + 1, (n,), generator=generator)
    return _as_batches(_windows(stream, starts, seq_len), batch_size)


def heldout_batches(
    corpus: Corpus,
    n: int,
    seq_len: int,
    *,
    batch_size: int = 32,
    tokenizer: Tokenizer | None = None,
) -> list[dict[str, torch.Tensor]]:
    """``n`` windows spread evenly over the *held-out* split, for measuring perplexity.

    Always the same windows (no seed): a measurement is comparable with any other
    of the same ``n`` and ``seq_len``. Windows overlap only when the split holds
    fewer than ``n * seq_len`` tokens.

    Args:
        corpus: the text (:func:`load_corpus`, or ``BuiltinLM.corpus``).
        n: how many windows in all.
        seq_len: tokens per window.
        batch_size: windows per batch (the last batch may hold fewer).
        tokenizer: as for :func:`calibration_batches`.
    """
    _check_sizes("heldout_batches", n, seq_len, batch_size)
    stream = _stream_for("heldout_batches", corpus.heldout, tokenizer, seq_len, "held-out")
    last = len(stream) - seq_len
    starts = torch.tensor([index * last // max(n - 1, 1) for index in range(n)], dtype=torch.long)
    return _as_batches(_windows(stream, starts, seq_len), batch_size)


def perplexity(model: torch.nn.Module, batches: Sequence[Mapping[str, torch.Tensor]]) -> float:
    """exp of the mean negative log-likelihood per predicted token over ``batches``.

    Works for any causal LM whose forward takes ``input_ids``, ``attention_mask`` and
    ``labels`` and returns the mean loss over the predicted tokens (every
    ``transformers`` ``...ForCausalLM``). Positions where ``attention_mask`` is 0 are
    not predicted. The model runs in eval mode without gradients, on its own device,
    and is put back in the mode it was in.

    Raises:
        ConfigError: no batches, or none with a token to predict.
        ConfigTypeError: the model returned no ``loss``.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for batch in batches:
                ids = batch["input_ids"].to(device)
                mask = batch.get("attention_mask")
                mask = torch.ones_like(ids) if mask is None else mask.to(device)
                labels = ids.masked_fill(mask == 0, -100)
                predicted = int((labels[:, 1:] != -100).sum())
                if not predicted:
                    continue
                output = model(input_ids=ids, attention_mask=mask, labels=labels)
                loss = output["loss"] if isinstance(output, Mapping) else output.loss
                if loss is None:
                    raise ConfigTypeError(
                        f"perplexity: {type(model).__name__} returned no loss. To fix, pass a "
                        "causal LM whose forward computes the loss from labels.",
                        owner="perplexity",
                        field="model",
                        value=type(model).__name__,
                    )
                total += float(loss) * predicted
                count += predicted
    finally:
        model.train(was_training)
    if not count:
        raise ConfigError(
            "perplexity: the batches hold no token to predict. To fix, pass batches of at "
            "least two unmasked tokens each.",
            owner="perplexity",
            field="batches",
            value=len(batches),
        )
    return math.exp(total / count)


# --- the model -----------------------------------------------------------------------------


def _eval(model: torch.nn.Module) -> None:
    """``model.eval()``, typed (transformers' models leave ``eval`` unannotated)."""
    model.eval()


def _transformers() -> Any:
    """The ``transformers`` module, or a ModuleNotFoundError with the fix."""
    try:
        import transformers
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            f"modfsm's causal language models need transformers. To fix, {_EXTRA_FIX}."
        ) from error
    return transformers


def llama_config(settings: LMSettings = BUILTIN) -> LlamaConfig:
    """The ``LlamaConfig`` of ``settings``: byte vocabulary, no special tokens, untied head."""
    transformers = _transformers()
    config: LlamaConfig = transformers.LlamaConfig(
        vocab_size=256,
        hidden_size=settings.hidden,
        intermediate_size=settings.intermediate,
        num_hidden_layers=settings.layers,
        num_attention_heads=settings.heads,
        num_key_value_heads=settings.kv_heads,
        max_position_embeddings=settings.max_positions,
        rope_parameters={"rope_type": "default", "rope_theta": settings.rope_theta},
        tie_word_embeddings=False,
        attention_dropout=0.0,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    return config


def build_model(settings: LMSettings = BUILTIN) -> LlamaForCausalLM:
    """A freshly initialized ``LlamaForCausalLM``: the same weights for the same settings.

    The global random state is left as it was.
    """
    transformers = _transformers()
    config = llama_config(settings)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        model: LlamaForCausalLM = transformers.LlamaForCausalLM(config)
    return model


def cache_key(settings: LMSettings, corpus: Corpus) -> str:
    """SHA-256 of what decides the weights: settings, model config, data, library versions."""
    transformers = _transformers()
    identity = {
        "format": FORMAT,
        "settings": attrs.asdict(settings),
        "config": llama_config(settings).to_dict(),
        "data": corpus.digest,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


@attrs.frozen
class TrainReport:
    """What :func:`train` measured."""

    perplexity_before: float
    perplexity: float
    seconds: float
    final_loss: float
    threads: int
    """torch's intra-op threads while training."""
    load_average: float | None
    """The machine's 1-minute load average when training ended (None where unknown)."""


def _lr_factor(settings: LMSettings, step: int) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay to ``min_lr_ratio``."""
    if step < settings.warmup:
        return (step + 1) / settings.warmup
    span = max(settings.steps - settings.warmup, 1)
    progress = min((step - settings.warmup) / span, 1.0)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return settings.min_lr_ratio + (1.0 - settings.min_lr_ratio) * cosine


def train(
    settings: LMSettings, corpus: Corpus, *, progress: bool = False
) -> tuple[LlamaForCausalLM, TrainReport]:
    """Build the model and train it on ``corpus.train``; returns it in eval mode.

    Args:
        settings: the model and training settings.
        corpus: the data.
        progress: show a progress bar on stderr when it is a terminal.

    Raises:
        ConfigError: the loss became NaN or infinite.
    """
    from tqdm import tqdm  # a dependency of transformers

    started = time.perf_counter()
    model = build_model(settings)
    heldout = heldout_batches(corpus, settings.eval_sequences, settings.seq_len)
    before = perplexity(model, heldout)
    stream = _bytes_to_ids(corpus.train)
    generator = torch.Generator().manual_seed(settings.seed + 1)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.lr,
        betas=(0.9, 0.95),
    )  # fmt: skip
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(settings, step))
    model.train()
    loss_value = float("nan")
    bar = tqdm(
        total=settings.steps,
        disable=None if progress else True,  # None: shown only on a terminal
        desc="modfsm: training the built-in LM",
        unit="step",
        leave=False,
        file=sys.stderr,
    )
    try:
        for step in range(settings.steps):
            starts = torch.randint(
                0, len(stream) - settings.seq_len + 1, (settings.batch_size,), generator=generator
            )
            ids = _windows(stream, starts, settings.seq_len)
            loss = model(input_ids=ids, labels=ids).loss
            assert loss is not None  # labels were given
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            schedule.step()
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise ConfigError(
                    f"training the built-in LM diverged at step {step + 1} (loss "
                    f"{loss_value}). To fix, lower lr (now {settings.lr}).",
                    owner="LMSettings",
                    field="lr",
                    value=settings.lr,
                )
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{loss_value:.3f}")
    finally:
        bar.close()
    _eval(model)
    after = perplexity(model, heldout)
    seconds = time.perf_counter() - started
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    report = TrainReport(before, after, seconds, loss_value, torch.get_num_threads(), load)
    return model, report


# --- the cache -----------------------------------------------------------------------------


@attrs.frozen
class BuiltinLM:
    """The built-in model, ready for compression.

    Attributes:
        model: the trained ``LlamaForCausalLM``, in eval mode, on the CPU.
        tokenizer: the byte tokenizer.
        config: the model's ``LlamaConfig``.
        settings: what it was built and trained with.
        corpus: its data (for :func:`calibration_batches` and :func:`heldout_batches`).
        perplexity: held-out perplexity per byte after training.
        perplexity_before: the same, before training.
        train_seconds: how long training took when the cache was made.
        train_threads: torch's threads then.
        train_load_average: the machine's 1-minute load average when it ended (None
            where unknown): other work slows training down.
        path: the cached model's folder (a ``save_pretrained`` folder).
        trained: whether this call trained it (else it came from the cache).
    """

    model: LlamaForCausalLM = attrs.field(repr=False)
    tokenizer: ByteTokenizer
    config: LlamaConfig = attrs.field(repr=False)
    settings: LMSettings = attrs.field(repr=False)
    corpus: Corpus = attrs.field(repr=False)
    perplexity: float
    perplexity_before: float
    train_seconds: float
    train_threads: int
    train_load_average: float | None
    path: Path
    trained: bool

    @property
    def parameters(self) -> int:
        """How many parameters the model has."""
        return sum(parameter.numel() for parameter in self.model.parameters())

    def heldout(self, n: int | None = None) -> list[dict[str, torch.Tensor]]:
        """The held-out batches its :attr:`perplexity` was measured on (``n`` windows)."""
        count = self.settings.eval_sequences if n is None else n
        return heldout_batches(self.corpus, count, self.settings.seq_len)


def default_cache_dir() -> Path:
    """``$MODFSM_CACHE``, else ``$XDG_CACHE_HOME/modfsm``, else ``~/.cache/modfsm``."""
    if os.environ.get("MODFSM_CACHE"):
        return Path(os.environ["MODFSM_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if xdg and Path(xdg).is_absolute():  # the XDG spec ignores a relative path
        return Path(xdg) / "modfsm"
    return Path.home() / ".cache" / "modfsm"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _seal(metadata: Mapping[str, Any]) -> str:
    body = {key: value for key, value in metadata.items() if key != "seal"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _fsync(path: Path) -> None:
    """Flush a file, or a folder's entries, to disk (folders only where the OS allows)."""
    if path.is_dir():
        if not hasattr(os, "O_DIRECTORY"):
            return
        descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    else:
        descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No progress bars from ``save_pretrained`` and ``from_pretrained`` (a tiny model)."""
    logging = _transformers().utils.logging
    was_on = bool(logging.is_progress_bar_enabled())
    if was_on:
        logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            logging.enable_progress_bar()


def _metadata_problem(folder: Path, key: str) -> tuple[dict[str, Any], str]:
    """The folder's checked metadata, or the problem with it (empty when there is none)."""
    path = folder / METADATA
    try:
        with path.open("rb") as handle:
            raw = handle.read(_METADATA_MAX_BYTES + 1)
    except FileNotFoundError:
        return {}, f"has no {METADATA}"
    except OSError as error:
        return {}, f"cannot read {METADATA} ({error.strerror})"
    if len(raw) > _METADATA_MAX_BYTES:
        return {}, f"has a {METADATA} larger than {_METADATA_MAX_BYTES:,} bytes"
    try:
        metadata = json.loads(raw)
    except ValueError:
        return {}, f"has a {METADATA} that is not JSON"
    if not isinstance(metadata, dict) or metadata.get("seal") != _seal(metadata):
        return {}, f"has a {METADATA} that was changed after it was written (its seal differs)"
    if metadata.get("format") != FORMAT:
        return {}, f"was written in format {metadata.get('format')!r}, not {FORMAT!r}"
    if metadata.get("key") != key:
        return {}, (
            "was made for other settings, data or library versions "
            f"(key {str(metadata.get('key'))[:16]}, wanted {key[:16]})"
        )
    files = metadata.get("files")
    if not (isinstance(files, dict) and "model.safetensors" in files and "config.json" in files):
        return {}, f"has a {METADATA} that lists no model.safetensors or config.json"
    numbers = [metadata.get(name) for name in ("perplexity", "perplexity_before", "train_seconds")]
    if not all(isinstance(n, float) and math.isfinite(n) and n >= 0 for n in numbers):
        return {}, f"has a {METADATA} whose perplexities or time are not finite numbers"
    threads, load = metadata.get("train_threads"), metadata.get("train_load_average")
    load_fits = load is None or isinstance(load, float)
    if not (isinstance(threads, int) and threads >= 1 and load_fits):
        return {}, f"has a {METADATA} whose train_threads or train_load_average is not valid"
    return metadata, ""


def _files_problem(folder: Path, files: Mapping[str, Any]) -> str:
    """What differs between the folder's files and the digests listed for them."""
    try:
        present = {path.name for path in folder.iterdir()} - {METADATA}
    except OSError as error:
        return f"cannot be listed ({error.strerror})"
    if present != set(files):
        missing, extra = sorted(set(files) - present), sorted(present - set(files))
        return f"does not hold the files it lists (missing {missing}, unexpected {extra})"
    for name, digest in sorted(files.items()):
        try:
            actual = _sha256_file(folder / name)
        except OSError as error:
            return f"cannot read {name} ({error.strerror})"
        if actual != digest:
            return f"holds a damaged {name} (its SHA-256 differs from the one written with it)"
    return ""


def _read_cache(
    folder: Path, key: str, settings: LMSettings, corpus: Corpus
) -> tuple[BuiltinLM | None, str]:
    """The cached model in ``folder`` if it checks out, else (None, the problem).

    The problem is empty when there is no folder at all.
    """
    if not folder.exists():
        return None, ""
    metadata, problem = _metadata_problem(folder, key)
    if not problem:
        problem = _files_problem(folder, metadata["files"])
    if problem:
        return None, problem
    transformers = _transformers()
    try:
        with _quiet_transformers():
            model = transformers.LlamaForCausalLM.from_pretrained(folder, local_files_only=True)
    except Exception as error:  # transformers and safetensors raise many types
        return None, f"cannot be loaded by transformers ({type(error).__name__}: {error})"
    expected = llama_config(settings)
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
                  "tie_word_embeddings"):  # fmt: skip
        if getattr(model.config, field) != getattr(expected, field):
            return None, f"holds a model whose {field} is not {getattr(expected, field)!r}"
    _eval(model)
    return BuiltinLM(
        model=model,
        tokenizer=ByteTokenizer(),
        config=model.config,
        settings=settings,
        corpus=corpus,
        perplexity=metadata["perplexity"],
        perplexity_before=metadata["perplexity_before"],
        train_seconds=metadata["train_seconds"],
        train_threads=metadata["train_threads"],
        train_load_average=metadata["train_load_average"],
        path=folder,
        trained=False,
    ), ""


def _discard(path: Path) -> None:
    """Remove a folder: first renamed aside (one atomic step), then deleted."""
    aside = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:12]}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def _install(temporary: Path, folder: Path) -> bool:
    """Rename the complete ``temporary`` folder to ``folder``; False if another got there first.

    A folder already in place is left alone: the caller has removed the damaged one
    it found, so whatever is there now was put there by another process.
    """
    try:
        os.replace(temporary, folder)
    except OSError:
        if not folder.exists():
            raise
        shutil.rmtree(temporary, ignore_errors=True)
        return False
    _fsync(folder.parent)
    return True


def _write_cache(
    folder: Path, key: str, model: LlamaForCausalLM, report: TrainReport, settings: LMSettings
) -> None:
    """Save ``model`` to ``folder`` atomically, with its sealed metadata."""
    temporary = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        with _quiet_transformers():
            model.save_pretrained(temporary)
        files = {path.name: _sha256_file(path) for path in sorted(temporary.iterdir())}
        metadata: dict[str, Any] = {
            "format": FORMAT,
            "key": key,
            "settings": attrs.asdict(settings),
            "perplexity": report.perplexity,
            "perplexity_before": report.perplexity_before,
            "train_seconds": report.seconds,
            "train_threads": report.threads,
            "train_load_average": report.load_average,
            "final_loss": report.final_loss,
            "parameters": sum(parameter.numel() for parameter in model.parameters()),
            "torch": torch.__version__,
            "transformers": _transformers().__version__,
            "python": sys.version.split()[0],
            "files": files,
        }
        metadata["seal"] = _seal(metadata)
        (temporary / METADATA).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
        for path in temporary.iterdir():
            _fsync(path)
        _fsync(temporary)
        if folder.exists():
            _discard(folder)
        _install(temporary, folder)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)


@contextlib.contextmanager
def _locked(path: Path, progress: bool) -> Iterator[bool]:
    """Hold an exclusive lock on ``path`` (made if missing); yields whether locking exists.

    Without ``fcntl`` (Windows) nothing is locked: the rename into place still keeps
    the cache whole, and two processes may then both train.
    """
    try:
        import fcntl
    except ModuleNotFoundError:  # pragma: no cover - Windows
        yield False
        return
    with path.open("a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress:
                print(f"modfsm: waiting for another process to train the built-in LM "
                      f"(lock {str(path)!r})", file=sys.stderr)  # fmt: skip
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def load_builtin_lm(
    cache_dir: Path | None = None,
    *,
    progress: bool = True,
    settings: LMSettings = BUILTIN,
) -> BuiltinLM:
    """The built-in causal LM: from the cache, or trained once (85 s on 2 idle cores) and cached.

    The model lives in ``<cache_dir>/builtin-lm-<key>``, where the key hashes the
    settings, the model config, the data's digest and the torch and transformers
    versions. A cache that fails any check is trained again and replaced.

    Args:
        cache_dir: the cache folder (default: :func:`default_cache_dir`).
        progress: say on stderr that it trains, with a progress bar on a terminal.
        settings: the model and its training (tests use smaller ones).

    Raises:
        ConfigError: the cache folder cannot be written (and holds no usable model).
        ModuleNotFoundError: transformers is not installed.
    """
    root = default_cache_dir() if cache_dir is None else Path(cache_dir)
    corpus = load_corpus(settings)
    key = cache_key(settings, corpus)
    folder = root / f"builtin-lm-{key[:16]}"
    found, problem = _read_cache(folder, key, settings, corpus)
    if found is not None:
        return found
    unwritable = folder_problem(root)
    if unwritable:
        raise ConfigError(
            f"the built-in LM cannot be cached: {unwritable}. To fix, set MODFSM_CACHE to a "
            "folder you can write, or pass another cache_dir.",
            owner="load_builtin_lm",
            field="cache_dir",
            value=str(root),
        )
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{folder.name}.lock", progress) as exclusive:
        found, problem = _read_cache(folder, key, settings, corpus)  # another may have made it
        if found is not None:
            return found
        if exclusive:  # leftovers of a process that died while writing or discarding
            for pattern in (f".{folder.name}.tmp-*", f".{folder.name}.old-*"):
                for stale in root.glob(pattern):
                    shutil.rmtree(stale, ignore_errors=True)
        if progress:
            why = f" (the cached one {problem})" if problem else ""
            print(f"modfsm: training the built-in causal LM once{why}; it is cached in "
                  f"{str(folder)!r}", file=sys.stderr)  # fmt: skip
        model, report = train(settings, corpus, progress=progress)
        _write_cache(folder, key, model, report, settings)
        found, problem = _read_cache(folder, key, settings, corpus)
    if found is None:
        raise ConfigError(
            f"the built-in LM written to {str(folder)!r} does not read back: it {problem}. "
            "To fix, check the disk and set MODFSM_CACHE to another folder.",
            owner="load_builtin_lm",
            field="cache_dir",
            value=str(root),
        )
    return attrs.evolve(found, trained=True)


# --- a local model -------------------------------------------------------------------------


class ModelFolderError(ConfigError):
    """A ``--model`` folder that cannot be loaded as a causal language model.

    Attributes:
        path: the folder.
    """

    def __init__(self, path: Path, problem: str, fix: str) -> None:
        super().__init__(
            f"--model {str(path)!r} {problem}. To fix, {fix}.",
            owner="load_local_lm",
            field="model",
            value=str(path),
        )
        self.path = path


@attrs.frozen
class LocalLM:
    """A causal LM read from a local folder.

    Attributes:
        model: the ``transformers`` model, in eval mode.
        tokenizer: its ``transformers`` tokenizer, or bytes for a 256-token vocabulary
            without one.
        path: the folder.
    """

    model: PreTrainedModel = attrs.field(repr=False)
    tokenizer: Tokenizer = attrs.field(repr=False)
    path: Path


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def load_local_lm(path: Path) -> LocalLM:
    """Load the causal LM saved in ``path`` (``save_pretrained``), without any download.

    The tokenizer is the folder's own (``AutoTokenizer``) when it holds one, else the
    byte tokenizer when the vocabulary has exactly 256 tokens.

    Raises:
        ModelFolderError: no such folder, not a model folder, not a causal LM, or
            unreadable; the message names the path and the fix.
        ModuleNotFoundError: transformers is not installed.
    """
    transformers = _transformers()
    path = Path(path)
    saved = "pass --model a folder written by save_pretrained (config.json and its weights)"
    if not path.exists():
        raise ModelFolderError(path, "does not exist", saved)
    if not path.is_dir():
        raise ModelFolderError(path, "is a file, not a model folder", saved)
    if not (path / "config.json").is_file():
        raise ModelFolderError(path, "is not a model folder (it has no config.json)", saved)
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    except Exception as error:  # transformers, safetensors and json raise many types
        raise ModelFolderError(
            path,
            f"cannot be loaded as a causal language model ({type(error).__name__}: "
            f"{_first_line(error)})",
            "check that it holds a complete causal LM (config.json and its weights) that "
            f"transformers {transformers.__version__} can read without remote code",
        ) from None
    _eval(model)
    tokenizer: Tokenizer
    if any((path / name).is_file() for name in _TOKENIZER_FILES):
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        except Exception as error:  # as above
            raise ModelFolderError(
                path,
                f"holds a tokenizer that cannot be loaded ({type(error).__name__}: "
                f"{_first_line(error)})",
                "save the model's tokenizer with it (tokenizer.save_pretrained), or remove "
                "the broken tokenizer files",
            ) from None
    elif model.config.vocab_size == 256:
        tokenizer = ByteTokenizer()
    else:
        raise ModelFolderError(
            path,
            f"holds no tokenizer, and its vocabulary ({model.config.vocab_size} tokens) is not "
            "bytes (256)",
            "save the model's tokenizer into the folder (tokenizer.save_pretrained)",
        )
    return LocalLM(model=model, tokenizer=tokenizer, path=path)


# --- the script ----------------------------------------------------------------------------


def _size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.iterdir() if path.is_file())


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m modfsm.engine.app.causal_lm``: train or load the built-in LM, report it."""
    parser = argparse.ArgumentParser(
        prog="python -m modfsm.engine.app.causal_lm",
        description="Train (once) or load the built-in causal LM and print its perplexity.",
    )
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help=f"cache folder (default: {default_cache_dir()})")  # fmt: skip
    args = parser.parse_args(argv)
    started = time.perf_counter()
    lm = load_builtin_lm(args.cache_dir, progress=True)
    seconds = time.perf_counter() - started
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"model: LlamaForCausalLM, {lm.parameters:,} parameters "
          f"(hidden {lm.settings.hidden}, intermediate {lm.settings.intermediate}, "
          f"{lm.settings.layers} layers, {lm.settings.heads} heads / "
          f"{lm.settings.kv_heads} kv heads)")  # fmt: skip
    print(f"data: {lm.corpus.describe()}")
    print(f"held-out perplexity per byte: {lm.perplexity_before:.2f} before training, "
          f"{lm.perplexity:.3f} after")  # fmt: skip
    load_then = "unknown" if lm.train_load_average is None else f"{lm.train_load_average:.2f}"
    print(f"training: {lm.settings.steps} steps of {lm.settings.batch_size} x "
          f"{lm.settings.seq_len} bytes in {lm.train_seconds:.1f} s on {lm.train_threads} "
          f"threads (1-minute load average at its end: {load_then})")  # fmt: skip
    how = "trained and cached" if lm.trained else "loaded from the cache"
    print(f"{how} in {seconds:.1f} s (1-minute load average now {load:.2f}): "
          f"{lm.path} ({_size(lm.path):,} bytes)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
