"""Random lifecycle traces run on the real llm-compressor and on modfsm, compared call by call.

Not collected by pytest (llm-compressor is not a dependency): ``make llmc-exact`` runs it in
``.venv-llmc`` (llm-compressor 0.14.0.1 and modfsm). Each trace draws a schedule
(``start``, ``end``) and a sequence of calls (``initialize``, ``finalize`` and
``update_event`` with every event type of 0.14, steps drawn from a small range so windows open
and close, steps going backwards included). Both sides record every hook and guard call
(name, event type, ``current_index``); after each call the recorded calls, whether it raised
``RuntimeError``, and the four flags must be equal. Hooks return True, so the documented
deviations D1-D5 (``specs/lifecycle.md``) do not apply.

modfsm runs ``CALIBRATION_LIFECYCLE`` (the table of 0.13+) and, with ``--table lifecycle``,
the first table (0.6.0-0.12), which must then differ on the calibration events: the script
reports the mismatches it finds and the first differing trace.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
from typing import Any

import attrs
from llmcompressor.core.events import Event as LEvent
from llmcompressor.core.events import EventType as LEventType
from llmcompressor.core.state import State as LState
from llmcompressor.modifiers import Modifier as LModifier
from pydantic import PrivateAttr

from modfsm.engine import CALIBRATION_LIFECYCLE, LIFECYCLE, Event, EventType, Modifier, State

HOOKS = (
    "on_start",
    "on_update",
    "on_end",
    "on_event",
    "on_calibration_start",
    "on_sequential_epoch_end",
    "on_calibration_end",
)
EVENTS = (
    "batch_start",
    "loss_calculated",
    "batch_end",
    "optim_pre_step",
    "optim_post_step",
    "calibration_start",
    "sequential_epoch_end",
    "calibration_end",
)

Entry = tuple[str, str | None, float | None]


def _entry(name: str, event: Any) -> Entry:
    if event is None:
        return (name, None, None)
    kind = getattr(event.type_, "value", event.type_)
    # modfsm's value for the calibration events is their 0.6 name; compare by event
    kind = {"calibration_epoch_start": "calibration_start",
            "calibration_epoch_end": "calibration_end"}.get(kind, kind)  # fmt: skip
    return (name, str(kind), float(event.current_index))


class RealModifier(LModifier):  # type: ignore[misc]  # llm-compressor is untyped here
    """llm-compressor 0.14's Modifier, recording its hooks and guards."""

    _log: list[Entry] = PrivateAttr(default_factory=list)

    def on_initialize(self, state: Any, **kwargs: Any) -> bool:
        self._log.append(("on_initialize", None, None))
        return True

    def on_finalize(self, state: Any, **kwargs: Any) -> bool:
        self._log.append(("on_finalize", None, None))
        return True

    def should_start(self, event: Any) -> bool:
        self._log.append(_entry("should_start", event))
        return bool(super().should_start(event))

    def should_end(self, event: Any) -> bool:
        self._log.append(_entry("should_end", event))
        return bool(super().should_end(event))


def _recording(name: str) -> Any:
    def hook(self: Any, state: Any, event: Any, *args: Any, **kwargs: Any) -> None:
        (self._log if isinstance(self, LModifier) else self.log).append(_entry(name, event))

    return hook


for _name in HOOKS:
    setattr(RealModifier, _name, _recording(_name))


def modfsm_class(table: str) -> type[Modifier]:
    """A modfsm modifier on ``table`` recording its hooks and guards like :class:`RealModifier`."""

    def on_initialize(self: Any, state: State, **kwargs: Any) -> bool:
        self.log.append(("on_initialize", None, None))
        return True

    def on_finalize(self: Any, state: State, **kwargs: Any) -> bool:
        self.log.append(("on_finalize", None, None))
        return True

    def should_start(self: Any, event: Event) -> bool:
        self.log.append(_entry("should_start", event))
        return Modifier.should_start(self, event)

    def should_end(self: Any, event: Event) -> bool:
        self.log.append(_entry("should_end", event))
        return Modifier.should_end(self, event)

    namespace: dict[str, Any] = {
        "__lifecycle__": CALIBRATION_LIFECYCLE if table == "calibration" else LIFECYCLE,
        "__annotations__": {"log": "list[Entry]"},
        "log": attrs.field(factory=list),
        "on_initialize": on_initialize,
        "on_finalize": on_finalize,
        "should_start": should_start,
        "should_end": should_end,
        **{name: _recording(name) for name in HOOKS},
    }
    recorded: type[Modifier] = attrs.define(eq=False)(type("Recorded", (Modifier,), namespace))
    return recorded


