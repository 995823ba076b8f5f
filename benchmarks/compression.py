"""Training throughput of the default recipe: modfsm against the same work written by hand.

Both variants train :class:`modfsm.engine.app.digits.DigitsMLP` on the digits with the same
batches, Adam and the default recipe of ``modfsm run`` (gradual magnitude
pruning to 75% over steps [150, 350), masks held afterwards, int8 fake
quantization from step 450: weights per channel, inputs with one static scale):

* ``modfsm`` — a :class:`~modfsm.engine.loop.session.Session` with the recipe's modifiers,
  the optimizer wrapped, the five calls of every step;
* ``by hand`` — a plain loop that calls the same mask and fake-quantization
  functions (:mod:`modfsm.modifiers.pruning.masks`, :mod:`modfsm.modifiers.quantization.fake`)
  at the same points, with a hand-written quantized forward instead of hooks.

The two must end with bitwise-identical weights (checked every round), so they
do the same arithmetic and the difference is the engine: events, dispatch,
hooks. torch on the CPU is not always bitwise reproducible: on the development
machine, 3 of about 600 training runs ended with different weights, one of
them a by-hand run (no engine involved) that repeated in the same process gave
the usual weights. A round whose weights differ is therefore run again, once
(``reruns`` counts them); a second mismatch fails the benchmark, as an engine
that changed the arithmetic would.
Rounds alternate the two (order swapped every round); figures are medians of
the per-round ratios, for the whole run and for each phase (dense, pruning,
masks held, quantization-aware training). A step is timed whole, from fetching
its batch to the end of the batch: the session keeps the batch it is given
(``state.batch_data``) until the next ``batch_start``, so the previous batch is
released there rather than when the loop fetches the next one.

Run ``python -m benchmarks.compression`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import torch

from modfsm.engine.app import digits
from modfsm.engine.app.runner import Batches, default_recipe_text
from modfsm.engine.config.recipe import Recipe
from modfsm.engine.loop.session import Session
from modfsm.engine.model.events import Event, EventType
from modfsm.modifiers.pruning.masks import cubic_sparsity, unstructured_mask
from modfsm.modifiers.quantization.args import parse_config_groups
from modfsm.modifiers.quantization.fake import (
    Observer,
    dequantize,
    fake_quantize,
    quantize,
    weight_qparams,
)

TARGET: Final = 0.03
STEPS: Final = 600
BATCH: Final = 32
PHASES: Final = ("dense", "pruning", "masks held", "quantization-aware")
RERUNS: Final = 1
"""How many times a round whose two variants ended with different weights is run again."""


def _recipe_arguments() -> tuple[dict[str, Any], dict[str, Any]]:
    """The pruning and quantization modifiers' arguments in the default recipe."""
    recipe = Recipe.load(default_recipe_text())
    specs = [spec for stage in recipe.stages for spec in stage.modifiers]
    by_type = {spec.type: dict(spec.args) for spec in specs}
    return by_type["MagnitudePruningModifier"], by_type["QuantizationModifier"]


def _phase(step: int, pruning: dict[str, Any], quantization: dict[str, Any]) -> int:
    if step < pruning["start"]:
        return 0
    if step < pruning["end"]:
        return 1
    return 2 if step < quantization["start"] else 3


def _setup(seed: int) -> tuple[digits.DigitsMLP, torch.optim.Optimizer, Batches]:
    data = digits.load()
    torch.manual_seed(seed)
    model = digits.DigitsMLP()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    return model, optimizer, Batches(data.train_x, data.train_y, BATCH, seed)


def _digest(model: torch.nn.Module) -> str:
    hasher = hashlib.sha256()
    for tensor in model.state_dict().values():
        hasher.update(tensor.detach().contiguous().numpy().tobytes())
    return hasher.hexdigest()[:16]


def run_modfsm(steps: int, seed: int, clock: list[float]) -> str:
    """The default recipe through a Session; ``clock[phase]`` accumulates seconds."""
    pruning, quantization = _recipe_arguments()
    model, optimizer, batches = _setup(seed)
    session = Session()
    session.initialize(
        model=model, optimizer=optimizer, recipe=default_recipe_text(), wrap_optimizer=True
    )
    cross_entropy = torch.nn.functional.cross_entropy
    for step in range(steps):
        began = time.perf_counter()
        x, y = batches.batch(step)
        session.batch_start(x)
        loss = cross_entropy(model(x), y)
        session.loss_calculated(loss)
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]  # torch leaves it unannotated
        optimizer.step()
        session.batch_end()
        clock[_phase(step, pruning, quantization)] += time.perf_counter() - began
    session.finalize()
    return _digest(model)


