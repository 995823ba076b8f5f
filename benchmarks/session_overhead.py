"""Session overhead: the engine's cost per training step against one real training step.

For MLPs of a few sizes on the CPU, measured side by side in one process:

* ``torch step`` — zero_grad, forward, cross-entropy, backward, SGD step;
* ``engine alone`` — the five session calls of a step (batch_start,
  loss_calculated, optim_pre_step, optim_post_step, batch_end) with 10
  modifiers, all inside their window, in one stage, in a tight loop with no torch
  work (its code and data stay in the CPU caches: a lower bound). Two kinds of
  modifier: ``no-op`` (keeps every hook empty: the stage skips it) and
  ``on_update`` (overrides ``on_update``, which counts the call: every event
  reaches it, as in real modifiers);
* ``engine in the loop`` — the same five calls timed where a training loop makes
  them, around a real torch step (the step has just evicted the engine's code and
  data from the caches);
* ``loop - plain`` — what the session calls add to a whole training step: the
  step with and without them, timed step by step in pairs (the order swapped in
  every other pair), as the median of the paired differences with a 95%
  confidence interval. It also counts what the engine's memory traffic costs the
  torch step after it. This is the figure the target is judged on.
* ``floor`` — the same paired measurement for :class:`MinimalLoop`: the least a
  Python implementation of the five calls can do (check the order with one dict
  lookup, count steps and batches; no event object, no stages, no modifiers).
  No engine written in Python costs less than this, so where the floor itself
  is above the target, the target is out of reach.

Figures are medians; overheads are divided by the median torch step. The verdict
is ``met`` when the whole confidence interval of ``loop - plain`` lies below 1% of
the step, ``MISSED`` when it lies above, ``unclear`` when it straddles 1%.

Run ``python -m benchmarks.session_overhead`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import torch

from modfsm.engine import Event, EventType, Modifier, State
from modfsm.engine.loop.session import Session

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


UPDATES: list[int] = [0]


@attrs.define
class UpdatingModifier(Modifier):
    """Overrides ``on_update`` (it counts the call): every event of its window reaches it."""

    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        return True

    def on_update(self, state: State, event: Event, **kwargs: Any) -> None:
        UPDATES[0] += 1


#: kind -> the modifier class the session holds 10 of
KINDS: dict[str, type[Modifier]] = {"no-op": NoopModifier, "on_update": UpdatingModifier}


_ORDER = {
    ("idle", EventType.BATCH_START): "due",
    ("due", EventType.LOSS_CALCULATED): "loss",
    ("loss", EventType.OPTIM_PRE_STEP): "stepping",
    ("stepping", EventType.OPTIM_POST_STEP): "stepped",
    ("stepped", EventType.BATCH_END): "idle",
}


class MinimalLoop:
    """The floor: five calls that check their order and count, nothing else.

    It builds no :class:`~modfsm.engine.model.events.Event`: modfsm builds one only when a
    modifier receives the event or ``state.last_event`` is read, so building
    one is not part of the least a Python engine must do.
    """

    __slots__ = ("batch", "position", "step")

    def __init__(self) -> None:
        self.position, self.step, self.batch = "idle", 0, 0

    def _move(self, kind: EventType) -> None:
        position = _ORDER.get((self.position, kind))
        if position is None:
            raise RuntimeError(f"{kind} is out of order after {self.position}")
        self.position = position

    def batch_start(self) -> None:
        self._move(EventType.BATCH_START)

    def loss_calculated(self) -> None:
        self._move(EventType.LOSS_CALCULATED)

    def optim_pre_step(self) -> None:
        self._move(EventType.OPTIM_PRE_STEP)

    def optim_post_step(self) -> None:
        self._move(EventType.OPTIM_POST_STEP)
        self.step += 1

    def batch_end(self) -> None:
        self._move(EventType.BATCH_END)
        self.batch += 1


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


def new_session(kind: str = "no-op") -> Session:
    session = Session()
    session.initialize(recipe=[KINDS[kind](start=0) for _ in range(MODIFIERS)])
    return session


def engine_step(session: Session | MinimalLoop) -> Callable[[], None]:
    def step() -> None:
        session.batch_start()
        session.loss_calculated()
        session.optim_pre_step()
        session.optim_post_step()
        session.batch_end()

    return step


def both(torch_step: Callable[[], None], session: Session | MinimalLoop) -> Callable[[], None]:
    def step() -> None:
        session.batch_start()
        session.loss_calculated()
        session.optim_pre_step()
        torch_step()
        session.optim_post_step()
        session.batch_end()

    return step


def per_call_us(function: Callable[[], object], calls: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(calls):
        function()
    return (time.perf_counter_ns() - start) / calls / 1000


def paired_differences(
    plain: Callable[[], None], loop: Callable[[], None], pairs: int
) -> tuple[list[float], list[float]]:
    """Time ``pairs`` single steps of each, interleaved: (plain step times, loop - plain)."""
    clock = time.perf_counter_ns
    plain_us, differences = [], []
    for pair in range(pairs):
        first, second = (plain, loop) if pair % 2 else (loop, plain)
        start = clock()
        first()
        middle = clock()
        second()
        end = clock()
        a, b = (middle - start) / 1000, (end - middle) / 1000
        plain_step, loop_step = (a, b) if pair % 2 else (b, a)
        plain_us.append(plain_step)
        differences.append(loop_step - plain_step)
    return plain_us, differences


def median_interval(values: Sequence[float]) -> tuple[float, float]:
    """A distribution-free 95% confidence interval of the median (binomial order statistics)."""
    ordered = sorted(values)
    half_width = 1.96 * len(ordered) ** 0.5 / 2
    low = max(0, int(len(ordered) / 2 - half_width))
    high = min(len(ordered) - 1, int(len(ordered) / 2 + half_width))
    return ordered[low], ordered[high]


def in_situ(torch_step: Callable[[], None], session: Session) -> Callable[[], float]:
    """A training step with the session calls; returns the microseconds spent in them."""
    clock = time.perf_counter_ns

    def step() -> float:
        start = clock()
        session.batch_start()
        session.loss_calculated()
        session.optim_pre_step()
        middle = clock()
        torch_step()
        resume = clock()
        session.optim_post_step()
        session.batch_end()
        end = clock()
        return (middle - start + end - resume) / 1000

    return step


def verdict(low: float, high: float) -> str:
    """``met`` / ``MISSED`` / ``unclear``: where the interval lies against the target."""
    if high < TARGET:
        return "met"
    if low > TARGET:
        return "MISSED"
    return "unclear"


def measure(name: str, repeats: int, pairs: int, kind: str = "no-op") -> dict[str, Any]:
    widths, batch = MODELS[name]
    torch_step = training_step(widths, batch)
    engine = engine_step(new_session(kind))
    situ = in_situ(torch_step, new_session(kind))
    loop = both(torch_step, new_session(kind))
    floor_loop = both(torch_step, MinimalLoop())
    for warm in (torch_step, engine, loop, situ, floor_loop):
        per_call_us(warm, 5)
    engine_samples: list[float] = []
    situ_samples: list[float] = []
    plain_us: list[float] = []
    differences: list[float] = []
    floor_differences: list[float] = []
    for _ in range(repeats):
        engine_samples.append(per_call_us(engine, 2000))
        situ_samples += [situ() for _ in range(pairs)]
        plain, difference = paired_differences(torch_step, loop, pairs)
        plain_us += plain
        differences += difference
        floor_differences += paired_differences(torch_step, floor_loop, pairs)[1]
    torch_us = statistics.median(plain_us)
    floor_us = statistics.median(floor_differences)
    floor_low, floor_high = median_interval(floor_differences)
    engine_us = statistics.median(engine_samples)
    in_loop_us = statistics.median(differences)
    low, high = median_interval(differences)
    return {
        "model": name,
        "modifiers": kind,
        "torch_step_us": torch_us,
        "engine_us": engine_us,
        "overhead": engine_us / torch_us,
        "in_situ_us": statistics.median(situ_samples),
        "in_loop_us": in_loop_us,
        "in_loop_ci_us": [low, high],
        "in_loop_overhead": in_loop_us / torch_us,
        "in_loop_overhead_ci": [low / torch_us, high / torch_us],
        "pairs": len(differences),
        "verdict": verdict(low / torch_us, high / torch_us),
        "floor_us": floor_us,
        "floor_ci_us": [floor_low, floor_high],
        "floor_overhead": floor_us / torch_us,
    }


def chosen_models(texts: Sequence[str] | None) -> list[str]:
    """The names of :data:`MODELS` that contain one of ``texts`` (all of them for None)."""
    if not texts:
        return list(MODELS)
    return [name for name in MODELS if any(text in name for text in texts)]


def processor() -> str:
    """The CPU's model name, where the system says it (the figures depend on it)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "processor unknown"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=9, help="repeats per model (default 9)")
    parser.add_argument(
        "--pairs", type=int, default=100, help="step pairs per repeat (default 100)"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 repeats, fewer steps")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument(
        "--model",
        action="append",
        metavar="TEXT",
        help="measure only the models whose name contains TEXT (repeatable; default: all)",
    )
    args = parser.parse_args(argv)
    repeats, pairs = (2, 5) if args.quick else (args.repeats, args.pairs)
    names = chosen_models(args.model)
    if not names:
        parser.error(
            f"--model {args.model!r} matches none of the models {list(MODELS)}. "
            "To fix, give part of one of those names, e.g. --model 784-512."
        )
    load_before = os.getloadavg()[0]
    gc.disable()
    try:
        rows = [measure(name, repeats, pairs, kind) for kind in KINDS for name in names]
    finally:
        gc.enable()
    load_after = os.getloadavg()[0]
    print(f"modfsm session overhead - Python {platform.python_version()}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, {MODIFIERS} modifiers, "
          f"5 events per step, {repeats} repeats x {pairs} step pairs")  # fmt: skip
    # Other processes inflate the torch step and so shrink every overhead: say how busy it was.
    print(f"load average (1 min) before {load_before:.2f}, after {load_after:.2f}, on "
          f"{os.cpu_count()} CPUs ({processor()})")  # fmt: skip
    print()
    print("| modifiers | model | torch step (us) | engine alone (us) | engine in the loop (us) "
          "| loop - plain (us) [95% CI] | overhead [95% CI] | target < 1% "
          "| floor (us) [95% CI] | floor share |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---|---:|---:|")
    for row in rows:
        low, high = row["in_loop_ci_us"]
        low_share, high_share = row["in_loop_overhead_ci"]
        floor_low, floor_high = row["floor_ci_us"]
        print(f"| {row['modifiers']} | {row['model']} | {row['torch_step_us']:.0f} | "
              f"{row['engine_us']:.1f} | {row['in_situ_us']:.1f} | "
              f"{row['in_loop_us']:.1f} [{low:.1f}, {high:.1f}] | "
              f"{row['in_loop_overhead']:.2%} [{low_share:.2%}, {high_share:.2%}] | "
              f"{row['verdict']} | {row['floor_us']:.1f} [{floor_low:.1f}, {floor_high:.1f}] | "
              f"{row['floor_overhead']:.2%} |")  # fmt: skip
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
