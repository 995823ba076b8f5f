"""Hostile traces: ``modfsm trace verify FILE`` says OK (0), DIVERGENCE or INCOMPLETE (1) or
refuses the file (2), in one message, never with a traceback; a cut trace is never OK."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modfsm.engine.loop.session import Session
from tests.doubles import EventLog
from tests.fuzz.oracle import EXAMPLES, assert_one_message, invoke, unchanged
from tests.fuzz.strategies import damaged_bytes


def _trace() -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "run.jsonl"
        session = Session()
        session.initialize(
            recipe=[EventLog(start=1, end=3), EventLog(start=2)], trace=path, batches_per_step=2
        )
        for _ in range(4):
            for _ in range(2):
                session.batch_start()
                session.loss_calculated()
                if session.batches_since_step == 1:
                    session.optim_pre_step()
                    session.optim_post_step()
                session.batch_end()
        session.finalize()
        return path.read_bytes()


TRACE = _trace()
LINES = TRACE.splitlines()

JSON_VALUES: st.SearchStrategy[Any] = st.sampled_from(
    [None, True, -1, 0, 2**70, 10**4000, 1.5, float("inf"), "x", "", [], {}, [[[[[]]]]],
     {"kind": "call"}, "finalized", "created", "idle", "initialize", "batch_start"]
)  # fmt: skip


@st.composite
def hostile_traces(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["field", "lines", "bytes", "cut", "nest", "garbage"]))
    lines = list(LINES)
    if kind == "field":
        at = draw(st.integers(0, len(lines) - 1))
        record: dict[str, Any] = json.loads(lines[at])
        key = draw(st.sampled_from([*sorted(record), "extra"]))
        value = draw(JSON_VALUES)
        text = json.dumps(value) if not (isinstance(value, int) and value > 10**100) else str(value)
        body = json.dumps({k: v for k, v in record.items() if k != key})
        lines[at] = (body[:-1] + (", " if len(body) > 2 else "") + f'"{key}": {text}}}').encode()
    elif kind == "lines":
        at, other = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
        operation = draw(st.sampled_from(["drop", "repeat", "swap"]))
        if operation == "drop":
            del lines[at]
        elif operation == "repeat":
            lines.insert(other, lines[at])
        else:
            lines[at], lines[other] = lines[other], lines[at]
    elif kind == "bytes":
        return draw(damaged_bytes(TRACE))
    elif kind == "cut":
        return b"\n".join(lines[: draw(st.integers(0, len(lines) - 1))]) + b"\n"
    elif kind == "nest":
        depth = draw(st.sampled_from([100, 10_000, 100_000]))
        lines.insert(draw(st.integers(0, len(lines))), b"[" * depth + b"]" * depth)
    else:
        return draw(st.binary(max_size=300))
    return b"\n".join(lines) + b"\n"


@settings(max_examples=EXAMPLES, suppress_health_check=[HealthCheck.too_slow])
@given(trace=hostile_traces())
def test_a_hostile_trace_is_judged_or_refused_in_one_message(trace: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "run.jsonl"
        path.write_bytes(trace)
        argv = ["trace", "verify", str(path)]
        with unchanged(Path(folder), repr(trace[:200])):
            outcome = invoke(argv, "traces")
        assert outcome.code in (0, 1, 2), outcome
        if outcome.code == 2:
            assert_one_message(outcome.err, repr(trace[:200]))
            assert not outcome.out
        else:
            assert outcome.out.startswith(("OK: ", "DIVERGENCE in ", "INCOMPLETE: ")), outcome
            assert not outcome.err
        kept = trace.rstrip(b"\n")
        if TRACE.startswith(kept) and len(kept) < len(TRACE.rstrip(b"\n")):
            assert outcome.code != 0, "a trace cut short is not OK"


def test_the_unharmed_trace_is_ok() -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "run.jsonl"
        path.write_bytes(TRACE)
        assert invoke(["trace", "verify", str(path)], "traces").code == 0


@pytest.mark.parametrize("cut", range(1, len(LINES)))
def test_every_trace_cut_before_the_end_is_not_ok(cut: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "run.jsonl"
        path.write_bytes(b"\n".join(LINES[:cut]) + b"\n")
        outcome = invoke(["trace", "verify", str(path)], "traces")
        assert outcome.code == 1, outcome  # INCOMPLETE, or DIVERGENCE for a call cut in two
        assert outcome.out.startswith(("INCOMPLETE: ", "DIVERGENCE in ")), outcome


def test_an_endless_file_is_refused_within_one_line() -> None:
    outcome = invoke(["trace", "verify", "/dev/zero"], "traces")
    assert outcome.code == 2
    assert outcome.err.startswith("modfsm trace verify: /dev/zero, line 1: longer than")