def run_by_hand(steps: int, seed: int, clock: list[float]) -> str:
    """The same schedule, masks and fake quantization, called directly."""
    pruning, quantization = _recipe_arguments()
    model, optimizer, batches = _setup(seed)
    layers = [model.fc1, model.fc2, model.fc3]
    start, end, update = pruning["start"], pruning["end"], pruning["update"]
    initial, final = pruning.get("init_sparsity", 0.0), pruning["final_sparsity"]
    (scheme,) = parse_config_groups(quantization["config_groups"])
    weights_args, inputs_args = scheme.weights, scheme.input_activations
    assert weights_args is not None
    assert inputs_args is not None
    observers = [Observer(inputs_args) for _ in layers]
    masks: list[torch.Tensor] = []

    def prune(step: int) -> None:
        nonlocal masks
        sparsity = cubic_sparsity(step, start, end, initial, final)
        masks = [unstructured_mask(layer.weight, sparsity) for layer in layers]
        apply()

    def apply() -> None:
        with torch.no_grad():
            for layer, mask in zip(layers, masks, strict=True):
                layer.weight.mul_(mask)

    def quantized_forward(x: torch.Tensor) -> torch.Tensor:
        for position, (layer, observer) in enumerate(zip(layers, observers, strict=True)):
            w = layer.weight
            w = fake_quantize(w, *weight_qparams(w, weights_args), weights_args)
            observer.update(x)
            x = fake_quantize(x, *observer.qparams(), inputs_args)
            x = torch.nn.functional.linear(x, w, layer.bias)
            if position < 2:
                x = torch.relu(x)
        return x

    cross_entropy = torch.nn.functional.cross_entropy
    pruned = ended = False
    for step in range(steps):
        began = time.perf_counter()
        x, y = batches.batch(step)
        if not pruned and start <= step < end:  # the window opens at this batch
            prune(step)
            pruned = True
        quantizing = step >= quantization["start"]
        loss = cross_entropy(quantized_forward(x) if quantizing else model(x), y)
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]  # torch leaves it unannotated
        optimizer.step()
        done = step + 1
        if pruned and not ended:
            if Event(EventType.OPTIM_POST_STEP, global_step=done).should_update(start, end, update):
                prune(done)
            else:
                apply()
            if done >= end:  # the window closes at this batch's end
                prune(end)
                ended = True
        elif ended:
            apply()
        clock[_phase(step, pruning, quantization)] += time.perf_counter() - began
    apply()  # finalize: the pruning modifier applies its masks once more
    with torch.no_grad():  # finalize: the quantization modifier snaps weights to the grid
        for layer in layers:
            scale, zero_point = weight_qparams(layer.weight, weights_args)
            q = quantize(layer.weight, scale, zero_point, weights_args)
            layer.weight.copy_(dequantize(q, scale, zero_point, weights_args))
    return _digest(model)


def measure(steps: int, rounds: int, seed: int = 0) -> dict[str, Any]:
    """Alternate the two variants ``rounds`` times; return the figures."""
    variants: dict[str, Callable[[int, int, list[float]], str]] = {
        "modfsm": run_modfsm,
        "hand": run_by_hand,
    }
    times: dict[str, list[list[float]]] = {name: [] for name in variants}
    digests: set[str] = set()
    reruns = 0
    for round_ in range(rounds):
        order = list(variants) if round_ % 2 == 0 else list(reversed(variants))
        for attempt in range(1 + RERUNS):
            clocks = {name: [0.0] * len(PHASES) for name in order}
            found = {variants[name](steps, seed, clocks[name]) for name in order}
            if len(found | digests) == 1:
                break
            if attempt == RERUNS:
                raise AssertionError(
                    f"the two variants ended with different weights in round {round_}, "
                    f"{1 + RERUNS} times: {sorted(found | digests)}"
                )
            reruns += 1
        digests |= found
        for name in order:
            times[name].append(clocks[name])
    overall = [sum(m) / sum(h) for m, h in zip(times["modfsm"], times["hand"], strict=True)]
    phases = []
    for index, phase in enumerate(PHASES):
        ratios = [
            m[index] / h[index]
            for m, h in zip(times["modfsm"], times["hand"], strict=True)
            if h[index] > 0
        ]
        if not ratios:
            continue
        phases.append(
            {
                "phase": phase,
                "modfsm_s": statistics.median(m[index] for m in times["modfsm"]),
                "hand_s": statistics.median(h[index] for h in times["hand"]),
                "ratio": statistics.median(ratios),
            }
        )
    modfsm_s = statistics.median(sum(m) for m in times["modfsm"])
    hand_s = statistics.median(sum(h) for h in times["hand"])
    return {
        "steps": steps,
        "rounds": rounds,
        "modfsm_steps_per_s": steps / modfsm_s,
        "hand_steps_per_s": steps / hand_s,
        "ratio": statistics.median(overall),
        "ratio_q1": statistics.quantiles(overall, n=4)[0] if len(overall) > 1 else overall[0],
        "ratio_q3": statistics.quantiles(overall, n=4)[2] if len(overall) > 1 else overall[0],
        "phases": phases,
        "weights_identical": True,
        "reruns": reruns,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--rounds", type=int, default=25, help="rounds (default 25)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    steps, rounds = (STEPS, 2) if args.quick else (STEPS, args.rounds)
    figures = measure(steps, rounds)
    print(f"compression throughput: default recipe, {steps} steps, {rounds} rounds, "
          f"torch {figures['torch']}, {figures['threads']} threads")  # fmt: skip
    print(f"  modfsm   {figures['modfsm_steps_per_s']:8.1f} steps/s")
    print(f"  by hand  {figures['hand_steps_per_s']:8.1f} steps/s  (same final weights: yes; "
          f"rounds re-run after a mismatch: {figures['reruns']})")  # fmt: skip
    overhead = figures["ratio"] - 1
    verdict = "met" if overhead < TARGET else "MISSED"
    print(f"  time ratio modfsm / by hand: {figures['ratio']:.4f} "
          f"[{figures['ratio_q1']:.4f}, {figures['ratio_q3']:.4f}] -> "
          f"{overhead:+.2%} (target < {TARGET:.0%}: {verdict})")  # fmt: skip
    for phase in figures["phases"]:
        print(f"    {phase['phase']:<20} {phase['ratio']:.4f}")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
