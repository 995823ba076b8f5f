"""State diagrams drawn from the declarations: every state and every row, read back from the
mermaid and dot text; self-loops, illegal moves, styles and modifier-class diagrams."""

from __future__ import annotations

from collections import Counter
from typing import Any

import attrs
import pytest

from modfsm.engine import Event, EventType, Modifier, State, handles
from modfsm.engine.config.factory import ModifierFactory, ModifierImportError
from modfsm.engine.kernel.declaration import Declaration
from modfsm.engine.model.lifecycle import LIFECYCLE
from modfsm.engine.model.session_grammar import SESSION_GRAMMAR
from modfsm.engine.model.stage_lifecycle import STAGE_LIFECYCLE
from modfsm.engine.tools.diagrams import (
    MACHINE_TARGETS,
    REJECTED,
    DiagramError,
    UnknownTargetError,
    draw,
    draw_declaration,
    draw_modifier,
    handled,
    overridden,
    render,
)
from tests.diagram_support import (
    Edge,
    dot_edge_attributes,
    dot_edges,
    dot_labelled,
    dot_states,
    mermaid_edges,
    mermaid_labelled,
    mermaid_states,
)

MACHINES = list(MACHINE_TARGETS)


def names(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def declared_edges(
    declaration: Declaration, marked: tuple[str, ...] = (), *, hooks: bool = True
) -> Counter[Edge]:
    """What the diagram must show, written from the declaration independently of the code."""

    def shown(name: str) -> str:
        return name + "*" if name in marked else name

    edges: Counter[Edge] = Counter()
    for row in declaration.transitions:
        guards = [shown(g) for g in names(row.get("conditions"))]
        guards += ["!" + shown(g) for g in names(row.get("unless"))]
        row_hooks = [shown(h) for h in names(row.get("before"))] if hooks else []
        label = row["trigger"]
        label += f" [{' & '.join(guards)}]" if guards else ""
        label += f" / {', '.join(row_hooks)}" if row_hooks else ""
        for source in names(row["source"]):
            edges[(source, row["dest"] or source, label)] += 1
    for rule in declaration.ignored:
        for state in rule.states:
            edges[(state, state, ", ".join(rule.triggers) + " (ignored)")] += 1
    return edges


def shown_edges(declaration: Declaration, edges: Counter[Edge]) -> tuple[Counter[Edge], set[str]]:
    """The edges a diagram draws: without the self-loop labels that stand on more than half
    of the states (those are one note under the title); and those labels."""
    on: Counter[str] = Counter(label for s, d, label in edges.elements() if s == d)
    folded = {label for label, n in on.items() if n * 2 > len(declaration.state_names())}
    kept = Counter({e: n for e, n in edges.items() if e[0] != e[1] or e[2] not in folded})
    return kept, folded


@pytest.mark.parametrize("target", MACHINES)
@pytest.mark.parametrize("hooks", [True, False])
def test_the_mermaid_diagram_has_every_declared_state_and_row_and_nothing_else(
    target: str, hooks: bool
) -> None:
    declaration = MACHINE_TARGETS[target]
    text = render(draw(target, hooks=hooks), "mermaid").decode()
    assert mermaid_states(text) == list(declaration.state_names())
    expected, folded = shown_edges(declaration, declared_edges(declaration, hooks=hooks))
    assert mermaid_edges(text) == expected
    assert f"[*] --> {declaration.initial}" in text
    title = text.splitlines()[1]
    assert all(label in title for label in folded)


@pytest.mark.parametrize("target", MACHINES)
@pytest.mark.parametrize("hooks", [True, False])
def test_the_dot_diagram_has_every_declared_state_and_row_and_nothing_else(
    target: str, hooks: bool
) -> None:
    declaration = MACHINE_TARGETS[target]
    text = render(draw(target, hooks=hooks), "dot").decode()
    assert dot_states(text) == list(declaration.state_names())
    expected, folded = shown_edges(declaration, declared_edges(declaration, hooks=hooks))
    assert dot_edges(text) == expected
    title = text.splitlines()[0]
    assert all(label in title for label in folded)


def test_only_the_session_leaves_its_hooks_out_unless_asked_and_folds_its_bookkeeping_loops() -> (
    None
):
    session = draw("session")
    assert not any(" / " in edge.label for edge in session.edges)
    assert session.notes == (
        "agree | state_dict: state stays, in every state but created, finalized",
    )
    assert {e.label for e in session.edges if e.source == e.dest} == {
        "load_state_dict",
        "sequential_epoch_end",
    }
    assert any(" / absorb, send" in edge.label for edge in draw("session", hooks=True).edges)
    assert any(" / on_start" in edge.label for edge in draw("lifecycle").edges)
    assert not any(" / " in edge.label for edge in draw("lifecycle", hooks=False).edges)
    assert draw("lifecycle").notes == ()
    assert draw("session", self_loops=False).notes == ()


def test_edges_read_trigger_guard_and_hooks() -> None:
    text = render(draw("lifecycle"), "mermaid").decode()
    assert "initialized --> started: batch_start [should_start] / on_start, on_update\n" in text
    assert "created --> initialized: initialize [!should_start]\n" in text
    assert "ended --> finalized_ended: finalize / release_hooks\n" in text
    session = render(draw("session", hooks=True), "mermaid").decode()
    assert "idle --> step_due: batch_start [completes_accumulation] / absorb, send\n" in session
    dot = render(draw("session", hooks=True), "dot").decode()
    assert 'label="batch_start\\n[completes_accumulation]\\n/ absorb, send"' in dot
    assert "idle -> finalized [label=finalize]" in dot


def test_the_stage_diagram_shows_the_ignored_calls_of_an_applied_stage() -> None:
    text = render(draw("stage"), "mermaid").decode()
    assert "applied --> applied: initialize, update, begin_finalize, finalize (ignored)" in text


@pytest.mark.parametrize("target", MACHINES)
@pytest.mark.parametrize("format", ["mermaid", "dot"])
def test_without_self_loops_only_the_state_changes_remain(target: str, format: str) -> None:
    declaration = MACHINE_TARGETS[target]
    text = render(draw(target, self_loops=False, hooks=True), format).decode()
    edges = mermaid_edges(text) if format == "mermaid" else dot_edges(text)
    assert edges == Counter({e: n for e, n in declared_edges(declaration).items() if e[0] != e[1]})


@pytest.mark.parametrize("target", MACHINES)
@pytest.mark.parametrize("format", ["mermaid", "dot"])
def test_illegal_moves_are_edges_to_a_rejected_pseudo_state_of_each_state_naming_their_rule(
    target: str, format: str
) -> None:
    declaration = MACHINE_TARGETS[target]
    text = render(draw(target, illegal=True, hooks=True), format).decode()
    if format == "mermaid":
        states, edges, labelled = mermaid_states(text), mermaid_edges(text), mermaid_labelled(text)
    else:
        states, edges, labelled = dot_states(text), dot_edges(text), dot_labelled(text)
    pseudo = {f"{REJECTED}_{state}" for state in declaration.state_names()}
    assert set(labelled) <= pseudo
    assert set(labelled.values()) == {REJECTED}
    assert [s for s in states if s not in labelled] == list(declaration.state_names())
    rejected = Counter(e for e in edges.elements() if e[1] in labelled)
    expected = Counter(
        (state, f"{REJECTED}_{state}", f"{', '.join(rule.triggers)} ({rule.rule})")
        for state in declaration.state_names()
        for rule in declaration.rejections
        if state in rule.states
    )
    assert rejected == expected
    assert edges - rejected == shown_edges(declaration, declared_edges(declaration))[0]
    # every rejected cell is drawn once, from its state
    cells = Counter(
        (source, trigger)
        for source, _, label in rejected.elements()
        for trigger in label.rsplit(" (", 1)[0].split(", ")
    )
    assert set(cells.values()) == {1}
    assert len(cells) == sum(len(r.states) * len(r.triggers) for r in declaration.rejections)


def test_in_dot_illegal_moves_are_dashed_red_and_the_pseudo_states_are_distinct() -> None:
    text = render(draw("lifecycle", illegal=True), "dot").decode()
    attributes = dot_edge_attributes(text)
    assert attributes[("created", "rejected_created")] == (
        "color=red fontcolor=red style=dashed tailport=s weight=5"
    )
    assert attributes[("created", "started")] == ""
    assert f'\t{REJECTED}_created [label="{REJECTED}\\l" color=red fillcolor=mistyrose' in text
    assert 'style="dashed,rounded,filled"]' in text


def test_the_initial_state_is_double_and_absorbing_states_grey() -> None:
    dot = render(draw("lifecycle"), "dot").decode()
    assert '\tcreated [label="created\\l" fillcolor=lightyellow peripheries=2]' in dot
    for state in ("finalized_initialized", "finalized_started", "finalized_ended"):
        assert f'\t{state} [label="{state}\\l" fillcolor=lightgrey]' in dot
    assert '\tstarted [label="started\\l"]' in dot
    assert draw("stage").final == ("applied",)
    assert draw("session").final == ("finalized",)
    mermaid = render(draw("lifecycle"), "mermaid").decode()
    assert "Class created s_initial\n" in mermaid
    assert "Class finalized_ended s_final\n" in mermaid


def test_the_mermaid_title_is_front_matter_and_no_line_has_trailing_space() -> None:
    text = render(draw("stage"), "mermaid").decode()
    assert text.startswith('---\ntitle: "modfsm stage lifecycle"\n---\nstateDiagram-v2\n')
    session = render(draw("session"), "mermaid").decode()
    assert session.startswith('---\ntitle: "modfsm session step grammar; agree | state_dict: ')
    assert all(line == line.rstrip() for line in text.splitlines())
    assert text.endswith("\n")


@attrs.define
class OwnStartModifier(Modifier):
    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        return True

    def on_start(self, state: State, event: Event, **kwargs: Any) -> None:
        pass

    def should_end(self, event: Event) -> bool:
        return False


@attrs.define
class InheritsOwnStartModifier(OwnStartModifier):
    def on_end(self, state: State, event: Event, **kwargs: Any) -> None:
        pass


def test_a_modifier_class_diagram_marks_the_guards_and_hooks_the_class_defines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ModifierFactory, "_registered_registry", {})
    ModifierFactory.register("OwnStartModifier", OwnStartModifier)
    assert overridden(OwnStartModifier) == ("should_end", "on_initialize", "on_start")
    assert overridden(InheritsOwnStartModifier) == (
        "should_end",
        "on_initialize",
        "on_start",
        "on_end",
    )
    text = render(draw("OwnStartModifier"), "mermaid").decode()
    assert text.startswith(
        '---\ntitle: "OwnStartModifier lifecycle; * = defined by OwnStartModifier: '
        'should_end, on_initialize, on_start"\n---\n'
    )
    marked = ("should_end", "on_initialize", "on_start")
    assert mermaid_edges(text) == declared_edges(LIFECYCLE, marked)
    assert "initialized --> started: batch_start [should_start] / on_start*, on_update\n" in text
    assert "started --> ended: batch_end [should_end*] / on_end, on_update\n" in text


