"""Session overhead: the engine's cost per training step against one real training step.

For MLPs of a few sizes on the CPU, measured side by side in one process:

* ``torch step`` — zero_grad, forward, cross-entropy, backward, SGD step;
* ``engine`` — the five session calls of a step (batch_start, loss_calculated,
  optim_pre_step, optim_post_step, batch_end) with 10 no-op modifiers, all inside
  their window, in one stage (the engine alone, no torch work);
* ``loop with session`` vs ``plain loop`` — the same training loop with and
  without the session calls, as a whole.

Repeats alternate the measurements; figures are medians. The overhead fraction
is engine / torch step; the whole-loop ratio is the check that the two add up.

Run ``python -m benchmarks.session_overhead`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import torch

from engine import Modifier, State
from engine.session import Session

TARGET = 0.01
MODIFIERS = 10

#: name -> (layer widths, batch size)
MODELS: dict[str, tuple[tuple[int, ...], int]] = {
    "tiny 64-128-10, batch 32": ((64, 128, 10), 32),
    "small 784-512-512-10, batch 128": ((784, 512, 512, 10), 128),
    "small 784-1024-1024-10, batch 128": ((784, 1024, 1024, 10), 128),
}


@attrs.define
class NoopModifier(Modifier):
    """Does nothing: what is measured is the engine."""

    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        return True


def mlp(widths: Sequence[int]) -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    for fan_in, fan_out in itertools.pairwise(widths):
        layers += [torch.nn.Linear(fan_in, fan_out), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1])


def training_step(widths: Sequence[int], batch: int) -> Callable[[], None]:
    torch.manual_seed(0)
    model = mlp(widths)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    inputs = torch.randn(batch, widths[0])
    labels = torch.randint(0, widths[-1], (batch,))

    def step() -> None:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(inputs), labels)
        loss.backward()  # type: ignore[no-untyped-call]  # torch leaves it unannotated
        optimizer.step()

    return step


def new_session() -> Session:
    session = Session()
    session.initialize(recipe=[NoopModifier(start=0) for _ in range(MODIFIERS)])
    return session


def engine_step(session: Session) -> Callable[[], None]:
    def step() -> None:
        session.batch_start()
        session.loss_calculated()
        session.optim_pre_step()
        session.optim_post_step()
        session.batch_end()

    return step


def both(torch_step: Callable[[], None], session: Session) -> Callable[[], None]:
    def step() -> None:
        session.batch_start()
        session.loss_calculated()
        session.optim_pre_step()
        torch_step()
        session.optim_post_step()
        session.batch_end()

    return step


def per_call_us(function: Callable[[], None], calls: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(calls):
        function()
    return (time.perf_counter_ns() - start) / calls / 1000


def measure(name: str, repeats: int, torch_calls: int) -> dict[str, Any]:
    widths, batch = MODELS[name]
    torch_step = training_step(widths, batch)
    engine = engine_step(new_session())
    loop = both(torch_step, new_session())
    for warm in (torch_step, engine, loop):
        per_call_us(warm, 5)
    samples: dict[str, list[float]] = {"torch": [], "engine": [], "plain": [], "loop": []}
    for _ in range(repeats):
        samples["torch"].append(per_call_us(torch_step, torch_calls))
        samples["engine"].append(per_call_us(engine, 2000))
        samples["plain"].append(per_call_us(torch_step, torch_calls))
        samples["loop"].append(per_call_us(loop, torch_calls))
    torch_us = statistics.median(samples["torch"] + samples["plain"])
    engine_us = statistics.median(samples["engine"])
    ratios = [lo / pl for lo, pl in zip(samples["loop"], samples["plain"], strict=True)]
    return {
        "model": name,
        "torch_step_us": torch_us,
        "engine_us": engine_us,
        "overhead": engine_us / torch_us,
        "loop_ratio": statistics.median(ratios),
        "meets_target": engine_us / torch_us < TARGET,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=9, help="repeats per model (default 9)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 repeats, fewer steps")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    repeats, torch_calls = (2, 5) if args.quick else (args.repeats, 60)
    gc.disable()
    try:
        rows = [measure(name, repeats, torch_calls) for name in MODELS]
    finally:
        gc.enable()
    print(f"modfsm session overhead - Python {platform.python_version()}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, {MODIFIERS} no-op modifiers, "
          f"5 events per step, {repeats} repeats")  # fmt: skip
    print()
    print("| model | torch step (us) | engine per step (us) | overhead | target < 1% "
          "| loop with session / plain loop |")  # fmt: skip
    print("|---|---:|---:|---:|---|---:|")
    for row in rows:
        verdict = "met" if row["meets_target"] else "MISSED"
        print(f"| {row['model']} | {row['torch_step_us']:.0f} | {row['engine_us']:.1f} | "
              f"{row['overhead']:.2%} | {verdict} | {row['loop_ratio']:.3f} |")  # fmt: skip
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
