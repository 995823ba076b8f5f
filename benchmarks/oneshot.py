"""One-shot compression of the built-in LM: the papers' headline relations, and GPTQ's cost.

Quality (perplexity on the held-out text, the same 64 windows of 128 bytes for every
row, the same 64 calibration windows, the sequential pipeline), each compressed model
against the float one, through ``modfsm oneshot``'s API (:func:`modfsm.engine.app.oneshot.oneshot`):

* GPTQ (``GPTQModifier``) against round-to-nearest on the same grid (every weight
  rounded to its nearest grid point with the same scales' rule, no error feedback:
  :func:`modfsm.modifiers.solvers.round_to_nearest` on every target layer), at W4A16 group 128
  and 4-bit channel-wise: the GPTQ paper reports GPTQ far closer to the float model;
* SparseGPT (``SparseGPTModifier``) against magnitude pruning (the smallest weights of
  each layer, or of each group of 4 for 2:4) at 50% unstructured and 2:4: the SparseGPT
  paper's headline;
* the 2:4 pattern and the grid are checked on the compressed weights.

Cost: GPTQ's seconds per layer and peak memory against the same Hessian update written
as plain torch (:func:`modfsm.modifiers.solvers.gptq_reference`: float64, column by
column, no blocks or lazy updates), on each linear layer shape of the built-in LM, in
the same run, alternating; peak memory is the process's resident set above its level
before the call, sampled every millisecond.

Run ``python -m benchmarks.oneshot`` (``--quick``: a tiny model, one round; ``--json
FILE``). The built-in LM is trained once and cached (about 90 s on 2 idle cores).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import torch

from modfsm.engine.app import causal_lm
from modfsm.engine.app.oneshot import OneshotConfig, oneshot

_QUICK_LM: Final = causal_lm.LMSettings(
    hidden=128, intermediate=256, layers=1, heads=2, kv_heads=1, max_positions=64,
    data_bytes=200_000, seq_len=32, batch_size=8, steps=30, lr=1e-2, warmup=5,
    eval_sequences=16,
)  # fmt: skip

GPTQ_W4A16: Final = """
oneshot_stage:
  quantization_modifiers:
    GPTQModifier: {scheme: W4A16, targets: Linear, ignore: [lm_head]}
"""
GPTQ_CHANNEL: Final = """
oneshot_stage:
  quantization_modifiers:
    GPTQModifier:
      ignore: [lm_head]
      config_groups:
        group_0:
          targets: [Linear]
          weights: {num_bits: 4, type: int, symmetric: true, strategy: channel}
"""
SPARSEGPT: Final = """
oneshot_stage:
  obcq_modifiers:
    SparseGPTModifier:
      sparsity: 0.5
      mask_structure: "{structure}"
      targets: ["re:model.layers.\\\\d+$"]
