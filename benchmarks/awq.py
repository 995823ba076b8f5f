"""AWQ against round-to-nearest on the built-in LM: the AWQ paper's headline relation.

Quality is the held-out perplexity (the same windows for every row) of the float
model and of each compressed one, through ``modfsm oneshot``'s API
(:func:`modfsm.engine.app.oneshot.oneshot`), all from the same calibration windows
and pipeline:

* **RTN**: ``QuantizationModifier`` with the scheme (every weight rounded to the
  nearest point of its grid, scales from its own range);
* **AWQ**: ``AWQModifier`` with the same scheme (per-channel scales searched on
  the calibration inputs, then the same rounding);

for W4A16 (symmetric, groups of 128), W4A16_ASYM (asymmetric, groups of 128) and
4-bit per-channel weights (symmetric and asymmetric), ``lm_head`` left in float. The
relation the paper reports, checked by :func:`awq_beats_rtn`: AWQ's perplexity
increase is smaller than RTN's on the same grid.

Run ``python -m benchmarks.awq`` (``--quick``: a tiny model, a smoke run only; ``--json FILE``;
``--pipeline basic``). The built-in LM is trained once and cached (about 90 s on 2 idle cores);
the full run takes about 2.5 minutes on 2 cores. The relation is not checked by a unit test:
on any model small enough for one it is noise (see :data:`QUICK_LM`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Final

from modfsm.engine.app import causal_lm
from modfsm.engine.app.oneshot import OneshotConfig, oneshot

QUICK_LM: Final = causal_lm.LMSettings(
    hidden=128, intermediate=256, layers=1, heads=2, kv_heads=1, max_positions=64,
    data_bytes=200_000, seq_len=32, batch_size=8, steps=30, lr=1e-2, warmup=5,
    eval_sequences=16,
)  # fmt: skip
"""A one-layer model that trains in seconds (``--quick``: a smoke run of the benchmark; it is
trained too little for 4-bit rounding to change its perplexity beyond noise, so it does not
show the relation)."""

_GROUPS: Final = """
      config_groups:
        group_0:
          targets: [Linear]
          weights: {{num_bits: 4, type: int, symmetric: {symmetric}, strategy: channel}}
"""
SCHEMES: Final[dict[str, str]] = {
    "w4a16_g128": "      scheme: W4A16\n      targets: Linear\n",
    "w4a16_asym_g128": "      scheme: W4A16_ASYM\n      targets: Linear\n",
    "w4_channel": _GROUPS.format(symmetric="true").lstrip("\n"),
    "w4_asym_channel": _GROUPS.format(symmetric="false").lstrip("\n"),
}
"""The grids compared: the recipe lines of each (a scheme, or config groups)."""


def recipe(modifier: str, scheme: str) -> str:
    """A one-shot recipe of ``modifier`` with the recipe lines ``scheme``, ``lm_head`` in float."""
    return (
        "oneshot_stage:\n  quantization_modifiers:\n"
        f"    {modifier}:\n{scheme}      ignore: [lm_head]\n"
    )


def compare(
    settings: causal_lm.LMSettings,
    cache: Path | None,
    *,
    calib: int,
    evals: int,
    seq_len: int,
    schemes: tuple[str, ...] = tuple(SCHEMES),
    pipeline: str = "sequential",
) -> dict[str, Any]:
    """Held-out perplexities: ``float``, then ``rtn_<scheme>`` and ``awq_<scheme>`` for each
    of ``schemes``, plus ``seconds_<row>`` (each run's wall time)."""
    config = OneshotConfig(calib=calib, seq_len=seq_len, eval_sequences=evals, cache_dir=cache,
                           lm_settings=settings, pipeline=pipeline)  # fmt: skip
    fields = {a.name: getattr(config, a.name) for a in type(config).__attrs_attrs__}
    rows: dict[str, Any] = {}
    for scheme in schemes:
        for name, modifier in (("rtn", "QuantizationModifier"), ("awq", "AWQModifier")):
            started = time.perf_counter()
            text = recipe(modifier, SCHEMES[scheme])
            result = oneshot(OneshotConfig(**{**fields, "recipe": text}))
            rows.setdefault("float", result.perplexity_before)
            rows[f"{name}_{scheme}"] = result.perplexity_after
            rows[f"seconds_{name}_{scheme}"] = time.perf_counter() - started
    return rows


def awq_beats_rtn(rows: dict[str, Any], scheme: str) -> bool:
    """The paper's relation on one grid: AWQ's perplexity increase is below RTN's."""
    base = float(rows["float"])
    return float(rows[f"awq_{scheme}"]) - base < float(rows[f"rtn_{scheme}"]) - base


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures")
    parser.add_argument("--cache-dir", type=Path, help="where the LM is cached")
    parser.add_argument("--pipeline", choices=("basic", "sequential"), default="sequential")
    args = parser.parse_args(argv)
    settings = QUICK_LM if args.quick else causal_lm.BUILTIN
    calib, evals, seq_len = (8, 8, 32) if args.quick else (64, 64, 128)
    rows = compare(settings, args.cache_dir, calib=calib, evals=evals, seq_len=seq_len,
                   pipeline=args.pipeline)  # fmt: skip
    base = rows["float"]
    print(f"held-out perplexity of the float model: {base:.4f} ({calib} calibration and "
          f"{evals} held-out windows of {seq_len} bytes, {args.pipeline} pipeline)")  # fmt: skip
    print(f"{'grid':<17} {'RTN':>9} {'increase':>9} {'AWQ':>9} {'increase':>9} "
          f"{'AWQ/RTN':>8} {'AWQ s':>6} {'AWQ wins':>8}")  # fmt: skip
    for scheme in SCHEMES:
        rtn, found = rows[f"rtn_{scheme}"], rows[f"awq_{scheme}"]
        ratio = (found - base) / (rtn - base) if rtn != base else float("nan")
        print(f"{scheme:<17} {rtn:>9.4f} {rtn / base - 1:>+9.2%} {found:>9.4f} "
              f"{found / base - 1:>+9.2%} {ratio:>8.3f} {rows[f'seconds_awq_{scheme}']:>6.1f} "
              f"{'yes' if awq_beats_rtn(rows, scheme) else 'NO':>8}")  # fmt: skip
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