def _call(side: Any, log: list[Entry], call: tuple[str, str | None, int], real: bool) -> Any:
    kind, event_name, step = call
    before = len(log)
    state = LState() if real else State()
    try:
        if kind == "initialize":
            side.initialize(state)
        elif kind == "finalize":
            side.finalize(state)
        else:
            assert event_name is not None
            if real:
                event = LEvent(type_=LEventType[event_name.upper()], global_step=step)
            else:
                event = Event(EventType(event_name), global_step=step)
            extra: dict[str, Any] = {"modules": []} if event_name == "sequential_epoch_end" else {}
            side.update_event(state, event, **extra)
        error = None
    except RuntimeError:
        error = "RuntimeError"
    flags = (
        bool(side.initialized_ if real else side.initialized),
        bool(side.started_ if real else side.started),
        bool(side.ended_ if real else side.ended),
        bool(side.finalized_ if real else side.finalized),
    )
    return error, flags, tuple(log[before:])


def random_trace(
    rng: random.Random, events: tuple[str, ...] = EVENTS
) -> tuple[float | None, float | None, list[Any]]:
    start = rng.choice([None, -1, 0, 1, 2, 3, 1.5])
    end = rng.choice([None, 0, 1, 2, 4, 2.5])
    calls: list[Any] = []
    for _ in range(rng.randint(1, 14)):
        roll = rng.random()
        if roll < 0.12:
            calls.append(("initialize", None, 0))
        elif roll < 0.2:
            calls.append(("finalize", None, 0))
        else:
            calls.append(("update", rng.choice(events), rng.randint(0, 5)))
    return start, end, calls


def compare(
    traces: int, seed: int, table: str, events: tuple[str, ...] = EVENTS
) -> tuple[int, int, str | None]:
    """(traces run, calls that differed, the first differing trace described)."""
    rng = random.Random(seed)
    cls = modfsm_class(table)
    mismatches, first, calls_run = 0, None, 0
    for _ in range(traces):
        start, end, calls = random_trace(rng, events)
        real = RealModifier(start=start, end=end)
        ours: Any = cls(start=start, end=end)
        for position, call in enumerate(calls):
            calls_run += 1
            theirs = _call(real, real._log, call, real=True)
            mine = _call(ours, ours.log, call, real=False)
            if theirs != mine:
                mismatches += 1
                if first is None:
                    first = (f"start={start} end={end} calls={calls[: position + 1]}\n"
                             f"  llm-compressor: {theirs}\n  modfsm:         {mine}")  # fmt: skip
                break
    return calls_run, mismatches, first


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--table", choices=("calibration", "lifecycle"), default="calibration")
    parser.add_argument(
        "--without-calibration", action="store_true",
        help="draw no calibration event (where the first table must match 0.14 too)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    events = tuple(e for e in EVENTS if "calibration" not in e and "sequential" not in e)
    logging.getLogger("modfsm").setLevel(logging.ERROR)  # its warnings about unopened windows
    chosen = events if args.without_calibration else EVENTS
    calls, mismatches, first = compare(args.traces, args.seed, args.table, chosen)
    which = " without calibration events" if args.without_calibration else ""
    print(f"modfsm {args.table} table against llm-compressor 0.14.0.1{which}: "
          f"{args.traces:,} traces, "
          f"{calls:,} calls, {mismatches:,} traces differ")  # fmt: skip
    if first is not None:
        print(f"first difference:\n{first}")
    return 0 if mismatches == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