def test_a_shipped_modifier_is_drawn_by_its_class_name() -> None:
    drawing = draw("MagnitudePruningModifier", illegal=True)
    assert drawing.title.startswith("MagnitudePruningModifier lifecycle; * = defined by ")
    assert REJECTED in drawing.states
    assert any("on_update*" in edge.label for edge in drawing.edges)


def test_an_unknown_target_names_the_machines_and_the_modifier_types() -> None:
    with pytest.raises(UnknownTargetError) as caught:
        draw("MagnitudePrunningModifier")
    error = caught.value
    assert isinstance(error, ValueError)
    assert error.target == "MagnitudePrunningModifier"
    assert error.machines == ("lifecycle", "calibration", "stage", "session")
    assert "MagnitudePruningModifier" in error.modifiers
    message = str(error)
    assert "Did you mean MagnitudePruningModifier?" in message
    assert "the machines lifecycle, calibration, stage, session" in message
    assert "QuantizationModifier" in message
    assert "To fix" in message


def test_a_modifier_whose_module_failed_to_import_is_refused_with_the_cause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    failed = ModifierImportError("no torch")
    monkeypatch.setattr(ModifierFactory, "_errors", {"BrokenModifier": failed})
    monkeypatch.setattr(ModifierFactory, "_loaded", True)
    with pytest.raises(DiagramError, match="cannot draw 'BrokenModifier': no torch"):
        draw("BrokenModifier")