"""


def _targets(model: torch.nn.Module) -> list[tuple[str, torch.nn.Linear]]:
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and n != "lm_head"]  # fmt: skip


def rtn(model: torch.nn.Module, raw: dict[str, Any]) -> None:
    """Round every target weight to its nearest grid point (``raw``: weight arguments)."""
    from modfsm.modifiers.quantization.args import parse_args
    from modfsm.modifiers.solvers import round_to_nearest

    args = parse_args("weights", raw, activations=False)
    for _, layer in _targets(model):
        layer.weight.data.copy_(round_to_nearest(layer.weight.data, args)[0])


def magnitude_prune(model: torch.nn.Module, structure: str) -> None:
    """Zero the smallest half of every target weight (per group of 4 for ``2:4``)."""
    for _, layer in _targets(model):
        weight = layer.weight.data
        if structure == "2:4":
            groups = weight.abs().reshape(-1, 4)
            drop = groups.argsort(dim=1)[:, :2]
            mask = torch.ones_like(groups, dtype=torch.bool).scatter_(1, drop, False)
            weight.mul_(mask.reshape(weight.shape))
        else:
            threshold = weight.abs().flatten().kthvalue(weight.numel() // 2).values
            weight.mul_(weight.abs() > threshold)


def _quality(settings: causal_lm.LMSettings, cache: Path | None, calib: int, evals: int,
             seq_len: int) -> dict[str, Any]:  # fmt: skip
    built = causal_lm.load_builtin_lm(cache, progress=True, settings=settings)
    heldout = causal_lm.heldout_batches(built.corpus, evals, seq_len)
    base = causal_lm.perplexity(built.model, heldout)
    rows: dict[str, Any] = {"float": base}
    config = OneshotConfig(calib=calib, seq_len=seq_len, eval_sequences=evals,
                           cache_dir=cache, lm_settings=settings)  # fmt: skip

    def fresh() -> torch.nn.Module:
        return causal_lm.load_builtin_lm(cache, progress=False, settings=settings).model

    for name, recipe in (("gptq_w4a16_g128", GPTQ_W4A16), ("gptq_w4_channel", GPTQ_CHANNEL),
                         ("sparsegpt_50", SPARSEGPT.format(structure="0:0")),
                         ("sparsegpt_2of4", SPARSEGPT.format(structure="2:4"))):  # fmt: skip
        result = oneshot(OneshotConfig(**{**_fields(config), "recipe": recipe}))
        rows[name] = result.perplexity_after
        if name == "sparsegpt_2of4":
            rows["sparsegpt_2of4_sparsity"] = min(
                r.sparsity for r in result.layers if r.name != "lm_head"
            )
    baselines: tuple[tuple[str, Callable[[torch.nn.Module], None]], ...] = (
        ("rtn_w4a16_g128", lambda m: rtn(m, {"num_bits": 4, "symmetric": True,
                                              "strategy": "group", "group_size": 128})),
        ("rtn_w4_channel", lambda m: rtn(m, {"num_bits": 4, "symmetric": True,
                                              "strategy": "channel"})),
        ("magnitude_50", lambda m: magnitude_prune(m, "0:0")),
        ("magnitude_2of4", lambda m: magnitude_prune(m, "2:4")),
    )  # fmt: skip
    for name, apply in baselines:
        model = fresh()
        apply(model)
        rows[name] = causal_lm.perplexity(model, heldout)
    return rows


def _fields(config: OneshotConfig) -> dict[str, Any]:
    return {a.name: getattr(config, a.name) for a in type(config).__attrs_attrs__}


def _rss() -> int:
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak(call: Callable[[], Any]) -> tuple[float, int]:
    """(seconds, peak resident bytes above the level before) of ``call()``."""
    before = _rss()
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss())
            time.sleep(0.001)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    start = time.perf_counter()
    call()
    seconds = time.perf_counter() - start
    done.set()
    watcher.join()
    return seconds, max(peak, _rss()) - before


def _cost(shapes: list[tuple[int, int]], rounds: int) -> list[dict[str, Any]]:
    from modfsm.modifiers.quantization.args import parse_args
    from modfsm.modifiers.solvers import HessianAccumulator, gptq_quantize, gptq_reference

    args = parse_args("weights", {"num_bits": 4, "symmetric": True, "strategy": "group",
                                  "group_size": 128}, activations=False)  # fmt: skip
    out = []
    for rows_, columns in shapes:
        generator = torch.Generator().manual_seed(rows_ * columns)
        weight = torch.randn(rows_, columns, generator=generator)
        basis = torch.randn(columns // 4, columns, generator=generator)
        accumulator = HessianAccumulator(columns)
        accumulator.update(torch.randn(2048, columns // 4, generator=generator) @ basis
                           + 0.1 * torch.randn(2048, columns, generator=generator))  # fmt: skip
        hessian = accumulator.hessian()
        times: dict[str, list[float]] = {"modfsm": [], "plain": []}
        peaks: dict[str, list[int]] = {"modfsm": [], "plain": []}
        for round_ in range(rounds):
            order = ("modfsm", "plain") if round_ % 2 == 0 else ("plain", "modfsm")
            for which in order:
                solver = gptq_quantize if which == "modfsm" else gptq_reference
                seconds, peak = _peak(
                    lambda s=solver, w=weight, h=hessian: s(w, h, args)  # type: ignore[misc]
                )
                times[which].append(seconds)
                peaks[which].append(peak)
        ratios = [m / p for m, p in zip(times["modfsm"], times["plain"], strict=True)]
        out.append({
            "shape": [rows_, columns],
            "modfsm_s": statistics.median(times["modfsm"]),
            "plain_s": statistics.median(times["plain"]),
            "time_ratio": statistics.median(ratios),
            "modfsm_peak_bytes": max(peaks["modfsm"]),
            "plain_peak_bytes": max(peaks["plain"]),
        })  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model, one round")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures")
    parser.add_argument("--cache-dir", type=Path, help="where the LM is cached")
    args = parser.parse_args(argv)
    settings = _QUICK_LM if args.quick else causal_lm.BUILTIN
    calib, evals, seq_len = (8, 8, 32) if args.quick else (64, 64, 128)
    quality = _quality(settings, args.cache_dir, calib, evals, seq_len)
    shapes = sorted({(m.out_features, m.in_features) for _, m in
                     _targets(causal_lm.build_model(settings))})  # fmt: skip
    cost = _cost(shapes, 1 if args.quick else 5)
    base = quality["float"]
    print(f"held-out perplexity of the float model: {base:.4f}")
    print(f"{'method':<22} {'perplexity':>10} {'increase':>9}")
    for name in ("gptq_w4a16_g128", "rtn_w4a16_g128", "gptq_w4_channel", "rtn_w4_channel",
                 "sparsegpt_50", "magnitude_50", "sparsegpt_2of4", "magnitude_2of4"):  # fmt: skip
        print(f"{name:<22} {quality[name]:>10.4f} {quality[name] / base - 1:>+9.2%}")
    print(f"\n{'layer (out x in)':<18} {'modfsm s':>9} {'plain s':>9} {'ratio':>6} "
          f"{'modfsm MB':>9} {'plain MB':>9}")  # fmt: skip
    for row in cost:
        print(f"{row['shape'][0]:>6} x {row['shape'][1]:<9} {row['modfsm_s']:>9.3f} "
              f"{row['plain_s']:>9.3f} {row['time_ratio']:>6.3f} "
              f"{row['modfsm_peak_bytes'] / 1e6:>9.2f} "
              f"{row['plain_peak_bytes'] / 1e6:>9.2f}")  # fmt: skip
    if args.json is not None:
        args.json.write_text(json.dumps({"quality": quality, "cost": cost}, indent=2) + "\n",
                             encoding="utf-8")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
