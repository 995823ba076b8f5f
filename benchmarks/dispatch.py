"""Dispatch benchmark: modfsm's compiled lifecycle against the flag-based baseline.

Measures, side by side in one process:

* ``update_event`` on three kinds of modifier — an ``@attrs.define`` class that
  overrides ``on_event`` and ``on_update`` (what real modifiers do), the same hooks
  in a subclass written without the decorator, and a no-op one — in each phase
  of its life (waiting for its window, inside it, after it), cycling through the
  five events of a training step. The baseline of each is the reference's flag
  logic with the same hooks, passing ``**kwargs`` to every hook as the reference
  does. The two implementations alternate within every repeat and the
  ratio is taken per repeat; the figure is the median ratio (and quartiles).
  The loop's own cost is measured and subtracted. ``transitions``' own dispatch
  of the same declaration is timed too, for context.
* bytes per initialized modifier (tracemalloc), and per ``transitions.Machine``
  if each modifier had its own;
* construction + ``initialize`` time, and the one-time cost of compiling a
  declaration.

Run ``make bench`` (or ``python -m benchmarks.dispatch``); ``--quick`` for a smoke
run, ``--json FILE`` to keep the figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from benchmarks.baseline import TALLY, FlagHooked, FlagModifier, FlagUndecorated
from modfsm.engine import LIFECYCLE, Event, EventType, Modifier, State
from modfsm.engine.kernel.compiler import compile_machine
from modfsm.engine.model.events import TRAINING_STEP_EVENTS
from modfsm.engine.runtime.modifier import START_PROBE
from modfsm.engine.tools.transitions_adapter import TransitionsDriver

TARGET_RATIO = 1.0
TARGET_BYTES_RATIO = 2.0


#: phase -> (start, end, global_step of the timed events)
PHASES: dict[str, tuple[float | None, float | None, int]] = {
    "waiting": (1_000_000, None, 0),
    "active": (0, 1_000_000, 1),
    "ended": (0, 1, 5),
}


@attrs.define
class NoopModifier(Modifier):
    """A modifier whose hooks do nothing: the dispatch is all that is measured."""

    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        return True


@attrs.define
class Hooked(Modifier):
    """A real modifier's shape: it overrides ``on_event`` and ``on_update``."""

    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        return True

    def on_event(self, state: State, event: Event, **kwargs: Any) -> None:
        TALLY[0] += 1

    def on_update(self, state: State, event: Event, **kwargs: Any) -> None:
        TALLY[1] += 1


class Undecorated(Modifier):
    """The same hooks (the same functions), in a subclass written without ``@attrs.define``."""

    on_initialize = Hooked.on_initialize
    on_event = Hooked.on_event
    on_update = Hooked.on_update


#: kind -> (modfsm class, baseline class)
KINDS: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
    "hooked": (Hooked, FlagHooked),
    "undecorated": (Undecorated, FlagUndecorated),
    "no-op": (NoopModifier, FlagModifier),
}


def prepared(cls: Callable[..., Any], phase: str, state: State) -> Any:
    """A modifier of ``cls`` driven into ``phase``."""
    start, end, _ = PHASES[phase]
    modifier = cls(start=start, end=end)
    modifier.initialize(state)
    if phase == "ended":
        modifier.update_event(state, Event(EventType.BATCH_START, global_step=0))
        modifier.update_event(state, Event(EventType.BATCH_END, global_step=1))
    return modifier


def time_updates(modifier: Any, state: State, events: Sequence[Event], loops: int) -> int:
    start = time.perf_counter_ns()
    for _ in range(loops):
        for event in events:
            modifier.update_event(state, event)
    return time.perf_counter_ns() - start


def time_loop(events: Sequence[Event], loops: int) -> int:
    start = time.perf_counter_ns()
    for _ in range(loops):
        for _event in events:
            pass
    return time.perf_counter_ns() - start


def time_driver(
    driver: TransitionsDriver, state: State, events: Sequence[Event], loops: int
) -> int:
    triggers = [LIFECYCLE.event_triggers[e.type_] for e in events]
    pairs = list(zip(triggers, events, strict=True))
    start = time.perf_counter_ns()
    for _ in range(loops):
        for trigger, event in pairs:
            driver.fire(trigger, state, event, {})
    return time.perf_counter_ns() - start


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


