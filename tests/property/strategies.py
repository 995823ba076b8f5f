"""Hypothesis strategies shared by the property tests."""

from __future__ import annotations

from hypothesis import strategies as st

from engine import EventType

#: start/end values: unset, the one-shot conventions, step counts and fractional epochs.
schedule_values = st.one_of(
    st.none(),
    st.sampled_from([-1, 0]),
    st.integers(min_value=1, max_value=6),
    st.sampled_from([0.5, 1.5, 2.25, 3.0, 0.3]),
)

#: None for step-based schedules, else optimizer steps per epoch.
steps_per_epoch = st.one_of(st.none(), st.integers(min_value=1, max_value=4))

#: event types, with the two that move the lifecycle drawn more often.
event_types = st.one_of(
    st.sampled_from([EventType.BATCH_START, EventType.BATCH_END]),
    st.sampled_from(list(EventType)),
)

#: global_step values; small, so windows are hit often, and free to go backwards.
steps = st.integers(min_value=0, max_value=8)

#: what a gate hook may return: the two bools and two forgotten-return mistakes.
gate_results = st.sampled_from([True, False, None, 1])

#: hooks and guards that can be scripted to raise.
failing_names = st.sampled_from(
    ["on_initialize", "on_finalize", "on_event", "on_start", "on_update", "on_end",
     "should_start", "should_end"]
)  # fmt: skip
