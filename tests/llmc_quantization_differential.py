"""Each preset's weight arithmetic on modfsm against compressed-tensors, value by value.

Not collected by pytest (compressed-tensors is not a dependency): ``make llmc-exact`` runs it
in ``.venv-llmc`` (llm-compressor 0.14.0.1 with its compressed-tensors, and modfsm). For every
preset both libraries name, random weights of several shapes (some with outlier columns,
some with an all-zero group) are fake-quantized by each: compressed-tensors from its own
preset definition (``preset_name_to_scheme``), its min-max ranges (``calculate_qparams``,
``generate_gparam`` for FP4's global scale) and ``fake_quantize``; modfsm from its preset
(``PRESETS``), ``weight_qparams`` and ``fake_quantize``. The script prints, per preset, how
many weights differ and by how much at most, and fails unless every preset is equal bit for
bit but for the departures ``modifiers/quantization/args.py`` and ``fake.py`` document:

* symmetric integers: modfsm's scale is ``max|w| / qmax`` (127 for int8), the reference's
  ``max|w| / ((qmax - qmin) / 2)`` (127.5), so their grids differ;
* ``W8A16``: modfsm keeps 0.6.0's per-channel definition, 0.14 has groups of 128.

Exit status 0 when every preset is as expected, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys

import torch
from compressed_tensors.quantization import QuantizationStrategy, preset_name_to_scheme
from compressed_tensors.quantization.lifecycle.forward import fake_quantize as ct_fake_quantize
from compressed_tensors.quantization.utils.helpers import calculate_qparams, generate_gparam

from modfsm.modifiers.quantization.args import PRESETS
from modfsm.modifiers.quantization.fake import fake_quantize, weight_qparams

EXPECTED_TO_DIFFER = {
    "W8A8": "symmetric int8: modfsm divides by 127, the reference by 127.5",
    "W8A16": "per channel (0.6.0) against 0.14's groups of 128; and 127 against 127.5",
    "W4A16": "symmetric int4: modfsm divides by 7, the reference by 7.5",
}
SHAPES = ((64, 256), (128, 128), (32, 512))


def reference(weight: torch.Tensor, name: str) -> torch.Tensor:
    """``weight`` fake-quantized by compressed-tensors' preset ``name``."""
    args = preset_name_to_scheme(name, ["Linear"]).weights
    assert args is not None
    rows = weight.shape[0]
    global_scale = None
    if args.strategy == QuantizationStrategy.TENSOR:
        lo, hi = weight.amin().reshape(1), weight.amax().reshape(1)
    elif args.strategy == QuantizationStrategy.CHANNEL:
        lo, hi = weight.amin(dim=1, keepdim=True), weight.amax(dim=1, keepdim=True)
    else:  # group or tensor_group: one range per group of each row
        assert args.group_size is not None
        grouped = weight.reshape(rows, -1, args.group_size)
        lo, hi = grouped.amin(dim=2), grouped.amax(dim=2)
        if args.strategy == QuantizationStrategy.TENSOR_GROUP:
            global_scale = generate_gparam(weight.amin(), weight.amax())
    scale, zero_point = calculate_qparams(lo, hi, args, global_scale=global_scale)
    out: torch.Tensor = ct_fake_quantize(weight, scale, zero_point, args, global_scale=global_scale)
    return out


def modfsm_side(weight: torch.Tensor, name: str) -> torch.Tensor:
    """``weight`` fake-quantized by modfsm's preset ``name``."""
    args = PRESETS[name][0]
    scale, zero_point = weight_qparams(weight, args)
    return fake_quantize(weight, scale, zero_point, args)


def weights(seed: int, count: int) -> list[torch.Tensor]:
    """``count`` random weights per shape: plain, with outlier columns, with a zero group."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for rows, columns in SHAPES:
        for index in range(count):
            weight = torch.randn(rows, columns, generator=generator) * 0.02
            if index % 3 == 1:
                weight[:, torch.randint(0, columns, (4,), generator=generator)] *= 40
            elif index % 3 == 2:
                weight[:, :16] = 0.0
            out.append(weight)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=int, default=30, help="per shape (default 30)")
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args(argv)
    drawn = weights(options.seed, options.weights)
    ok = True
    for name in sorted(PRESETS):
        differ, worst = 0, 0.0
        for weight in drawn:
            ours, theirs = modfsm_side(weight, name), reference(weight, name)
            unequal = ours != theirs
            differ += int(unequal.sum())
            if unequal.any():
                worst = max(worst, float((ours - theirs).abs().max()))
        total = sum(w.numel() for w in drawn)
        expected = EXPECTED_TO_DIFFER.get(name)
        as_expected = (differ > 0) == (expected is not None)
        ok &= as_expected
        verdict = "as expected" if as_expected else "UNEXPECTED"
        reason = f" ({expected})" if expected else ""
        print(f"{name:<11} {differ:>9,} of {total:,} values differ, at most {worst:.3g}: "
              f"{verdict}{reason}")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
