"""``modfsm oneshot``: compress a causal language model in one shot with a recipe.

The run loads the model (the built-in byte-level Llama of
:mod:`~modfsm.engine.app.causal_lm`, trained once and cached, or ``--model PATH``, a local
transformers folder), measures its held-out perplexity, builds the recipe's modifiers in
a :class:`~modfsm.engine.loop.session.Session`, calibrates them on windows of the training
text through a calibration pipeline (:mod:`~modfsm.engine.app.pipeline`), measures the
perplexity again (before finalize, while activations are still fake-quantized, so a
scheme's activation quantization counts), and finalizes. It reports each layer's sparsity
and bit width and the compressed size, and with ``--output DIR`` writes the model
(:func:`write_compressed`) and the recipe it applied.

Every option, the recipe (every unsupported modifier type or argument, listed at once)
and the output folder are checked before any work; a bad one is a
:class:`~modfsm.engine.kernel.errors.ConfigError` with the fix, and the CLI exits 2.

The written model: ``model.safetensors`` holds every parameter the recipe left in float
under its own name, and for each quantized layer ``<layer>.weight_packed`` (the integer
weight: two 4-bit values per byte, or one per byte up to 8 bits), ``<layer>.weight_scale``
and ``<layer>.weight_zero_point`` (and ``input_scale``/``input_zero_point``, ``output_*``,
for static activations). FP4 layers (NVFP4): ``weight_packed`` holds 4-bit E2M1 codes two
to a byte, ``weight_scale`` the float8_e4m3fn group scales, ``weight_global_scale`` (and
``input_global_scale`` for NVFP4 inputs), no zero point; float8 weights are stored as their
bytes. A quantized KV cache adds ``<attention>.k_scale`` and ``v_scale`` (the names vLLM
reads). The metadata holds each quantized layer's arguments (and the KV cache's).
``config.json`` is the
model's configuration and ``recipe.yaml`` the recipe. :func:`read_compressed` reads it
back into float weights, which equal the compressed model's exactly. The folder is written
next to its destination and renamed into place, and an existing one is never replaced.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Final

import attrs
import torch

from modfsm.engine.app import causal_lm, paths
from modfsm.engine.app.pipeline import PIPELINES, Pipeline, run_pipeline
from modfsm.engine.config.recipe import Recipe
from modfsm.engine.kernel.errors import ConfigError, IllegalTransitionError
from modfsm.engine.loop.session import Session

__all__ = [
    "DEFAULT_RECIPE",
    "FORMAT",
    "LayerRow",
    "OneshotConfig",
    "OneshotResult",
    "format_summary",
    "oneshot",
    "read_compressed",
    "write_compressed",
]

FORMAT: Final = "modfsm.oneshot/1"
DEFAULT_RECIPE: Final = "oneshot_gptq_w4a16.yaml"
"""The recipe ``modfsm oneshot`` applies when given none (under ``docs/recipes/``, shipped)."""
_OWNER: Final = "modfsm oneshot"
_MAX_CALIBRATION: Final = 4096
_MAX_SEQ_LEN: Final = 4096
_KV_KEYS: Final = ("k_scale", "v_scale", "k_zero_point", "v_zero_point")


@attrs.frozen
class OneshotConfig:
    """What ``modfsm oneshot`` runs (the CLI's options).

    Attributes:
        recipe: a recipe file, YAML text or data (None: :data:`DEFAULT_RECIPE`).
        model: a local transformers model folder (None: the built-in LM).
        calib: calibration sequences.
        seq_len: tokens per calibration and evaluation sequence (None: the built-in LM's).
        pipeline: ``basic`` or ``sequential``.
        output: the folder to write the compressed model to (must not exist).
        trace: a JSONL file for the session's trace.
        seed: chooses the calibration windows.
        eval_sequences: held-out sequences the perplexity is measured on.
        cache_dir: where the built-in LM is cached (None: its default).
        lm_settings: the built-in LM's settings (tests use small ones).
    """

    recipe: Any = None
    model: Path | None = None
    calib: int = 64
    seq_len: int | None = None
    pipeline: str = "sequential"
    output: Path | None = None
    trace: Path | None = None
    seed: int = 0
    eval_sequences: int = 64
    cache_dir: Path | None = None
    lm_settings: causal_lm.LMSettings = causal_lm.BUILTIN

    def check(self) -> None:
        """Refuse a bad option before any work: one message naming it, its value and the fix."""

        def fail(field: str, value: Any, fix: str) -> ConfigError:
            return ConfigError(f"{_OWNER}: --{field.replace('_', '-')} {value!r}: {fix}",
                               owner=_OWNER, field=field, value=value)  # fmt: skip

        counts = (("calib", self.calib), ("eval_sequences", self.eval_sequences))
        for field, value in counts:
            high = _MAX_CALIBRATION
            if type(value) is not int or not 1 <= value <= high:
                raise fail(field, value, f"must be a whole number from 1 to {high}. To fix, "
                           f"pass e.g. 64.")  # fmt: skip
        if self.seq_len is not None and (type(self.seq_len) is not int
                                         or not 2 <= self.seq_len <= _MAX_SEQ_LEN):  # fmt: skip
            raise fail("seq_len", self.seq_len, "must be a whole number from 2 to "
                       f"{_MAX_SEQ_LEN}. To fix, pass e.g. 128.")  # fmt: skip
        if (
            self.model is None
            and self.seq_len is not None
            and (self.seq_len > self.lm_settings.max_positions)
        ):
            raise fail("seq_len", self.seq_len, f"the built-in LM reads at most "
                       f"{self.lm_settings.max_positions} tokens. To fix, pass at most "
                       "that.")  # fmt: skip
        if self.pipeline not in PIPELINES:
            raise fail("pipeline", self.pipeline, f"unknown. To fix, use one of "
                       f"{', '.join(PIPELINES)}.")  # fmt: skip
        if self.output is not None:
            if self.output.exists():
                raise fail("output", str(self.output), "already exists, and a compressed model "
                           "is never written over another. To fix, pass a new folder.")  # fmt: skip
            if problem := paths.folder_problem(self.output.parent):
                raise fail("output", str(self.output), f"its folder cannot be written: "
                           f"{problem}. To fix, pass a folder you can write to.")  # fmt: skip
        if self.trace is not None and (problem := paths.file_problem(self.trace)):
            raise fail("trace", str(self.trace), f"cannot be written: {problem}. To fix, pass "
                       "a file in a folder you can write to.")  # fmt: skip


@attrs.frozen
class LayerRow:
    """One linear layer after compression: its sparsity and, if quantized, its weights' grid."""

    name: str
    parameters: int
    zeros: int
    bits: int | None
    group_size: int | None
    strategy: str | None
    kind: str = "int"
    """The weights' values: ``int``, ``float8`` or ``fp4`` (emulated in float32)."""
    inputs: str = ""
    """How the layer's inputs are quantized (``int8 token``, ...); "" in float."""

    @property
    def sparsity(self) -> float:
        """The fraction of its weights that are exactly zero."""
        return self.zeros / self.parameters if self.parameters else 0.0

    @property
    def weights(self) -> str:
        """The weights' format in a word: ``int4``, ``fp8``, ``fp4*`` (emulated), or ``-``."""
        if self.bits is None:
            return "-"
        return {"float8": "fp8", "fp4": "fp4*"}.get(self.kind, f"int{self.bits}")


@attrs.frozen
class OneshotResult:
    """What a ``modfsm oneshot`` run measured (see :func:`format_summary`)."""

    model: str
    recipe: str
    modifiers: tuple[str, ...]
    pipeline: str
    calib: int
    seq_len: int
    perplexity_before: float
    perplexity_after: float
    layers: tuple[LayerRow, ...]
    float_bytes: int
    compressed_bytes: int
    seconds: float
    written: tuple[Path, ...]
    kv_cache: str = ""
    """The KV cache's quantization (``fp8 sym tensor keys and values, ...``); "" without."""


def default_recipe_text() -> str:
    """The text of :data:`DEFAULT_RECIPE` (a GPTQ W4A16 recipe, group 128)."""
    return (
        resources.files("modfsm.engine.app")
        .joinpath("data", DEFAULT_RECIPE)
        .read_text(encoding="utf-8")
    )


def _load_recipe(raw: Any) -> tuple[Recipe, str]:
    """The recipe and its text (as written to ``recipe.yaml``)."""
    if raw is None:
        text = default_recipe_text()
        return Recipe.load(text), text
    if isinstance(raw, Path):
        recipe = Recipe.load(raw)  # bounded: refuses a file too large or not a regular file
        try:
            text = raw.read_text(encoding="utf-8")  # what was just read, as written
        except (OSError, UnicodeDecodeError):  # changed meanwhile: write what was loaded
            text = recipe.to_yaml()
        return recipe, text
    recipe = raw if isinstance(raw, Recipe) else Recipe.load(raw)
    return recipe, recipe.to_yaml()


def _exports(session: Session) -> dict[str, dict[str, Any]]:
    """Every quantized layer's export, from the modifiers that quantized (``export()``)."""
    merged: dict[str, dict[str, Any]] = {}
    for _, modifier in session.modifiers:
        export = getattr(modifier, "export", None)
        if not callable(export):
            continue
        try:
            entries = export()
        except IllegalTransitionError:  # nothing quantized: it never calibrated
            continue
        for name, entry in entries.items():
            merged[name] = {**merged.get(name, {}), **entry}
    return merged


def _layer_rows(model: torch.nn.Module, exports: Mapping[str, Mapping[str, Any]]) -> list[LayerRow]:
    rows = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        scheme = exports.get(name, {}).get("scheme") or {}
        weights = scheme.get("weights") or {}
        rows.append(LayerRow(
            name=name,
            parameters=module.weight.numel(),
            zeros=int((module.weight == 0).sum()),
            bits=weights.get("num_bits"),
            group_size=weights.get("group_size"),
            strategy=weights.get("strategy"),
            kind=_kind(weights),
            inputs=_describe_inputs(scheme.get("input_activations")),
        ))  # fmt: skip
    return rows


def _kind(args: Mapping[str, Any]) -> str:
    if args.get("type") != "float":
        return "int"
    return "fp4" if args.get("num_bits") == 4 else "float8"


def _describe_inputs(args: Mapping[str, Any] | None) -> str:
    """``int8 token`` (dynamic), ``fp8 tensor static``, ``fp4 local``; "" for float inputs."""
    if not args:
        return ""
    kind = {"int": f"int{args.get('num_bits')}", "float8": "fp8", "fp4": "fp4"}[_kind(args)]
    dynamic = args.get("dynamic")
    how = "local" if dynamic == "local" else "" if dynamic else "static"
    return " ".join(part for part in (kind, str(args.get("strategy", "tensor")), how) if part)


def _kv_cache_line(exports: Mapping[str, Mapping[str, Any]]) -> str:
    """What the summary says of a quantized KV cache ("" when none is)."""
    layers = [entry for entry in exports.values() if "k_scale" in entry]
    if not layers:
        return ""
    args = (layers[0].get("scheme") or {}).get("kv_cache") or {}
    kind = "fp8" if args.get("type") == "float" else f"int{args.get('num_bits', 8)}"
    per = "per head" if args.get("strategy") == "attn_head" else "per tensor"
    return (
        f"{kind} keys and values, static scales {per}, k_scale/v_scale on {len(layers)} "
        "attention layers"
    )


def _pack(q: torch.Tensor, bits: int, kind: str = "int") -> tuple[torch.Tensor, int]:
    """A quantized weight as bytes, and the offset added to make integers unsigned.

    ``kind`` ``int``: signed integers of ``bits``, two per byte up to 4 bits, else one,
    offset by ``2 ** (bits - 1)``. ``float8``: the float8_e4m3fn bytes. ``fp4``: FP4 E2M1
    values (float32 on the grid) as 4-bit codes (bit 3 the sign, bits 0-2 the index of
    the magnitude in 0, 0.5, 1, 1.5, 2, 3, 4, 6), two per byte, the first value in the low
    nibble: compressed-tensors' packing of NVFP4. (Offset 0 for both floats.)
    """
    if kind == "float8":
        return q.contiguous().view(torch.uint8).flatten(), 0
    if kind == "fp4":  # (the engine imports no modifier: the grid is written out here)
        grid = torch.tensor((0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0), device=q.device)
        values = q.detach().to(torch.float32).flatten()
        hits = values.abs().reshape(-1, 1) == grid
        if not bool(hits.any(dim=1).all()):
            raise ValueError("_pack: an FP4 weight holds a value off the E2M1 grid")
        codes = hits.to(torch.uint8).argmax(dim=1).to(torch.uint8)
        codes |= torch.signbit(values).to(torch.uint8) << 3
        if codes.numel() % 2:
            codes = torch.cat([codes, codes.new_zeros(1)])
        return codes[0::2] | (codes[1::2] << 4), 0
    offset = 2 ** (bits - 1)
    unsigned = (q.to(torch.int32) + offset).to(torch.uint8).flatten()
    if bits > 4:
        return unsigned, offset
    if unsigned.numel() % 2:
        unsigned = torch.cat([unsigned, unsigned.new_zeros(1)])
    return unsigned[0::2] | (unsigned[1::2] << 4), offset


def _unpack(
    packed: torch.Tensor, bits: int, offset: int, shape: Sequence[int], kind: str = "int"
) -> torch.Tensor:
    """What :func:`_pack` packed, shaped ``shape``: int32 integers, or float32 values for
    ``float8`` and ``fp4``."""
    count = math.prod(shape)
    if kind == "float8":
        return packed[:count].view(torch.float8_e4m3fn).to(torch.float32).reshape(tuple(shape))
    if kind == "fp4":
        grid = torch.tensor((0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0), device=packed.device)
        codes = torch.stack([packed & 0x0F, packed >> 4], dim=1).flatten()[:count]
        magnitude = grid[(codes & 0x7).long()]
        return torch.where((codes & 0x8) != 0, -magnitude, magnitude).reshape(tuple(shape))
    if bits > 4:
        values = packed.to(torch.int32)
    else:
        values = torch.stack([packed & 0x0F, packed >> 4], dim=1).flatten().to(torch.int32)
    return (values[:count] - offset).reshape(tuple(shape))


def write_compressed(
    model: torch.nn.Module, exports: Mapping[str, Mapping[str, Any]], recipe_text: str,
    folder: Path,
) -> tuple[Path, ...]:  # fmt: skip
    """Write the compressed model into ``folder`` (which must not exist), atomically: see the
    module docstring. Returns the files written."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    layers: dict[str, Any] = {}
    kv_cache: dict[str, Any] = {}
    for name, parameter in model.state_dict().items():
        layer = name.rsplit(".", 1)[0]
        if name.endswith(".weight") and layer in exports and "weight" in exports[layer]:
            continue  # stored packed below
        tensors[name] = parameter.detach().contiguous().clone()
    for layer, entry in exports.items():
        if "weight" not in entry:  # an attention layer's KV-cache scales (the names vLLM reads)
            found = {
                key: entry[key] for key in _KV_KEYS if isinstance(entry.get(key), torch.Tensor)
            }
            for key, value in found.items():
                tensors[f"{layer}.{key}"] = value.detach().contiguous().clone()
            if found:
                kv_cache[layer] = (entry.get("scheme") or {}).get("kv_cache")
            continue
        args = (entry.get("scheme") or {}).get("weights") or {}
        bits = int(args.get("num_bits", 8))
        kind = _kind(args)
        packed, offset = _pack(entry["weight"], bits, kind)
        tensors[f"{layer}.weight_packed"] = packed.contiguous()
        keys = ("weight_scale", "weight_global_scale", "input_scale", "input_global_scale",
                "input_zero_point", "output_scale", "output_zero_point") + (
                () if kind == "fp4" else ("weight_zero_point",))  # fmt: skip
        for key in keys:  # an FP4 zero point is always 0: not stored
            if isinstance(entry.get(key), torch.Tensor):
                tensors[f"{layer}.{key}"] = entry[key].detach().contiguous().clone()
        layers[layer] = {"shape": list(entry["weight"].shape), "bits": bits, "offset": offset,
                         "kind": kind, "scheme": entry.get("scheme")}  # fmt: skip
    metadata = {"format": FORMAT, "layers": json.dumps(layers, sort_keys=True)}
    if kv_cache:
        metadata["kv_cache"] = json.dumps(kv_cache, sort_keys=True)
    parent = folder.parent
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=parent))
    umask = os.umask(0)
    os.umask(umask)
    try:
        save_file(tensors, str(staging / "model.safetensors"), metadata=metadata)
        config = getattr(model, "config", None)
        if config is not None and hasattr(config, "to_json_file"):
            config.to_json_file(str(staging / "config.json"))
        (staging / "recipe.yaml").write_text(recipe_text, encoding="utf-8")
        for path in staging.iterdir():
            path.chmod(0o666 & ~umask)  # as a plain open() would have made it
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
        staging.chmod(0o777 & ~umask)
        os.rename(staging, folder)  # fails rather than replace a folder made meanwhile
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return tuple(sorted(folder.iterdir()))


def read_compressed(folder: Path) -> dict[str, torch.Tensor]:
    """The float weights of a model :func:`write_compressed` wrote (quantized layers
    dequantized: ``(q - zero_point) * scale`` per row or group of their grid; FP4
    ``q * (weight_scale / weight_global_scale)`` per group, in float32 as
    :func:`~modfsm.modifiers.quantization.fake.dequantize` computes it).

    Raises:
        ConfigError: the folder holds no such model, or one it did not write.
    """
    from safetensors import safe_open

    path = Path(folder) / "model.safetensors"
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (OSError, ValueError, RuntimeError) as error:
        raise ConfigError(f"{_OWNER}: {str(path)!r} cannot be read ({error}). To fix, pass a "
                          "folder written by modfsm oneshot --output.", owner=_OWNER,
                          field="output", value=str(folder)) from None  # fmt: skip
    if metadata.get("format") != FORMAT:
        raise ConfigError(f"{_OWNER}: {str(path)!r} was not written by modfsm oneshot "
                          f"(format {metadata.get('format')!r}). To fix, pass a folder written "
                          "by modfsm oneshot --output.", owner=_OWNER, field="output",
                          value=str(folder))  # fmt: skip
    layers = json.loads(metadata["layers"])
    weights = {k: v for k, v in tensors.items()
               if not k.endswith(("_packed", "_scale", "_zero_point"))}  # fmt: skip
    for layer, info in layers.items():
        kind = info.get("kind", "int")
        q = _unpack(tensors[f"{layer}.weight_packed"], info["bits"], info["offset"],
                    info["shape"], kind)  # fmt: skip
        scale = tensors[f"{layer}.weight_scale"].to(torch.float32)
        if kind == "fp4":  # the effective scale s / g, and no zero point
            scale = scale / tensors[f"{layer}.weight_global_scale"].to(torch.float32)
            zero = torch.zeros_like(scale)
        else:
            zero = tensors[f"{layer}.weight_zero_point"].to(torch.float32)
        rows = q.reshape(scale.shape[0], -1) if scale.numel() > 1 else q.reshape(1, -1)
        groups = scale.reshape(rows.shape[0], -1)
        width = rows.shape[1] // groups.shape[1]
        expanded = groups.repeat_interleave(width, dim=1)
        zeros = zero.reshape(groups.shape).repeat_interleave(width, dim=1)
        weights[f"{layer}.weight"] = ((rows.to(torch.float32) - zeros) * expanded).reshape(
            info["shape"]
        )
    return weights


def _load_model(
    config: OneshotConfig, progress: bool
) -> tuple[Any, Any, str, causal_lm.Corpus, int]:
    """(model, tokenizer, description, corpus, seq_len)."""
    if config.model is None:
        built = causal_lm.load_builtin_lm(config.cache_dir, progress=progress,
                                          settings=config.lm_settings)  # fmt: skip
        seq_len = config.seq_len or built.settings.seq_len
        layers = built.config.num_hidden_layers
        what = f"the built-in LM (Llama, {layers} layers, {built.parameters:,} parameters)"
        return built.model, None, what, built.corpus, seq_len
    local = causal_lm.load_local_lm(config.model)
    corpus = causal_lm.load_corpus(config.lm_settings)
    tokenizer = None if isinstance(local.tokenizer, causal_lm.ByteTokenizer) else local.tokenizer
    return local.model, tokenizer, f"{config.model}", corpus, config.seq_len or 128


Progress = Callable[[str, int, int], None]


def oneshot(config: OneshotConfig, *, progress: bool = False) -> OneshotResult:
    """Run ``modfsm oneshot`` (see the module docstring).

    Raises:
        ConfigError: a bad option, recipe, model folder or output (before any work).
    """
    config.check()
    recipe, recipe_text = _load_recipe(config.recipe)
    recipe.validate()  # every unsupported modifier type or argument, listed at once
    started = time.perf_counter()
    model, tokenizer, what, corpus, seq_len = _load_model(config, progress)
    heldout = causal_lm.heldout_batches(corpus, config.eval_sequences, seq_len,
                                        tokenizer=tokenizer)  # fmt: skip
    calibration = causal_lm.calibration_batches(corpus, config.calib, seq_len, config.seed,
                                                batch_size=8, tokenizer=tokenizer)  # fmt: skip
    before = causal_lm.perplexity(model, heldout)
    float_bytes = sum(p.numel() * p.element_size() for p in model.state_dict().values())
    session = Session()
    session.initialize(model=model, recipe=recipe, trace=config.trace or False)
    pipeline: Pipeline = "sequential" if config.pipeline == "sequential" else "basic"
    bar = _bar(progress)
    try:
        run_pipeline(session, model, calibration, pipeline, bar)
    finally:
        bar("", 0, 0)
    # measured before finalize: the modifiers' fake quantization of activations (static
    # or dynamic scales) is still on the model, as a quantized runtime would apply it
    after = causal_lm.perplexity(model, heldout)
    session.finalize()
    exports = _exports(session)
    written: tuple[Path, ...] = ()
    compressed_bytes = float_bytes
    if config.output is not None:
        written = write_compressed(model, exports, recipe_text, config.output)
        compressed_bytes = (config.output / "model.safetensors").stat().st_size
    else:
        compressed_bytes = _estimated_bytes(model, exports)
    return OneshotResult(
        model=what,
        recipe=str(config.recipe) if isinstance(config.recipe, Path) else
        ("built-in: " + DEFAULT_RECIPE if config.recipe is None else "given"),
        modifiers=tuple(type(m).__name__ for _, m in session.modifiers),
        pipeline=config.pipeline,
        calib=config.calib,
        seq_len=seq_len,
        perplexity_before=before,
        perplexity_after=after,
        layers=tuple(_layer_rows(model, exports)),
        float_bytes=float_bytes,
        compressed_bytes=compressed_bytes,
        seconds=time.perf_counter() - started,
        written=written,
        kv_cache=_kv_cache_line(exports),
    )  # fmt: skip


def _estimated_bytes(model: torch.nn.Module, exports: Mapping[str, Mapping[str, Any]]) -> int:
    """What :func:`write_compressed` would store, without the file's header."""
    total = 0
    for name, parameter in model.state_dict().items():
        layer = name.rsplit(".", 1)[0]
        entry = exports.get(layer, {})
        if name.endswith(".weight") and "weight" in entry:
            args = (entry.get("scheme") or {}).get("weights") or {}
            bits = int(args.get("num_bits", 8))
            fp4 = args.get("type") == "float" and bits == 4  # its zero points are not stored
            per_byte = 2 if bits <= 4 else 1
            total += math.ceil(parameter.numel() / per_byte)
            total += sum(
                v.numel() * v.element_size()
                for k, v in entry.items()
                if isinstance(v, torch.Tensor)
                and (k.endswith("_scale") or (k.endswith("_zero_point") and not fp4))
            )
        else:
            total += parameter.numel() * parameter.element_size()
    return total


def _bar(progress: bool) -> Progress:
    """A tqdm bar on stderr for the pipeline's phases (a no-op without ``progress``)."""
    if not progress:
        return lambda phase, done, total: None
    from tqdm import tqdm

    bars: dict[str, Any] = {}

    def update(phase: str, done: int, total: int) -> None:
        if not phase:  # close
            for bar in bars.values():
                bar.close()
            return
        if phase not in bars:
            bars[phase] = tqdm(total=total, desc=f"modfsm oneshot: {phase}", leave=False)
        bars[phase].n = done
        bars[phase].refresh()

    return update


def format_summary(result: OneshotResult) -> str:
    """The summary ``modfsm oneshot`` prints."""
    change = (result.perplexity_after / result.perplexity_before - 1) * 100
    lines = [
        f"modfsm oneshot: {', '.join(result.modifiers) or 'no modifiers'} on {result.model}",
        f"recipe: {result.recipe}; {result.calib} calibration sequences of {result.seq_len} "
        f"tokens, {result.pipeline} pipeline; {result.seconds:.1f} s",
        f"perplexity (held-out): {result.perplexity_before:.3f} before, "
        f"{result.perplexity_after:.3f} after ({change:+.2f}%)",
        "",
        f"{'layer':<44} {'sparsity':>8}  {'weights':>7}  {'group':>7}  inputs",
    ]
    for row in result.layers:
        group = ("-" if row.bits is None else
                 str(row.group_size) if row.group_size else str(row.strategy or "-"))  # fmt: skip
        lines.append(f"{row.name:<44} {row.sparsity:>8.1%}  {row.weights:>7}  {group:>7}  "
                     f"{row.inputs or '-'}")  # fmt: skip
    ratio = result.float_bytes / result.compressed_bytes if result.compressed_bytes else 0.0
    lines.append("")
    if any(row.kind == "fp4" for row in result.layers):
        lines.append(f"* fp4: FP4 E2M1 values emulated exactly in float32 (torch "
                     f"{torch.__version__} on the CPU cannot compute in float4); stored packed "
                     "two to a byte")  # fmt: skip
    if result.kv_cache:
        lines.append(f"kv cache: {result.kv_cache}")
    lines.append(
        f"size: {result.float_bytes / 1e6:.2f} MB in float -> {result.compressed_bytes / 1e6:.2f} "
        f"MB compressed ({ratio:.2f}x)"
    )
    if result.written:
        lines.append("wrote " + ", ".join(str(path) for path in result.written))
    return "\n".join(lines)
