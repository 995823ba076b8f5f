"""The anchor: modfsm's session against llm-compressor's, on the same 10 modifiers.

Ten modifiers that override ``on_update`` (it counts the call), all inside their
window, receive the five events of a training step — ``batch_start``,
``loss_calculated``, ``optim_pre_step``, ``optim_post_step``, ``batch_end`` —
through llm-compressor's session callbacks (``llmcompressor.core.LifecycleCallbacks``)
and through a modfsm :class:`~modfsm.engine.loop.session.Session`, interleaved in
one process (the order swapped every other repeat). The figure is the median of
the per-repeat ratios modfsm / llm-compressor, with quartiles; the target is
<= 0.15.

It needs ``llmcompressor`` (0.14.0.1), which is not a dependency of modfsm: run
``make bench-llmc``, which installs it in its own virtual environment
(``.venv-llmc``, with the same torch 2.13.0) and runs this module.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import torch

from modfsm.engine import Event, Modifier, State
from modfsm.engine.loop.session import Session

TARGET = 0.15
MODIFIERS = 10
COUNTS: list[int] = [0, 0]  # on_update calls: llm-compressor's, modfsm's


@attrs.define
class Counting(Modifier):
    """modfsm's modifier: overrides ``on_update``, which counts the call."""

    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        return True

    def on_update(self, state: State, event: Event, **kwargs: Any) -> None:
        COUNTS[1] += 1


def llmc_step() -> tuple[Callable[[], None], Callable[[], None]]:
    """llm-compressor's step with 10 counting modifiers, and how to close its session."""
    from llmcompressor.core import LifecycleCallbacks as callbacks
    from llmcompressor.core import create_session
    from llmcompressor.modifiers import Modifier as LlmcModifier

    class LlmcCounting(LlmcModifier):  # type: ignore[misc]  # untyped package
        def on_initialize(self, state: Any, **kwargs: Any) -> bool:
            return True

        def on_update(self, state: Any, event: Any, **kwargs: Any) -> None:
            COUNTS[0] += 1

    context = create_session()
    session = context.__enter__()
    session.initialize(
        recipe=[LlmcCounting(start=0) for _ in range(MODIFIERS)],
        model=torch.nn.Linear(4, 4),
        start=0,
    )
    loss = torch.tensor(0.0)

    def step() -> None:
        callbacks.batch_start()
        callbacks.loss_calculated(loss=loss)
        callbacks.optim_pre_step()
        callbacks.optim_post_step()
        callbacks.batch_end()

    return step, lambda: context.__exit__(None, None, None)


def modfsm_step() -> Callable[[], None]:
    session = Session()
    session.initialize(recipe=[Counting(start=0) for _ in range(MODIFIERS)])
    loss = torch.tensor(0.0)

    def step() -> None:
        session.batch_start()
        session.loss_calculated(loss)
        session.optim_pre_step()
        session.optim_post_step()
        session.batch_end()

    return step


def per_step_us(step: Callable[[], None], steps: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(steps):
        step()
    return (time.perf_counter_ns() - start) / steps / 1000


def measure(repeats: int, steps: int) -> dict[str, Any]:
    theirs, close = llmc_step()
    ours = modfsm_step()
    try:
        per_step_us(theirs, 50)
        per_step_us(ours, 50)
        llmc_us, modfsm_us, ratios = [], [], []
        for repeat in range(repeats):
            if repeat % 2:
                mine, other = per_step_us(ours, steps), per_step_us(theirs, steps)
            else:
                other, mine = per_step_us(theirs, steps), per_step_us(ours, steps)
            llmc_us.append(other)
            modfsm_us.append(mine)
            ratios.append(mine / other)
    finally:
        close()
    if COUNTS[0] != COUNTS[1]:
        raise AssertionError(f"the modifiers were not called alike: {COUNTS}")
    q1, median, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return {
        "llmc_us": statistics.median(llmc_us),
        "modfsm_us": statistics.median(modfsm_us),
        "ratio_median": median,
        "ratio_q1": q1,
        "ratio_q3": q3,
        "on_update_calls": COUNTS[1],
        "meets_target": median <= TARGET,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=21, help="repeats (default 21)")
    parser.add_argument("--steps", type=int, default=500, help="steps per repeat (default 500)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    try:
        import llmcompressor
    except ImportError:
        print("modfsm llmc anchor: llmcompressor is not installed here. To fix, run "
              "'make bench-llmc' (it installs llmcompressor==0.14.0.1 in .venv-llmc).",
              file=sys.stderr)  # fmt: skip
        return 2
    logging.disable(logging.WARNING)
    try:
        from loguru import logger

        logger.disable("llmcompressor")
    except ImportError:
        pass
    gc.disable()
    try:
        figures = measure(args.repeats, args.steps)
    finally:
        gc.enable()
    print(f"modfsm against llm-compressor {llmcompressor.__version__} - torch "
          f"{torch.__version__}, {MODIFIERS} modifiers overriding on_update, 5 events a step, "
          f"{args.repeats} repeats x {args.steps} steps, interleaved")  # fmt: skip
    print()
    print("| llm-compressor us/step | modfsm us/step | ratio median [q1, q3] | target <= 0.15 |")
    print("|---:|---:|---|---|")
    verdict = "met" if figures["meets_target"] else "MISSED"
    print(f"| {figures['llmc_us']:.1f} | {figures['modfsm_us']:.1f} | "
          f"{figures['ratio_median']:.3f} [{figures['ratio_q1']:.3f}, {figures['ratio_q3']:.3f}] "
          f"| {verdict} |")  # fmt: skip
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(figures, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
