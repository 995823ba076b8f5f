"""The transitions adapter: the Machine and the diagram come from the declaration."""

from __future__ import annotations

from modfsm.engine import LIFECYCLE
from modfsm.engine.runtime.modifier import Modifier
from modfsm.engine.tools.diagrams import draw_declaration
from modfsm.engine.tools.transitions_adapter import build_machine, diagram_source, machine_rows


def test_the_machine_has_the_declared_states_and_no_auto_transitions() -> None:
    machine = build_machine(LIFECYCLE)
    assert list(machine.states) == list(LIFECYCLE.state_names())
    assert machine.initial == "created"
    assert not any(name.startswith("to_") for name in machine.events)


def test_the_machine_allows_exactly_the_triggers_the_compiled_table_allows() -> None:
    machine = build_machine(LIFECYCLE)
    plans = Modifier.__compiled_lifecycle__.plans
    for state in LIFECYCLE.state_names():
        legal = {t for (s, t), plan in plans.items() if s == state and plan.rejection is None}
        assert set(machine.get_triggers(state)) == legal, state


def test_rows_are_passed_through_unchanged() -> None:
    rows = machine_rows(LIFECYCLE)
    assert len(rows) == len(LIFECYCLE.transitions)
    assert all(dict(a) == b for a, b in zip(LIFECYCLE.transitions, rows, strict=True))


def test_mermaid_shows_every_state_and_guarded_edge_and_is_stable() -> None:
    text = diagram_source(draw_declaration(LIFECYCLE), "mermaid")
    assert text == diagram_source(draw_declaration(LIFECYCLE), "mermaid")
    for state in LIFECYCLE.state_names():
        assert f'state "{state}" as {state}' in text
    assert "created --> started: initialize [should_start] / on_start\n" in text
    assert "created --> initialized: initialize [!should_start]\n" in text
    assert "started --> ended: batch_end [should_end] / on_end, on_update\n" in text
    assert "ended_unstarted --> ended: batch_start [should_start] / on_start, on_update\n" in text
    assert "[internal]" not in text


def test_the_graphviz_engine_gives_dot_text_from_the_same_drawing() -> None:
    text = diagram_source(draw_declaration(LIFECYCLE), "graphviz")
    assert text.startswith('digraph "modifier-lifecycle" {\n')
    assert '\tcreated -> started [label="initialize\\n[should_start]\\n/ on_start"]\n' in text
    assert "nodesep=0.25" in text
