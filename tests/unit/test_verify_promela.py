"""The Promela model is generated from the declaration (tools/verify/promela.py), never written."""

from __future__ import annotations

import re

import attrs
import pytest

from modfsm.engine.kernel.declaration import StateSpec
from modfsm.engine.kernel.errors import DeclarationError
from modfsm.engine.tools.verify.model import Outcome
from modfsm.engine.tools.verify.promela import generate, generate_for
from modfsm.engine.tools.verify.properties import MACHINES, TemporalProperty, VerifiedMachine
from tests import verify_support as mutants


@pytest.mark.parametrize("machine", MACHINES, ids=lambda m: m.name)
def test_the_model_defines_every_state_trigger_row_rule_and_claim_of_the_declaration(
    machine: VerifiedMachine,
) -> None:
    decl = machine.declaration
    text = generate_for(machine).text
    states = re.findall(r"^#define S_(\w+) (\d+)$", text, flags=re.M)
    assert states == [(name, str(i)) for i, name in enumerate(decl.state_names())]
    triggers = re.findall(r"^#define T_(\w+) \d+$", text, flags=re.M)
    assert triggers == list(decl.trigger_names())
    for index in range(len(decl.transitions)):
        assert f"/* row {index} (" in text
    for rule in decl.rejections:
        assert f"/* rule {rule.rule}: {rule.reason} */" in text
    cells = re.findall(r":: state == S_(\w+) && trig == T_(\w+) ->", text)
    assert len(cells) == len(set(cells)) == len(decl.states) * len(decl.triggers)
    claims = re.findall(r"^ltl (\w+) \{ (.*) \}  /\* (.*) \*/$", text, flags=re.M)
    assert claims == [(p.id, p.formula, p.title) for p in machine.temporal]


def row_branch(text: str, index: int) -> str:
    """The text of row ``index``'s branch in a generated model."""
    return text.split(f"/* row {index} (", 1)[1].split(":: options == 0", 1)[0]


def test_generation_is_deterministic_and_follows_an_edited_table() -> None:
    machine = mutants.LIFECYCLE
    original = generate_for(machine).text
    assert generate_for(machine).text == original
    edited = generate_for(mutants.STARTS_WITHOUT_ON_START).text
    assert "ran_on_start = true" in row_branch(original, 2)
    assert "ran_on_start = true" not in row_branch(edited, 2)
    assert "state = S_started; outcome = O_ACCEPTED; choice = 2" in row_branch(edited, 2)


def test_each_flag_atom_is_the_disjunction_of_the_states_that_set_it() -> None:
    text = generate_for(mutants.STAGE).text
    assert "#define applied (at_applied)" in text
    assert "#define was_applied (from_applied)" in text
    decl = attrs.evolve(mutants.STAGE.declaration, flags=("applied", "unset"), states=tuple(
        StateSpec(s.name, {**s.flags, "unset": False}, s.doc)
        for s in mutants.STAGE.declaration.states
    ))  # fmt: skip
    assert "#define unset false" in generate(decl).text


def test_a_line_the_model_prints_decodes_into_the_step_it_reports() -> None:
    model = generate_for(mutants.LIFECYCLE)
    step = model.decode("MODFSM 1 1 2 1 2 0 1 1")
    assert str(step) == "batch_start [should_start=true] / on_event, on_start, on_update -> started"
    rejected = model.decode("MODFSM 4 0 0 2 27 0 0 1")
    assert (rejected.outcome, rejected.rule) == (Outcome.REJECTED, "R6")
    assert str(rejected) == "finalize -> rejected by R6 (stays created)"
    declined = model.decode("MODFSM 0 0 0 3 255 0 0 1")
    assert (
        str(declined)
        == "initialize [on_initialize=false] / on_initialize -> declined (stays created)"
    )
    ambiguous = model.decode("MODFSM 1 2 2 1 7 0 0 2")
    assert str(ambiguous) == (
        "batch_start / on_event, on_update -> started (ambiguous: 2 rows or rules apply)"
    )
    with pytest.raises(ValueError, match="not a MODFSM line"):
        model.decode("MODFSM 1 2 3")


def test_names_promela_cannot_carry_are_refused_with_the_fix() -> None:
    decl = mutants.STAGE.declaration
    clashing = attrs.evolve(decl, flags=("options",), states=tuple(
        StateSpec(s.name, {"options": s.flags["applied"]}, s.doc) for s in decl.states
    ))  # fmt: skip
    clash = r"flags that clash with Promela or the model's own names: options\. To fix, correct"
    with pytest.raises(DeclarationError, match=clash):
        generate(clashing)
    with pytest.raises(DeclarationError, match="not Promela identifiers: bad-id"):
        generate(decl, [TemporalProperty("bad-id", "x", "[] true")])
    broken = attrs.evolve(decl, initial="nowhere")
    with pytest.raises(DeclarationError, match="the initial state 'nowhere' is not declared"):
        generate(broken)
