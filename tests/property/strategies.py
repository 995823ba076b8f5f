"""Hypothesis strategies the property tests share beyond ``modfsm.engine.tools.testing.strategies``.

Schedules, event types and steps come from the public test kit
(``from modfsm.engine.tools.testing import strategies as ms``); what is here scripts the
test doubles (``tests/doubles.py``), which users of the kit do not have.
"""

from __future__ import annotations

from hypothesis import strategies as st

#: what a gate hook may return: the two bools and two forgotten-return mistakes.
gate_results = st.sampled_from([True, False, None, 1])

#: hooks and guards that can be scripted to raise.
failing_names = st.sampled_from(
    ["on_initialize", "on_finalize", "on_event", "on_start", "on_update", "on_end",
     "should_start", "should_end"]
)  # fmt: skip