def bench_phase(phase: str, repeats: int, calls: int, kind: str = "no-op") -> dict[str, Any]:
    state = State()
    step = PHASES[phase][2]
    events = [Event(t, global_step=step) for t in TRAINING_STEP_EVENTS]
    loops = max(1, calls // len(events))
    n = loops * len(events)
    ours_cls, base_cls = KINDS[kind]
    ours, base = prepared(ours_cls, phase, state), prepared(base_cls, phase, state)
    start, end, _ = PHASES[phase]
    driver = TransitionsDriver(LIFECYCLE, NoopModifier(start=start, end=end))
    driver.machine.set_state(str(ours.lifecycle_state), model=driver)
    ratios, ours_ns, base_ns = [], [], []
    for repeat in range(repeats):
        loop = time_loop(events, loops)
        if repeat % 2:
            t_ours = time_updates(ours, state, events, loops)
            t_base = time_updates(base, state, events, loops)
        else:
            t_base = time_updates(base, state, events, loops)
            t_ours = time_updates(ours, state, events, loops)
        net_ours, net_base = max(t_ours - loop, 1), max(t_base - loop, 1)
        ratios.append(net_ours / net_base)
        ours_ns.append(net_ours / n)
        base_ns.append(net_base / n)
    driver_loops = max(1, loops // 20)
    driver_ns = time_driver(driver, state, events, driver_loops) / (driver_loops * len(events))
    q1, median, q3 = quartiles(ratios)
    return {
        "kind": kind,
        "phase": phase,
        "baseline_ns": statistics.median(base_ns),
        "modfsm_ns": statistics.median(ours_ns),
        "ratio_median": median,
        "ratio_q1": q1,
        "ratio_q3": q3,
        "transitions_ns": driver_ns,
        "transitions_ratio": driver_ns / statistics.median(base_ns),
        "meets_target": median <= TARGET_RATIO,
    }


@attrs.define
class Counts:
    """A plain attrs class with a counter: what a field write costs without validators."""

    count: int = 0


@attrs.define
class CountingModifier(NoopModifier):
    """A modifier that keeps a counter in a field: attrs writes it through a
    ``__setattr__`` that validates the inherited fields on assignment."""

    count: int = 0


@attrs.define(on_setattr=attrs.setters.NO_OP)
class CountingQuietly(NoopModifier):
    """The same, declared with ``on_setattr=NO_OP``: no ``__setattr__`` (and no validation
    on assignment in this class)."""

    count: int = 0


def field_writes(repeats: int, calls: int) -> dict[str, float]:
    """ns per ``obj.count += 1`` on each of the three classes (median of ``repeats``)."""
    found: dict[str, float] = {}
    for name, obj in (("plain attrs", Counts()), ("modifier", CountingModifier()),
                      ("modifier, on_setattr=NO_OP", CountingQuietly())):  # fmt: skip
        samples = []
        for _ in range(repeats):
            start = time.perf_counter_ns()
            for _ in range(calls):
                obj.count += 1
            samples.append((time.perf_counter_ns() - start) / calls)
        found[name] = statistics.median(samples)
    return found


def bytes_per(factory: Callable[[], Any], count: int) -> float:
    state = State()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    items = [factory() for _ in range(count)]
    for item in items:
        item.initialize(state)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / count


def bytes_per_machine(count: int) -> float:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    drivers = [TransitionsDriver(LIFECYCLE, NoopModifier()) for _ in range(count)]
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del drivers
    return (after - before) / count


def construction(repeats: int, count: int) -> dict[str, float]:
    state = State()
    ratios, ours_us, base_us = [], [], []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        for _ in range(count):
            FlagModifier(start=0, end=10).initialize(state)
        t_base = time.perf_counter_ns() - start
        start = time.perf_counter_ns()
        for _ in range(count):
            NoopModifier(start=0, end=10).initialize(state)
        t_ours = time.perf_counter_ns() - start
        ratios.append(t_ours / t_base)
        ours_us.append(t_ours / count / 1000)
        base_us.append(t_base / count / 1000)
    compile_us = []
    for index in range(repeats):
        variant = attrs.evolve(LIFECYCLE, name=f"bench-compile-{index}")
        start = time.perf_counter_ns()
        compile_machine(variant, state_attr="_lc")
        compile_us.append((time.perf_counter_ns() - start) / 1000)
    start = time.perf_counter_ns()
    for _ in range(max(1, count // 100)):
        TransitionsDriver(LIFECYCLE, NoopModifier()).fire("initialize", state, START_PROBE, {})
    machine_us = (time.perf_counter_ns() - start) / max(1, count // 100) / 1000
    return {
        "baseline_us": statistics.median(base_us),
        "modfsm_us": statistics.median(ours_us),
        "ratio_median": statistics.median(ratios),
        "compile_us": statistics.median(compile_us),
        "machine_per_modifier_us": machine_us,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=31, help="repeats per phase (default 31)")
    parser.add_argument("--calls", type=int, default=20_000, help="calls per repeat")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 3 repeats of 500 calls")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    repeats, calls = (3, 500) if args.quick else (args.repeats, args.calls)

    gc.disable()
    try:
        phases = [bench_phase(phase, repeats, calls, kind) for kind in KINDS for phase in PHASES]
    finally:
        gc.enable()
    count = 2_000 if args.quick else 20_000
    memory = {
        "baseline_bytes": bytes_per(lambda: FlagModifier(start=0, end=10), count),
        "modfsm_bytes": bytes_per(lambda: NoopModifier(start=0, end=10), count),
        "transitions_machine_bytes": bytes_per_machine(20 if args.quick else 200),
    }
    memory["ratio"] = memory["modfsm_bytes"] / memory["baseline_bytes"]
    build = construction(max(3, repeats // 3), count // 4)
    writes = field_writes(max(3, repeats // 3), calls)

    print(f"modfsm dispatch benchmark - Python {platform.python_version()}, {platform.machine()}, "
          f"{repeats} repeats x {calls} update_event calls per phase")  # fmt: skip
    print()
    print("| modifier | phase | baseline ns/call | modfsm ns/call | ratio median [q1, q3] | "
          "target <= 1.0 | transitions dispatch ns/call (x baseline) |")  # fmt: skip
    print("|---|---|---:|---:|---|---|---:|")
    for p in phases:
        verdict = "met" if p["meets_target"] else "MISSED"
        print(f"| {p['kind']} | {p['phase']} | {p['baseline_ns']:.0f} | {p['modfsm_ns']:.0f} | "
              f"{p['ratio_median']:.3f} [{p['ratio_q1']:.3f}, {p['ratio_q3']:.3f}] | {verdict} | "
              f"{p['transitions_ns']:.0f} ({p['transitions_ratio']:.1f}x) |")  # fmt: skip
    print()
    verdict = "met" if memory["ratio"] <= TARGET_BYTES_RATIO else "MISSED"
    print(f"bytes per initialized modifier: baseline {memory['baseline_bytes']:.0f}, "
          f"modfsm {memory['modfsm_bytes']:.0f} (ratio {memory['ratio']:.2f}, target <= 2: "
          f"{verdict}); a transitions.Machine per modifier would add "
          f"{memory['transitions_machine_bytes']:.0f}")  # fmt: skip
    print(f"construct + initialize: baseline {build['baseline_us']:.2f} us, modfsm "
          f"{build['modfsm_us']:.2f} us (ratio {build['ratio_median']:.2f}); compiling a "
          f"declaration once per class: {build['compile_us']:.0f} us; a transitions.Machine per "
          f"modifier: {build['machine_per_modifier_us']:.0f} us")  # fmt: skip
    print("a field write in a hook (obj.count += 1), ns: "
          + ", ".join(f"{name} {ns:.0f}" for name, ns in writes.items()))  # fmt: skip
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"phases": phases, "memory": memory, "construction": build,
                       "field_writes_ns": writes}, handle, indent=2)  # fmt: skip
    met = all(p["meets_target"] for p in phases) and memory["ratio"] <= TARGET_BYTES_RATIO
    return 0 if met or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