def test_a_declaration_with_a_state_named_rejected_cannot_show_illegal_moves() -> None:
    states = tuple(attrs.evolve(s, name=REJECTED) if s.name == "pending" else s
                   for s in STAGE_LIFECYCLE.states)  # fmt: skip
    clash = attrs.evolve(STAGE_LIFECYCLE, states=states, initial=REJECTED)
    with pytest.raises(ValueError, match="has a state named 'rejected'"):
        draw_declaration(clash, illegal=True)
    assert draw_declaration(clash).states[0] == REJECTED


@pytest.mark.parametrize("format", ["mermaid", "dot"])
def test_text_diagrams_are_the_same_bytes_every_time(format: str) -> None:
    for declaration in (LIFECYCLE, STAGE_LIFECYCLE, SESSION_GRAMMAR):
        first = render(draw_declaration(declaration, illegal=True), format)
        assert render(draw_declaration(declaration, illegal=True), format) == first


@attrs.define
class HandlesModifier(Modifier):
    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        return True

    @handles(EventType.OPTIM_POST_STEP, EventType.LOSS_CALCULATED)
    def on_update(self, state: State, event: Event, **kwargs: Any) -> None:
        pass

    @handles(EventType.BATCH_START)
    def on_start(self, state: State, event: Event, **kwargs: Any) -> None:
        pass


def test_a_class_diagram_shows_the_event_types_its_handles_hooks_act_on() -> None:
    drawing = draw_modifier(HandlesModifier)
    labels = {(e.source, e.dest): e.label for e in drawing.edges if e.kind != "rejected"}
    # batch_start and batch_end stand for one type each: on_update never acts there
    assert labels[("initialized", "started")] == "batch_start [should_start] / on_start*"
    assert labels[("started", "ended")] == "batch_end [should_end] / on_end"
    # other_event stands for every other type: on_update acts on two of them
    loops = [e.label for e in drawing.edges if e.source == e.dest == "started"]
    assert "other_event / on_update*(loss_calculated, optim_post_step)" in loops
    assert "batch_start" in loops
    # initialize stands for no event type: the hook is called, acting on its types only
    assert labels[("created", "started")] == "initialize [should_start] / on_start*(batch_start)"
    assert drawing.title.endswith("; hook(types) = acts on those events only (@handles)")
    assert handled(HandlesModifier) == {
        "on_update": frozenset({EventType.OPTIM_POST_STEP, EventType.LOSS_CALCULATED}),
        "on_start": frozenset({EventType.BATCH_START}),
    }
    plain = draw_modifier(HandlesModifier, hooks=False)
    assert not any(" / " in e.label or "@handles" in plain.title for e in plain.edges)
    assert handled(OwnStartModifier) == {}
