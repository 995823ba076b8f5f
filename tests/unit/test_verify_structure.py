"""Structural proofs (tools/verify/structure.py): they hold on the real tables and catch mutants."""

from __future__ import annotations

import attrs
import pytest

from modfsm.engine.kernel.compiler import compile_machine
from modfsm.engine.kernel.errors import DeclarationError
from modfsm.engine.model.machines import DECLARED_MACHINES, declared_machine
from modfsm.engine.tools.verify.model import format_path
from modfsm.engine.tools.verify.properties import MACHINES, VerifiedMachine
from modfsm.engine.tools.verify.structure import (
    STRUCTURAL,
    absorbing,
    deterministic,
    flags_set_by_hooks,
    prove,
    reachable,
    shortest_paths,
    total,
    well_formed,
)
from modfsm.engine.tools.verify.verdict import Status, Verdict
from tests import verify_support as mutants


def failing(machine: VerifiedMachine) -> dict[str, Verdict]:
    return {v.property_id: v for v in prove(machine) if not v.holds}


@pytest.mark.parametrize("machine", MACHINES, ids=lambda m: m.name)
def test_every_structural_proof_holds_for_every_declared_machine(machine: VerifiedMachine) -> None:
    verdicts = prove(machine)
    assert [v.property_id for v in verdicts] == list(STRUCTURAL)
    assert all(v.status is Status.HOLDS for v in verdicts), [v.detail for v in verdicts]
    assert {v.machine for v in verdicts} == {machine.name}


def test_every_registered_machine_is_verified_under_its_name() -> None:
    verified = {m.name: m.declaration for m in MACHINES}
    assert verified == dict(DECLARED_MACHINES)


def test_an_unknown_machine_name_lists_the_registered_ones() -> None:
    with pytest.raises(KeyError, match="known: lifecycle, calibration, stage, session"):
        declared_machine("lifecylce")


def test_the_reachability_witness_is_a_shortest_call_sequence_to_each_state() -> None:
    paths = shortest_paths(mutants.LIFECYCLE.declaration)
    assert format_path(paths["finalized_ended_unstarted"]) == (
        "initialize [on_initialize=true, should_start=false] / on_initialize -> initialized; "
        "batch_end [should_end=true] / on_event, on_end, on_update -> ended_unstarted; "
        "finalize [on_finalize=true] / on_finalize, release_hooks -> finalized_ended_unstarted"
    )
    assert len(paths["created"]) == 0
    verdict = reachable(mutants.SESSION.declaration, "session")
    assert verdict.holds
    assert verdict.detail == "all 10 states reachable; the farthest, stepped, in 4 calls"


def test_a_row_that_sets_started_without_on_start_fails_the_flag_proof() -> None:
    assert set(failing(mutants.STARTS_WITHOUT_ON_START)) == {"V6"}
    verdict = flags_set_by_hooks(
        mutants.STARTS_WITHOUT_ON_START.declaration, mutants.LIFECYCLE.flag_hooks
    )
    assert verdict.status is Status.FAILS
    assert verdict.detail == (
        "row 2 (batch_start from initialized [should_start] -> started) turns started on in "
        "initialized without running on_start"
    )


def test_a_finalized_state_that_a_row_leaves_is_not_absorbing() -> None:
    assert set(failing(mutants.FINALIZED_LEFT)) == {"V3"}
    verdict = absorbing(mutants.FINALIZED_LEFT.declaration, "finalized")
    assert verdict.evidence == tuple(
        "row 22 (initialize from finalized_initialized, finalized_started, finalized_ended, "
        f"finalized_ended_unstarted -> created) leaves {state}"
        for state in ("finalized_initialized", "finalized_started", "finalized_ended",
                      "finalized_ended_unstarted")
    )  # fmt: skip


@pytest.mark.parametrize("machine", MACHINES, ids=lambda m: m.name)
def test_a_row_out_of_the_terminal_state_is_caught_in_every_machine(
    machine: VerifiedMachine,
) -> None:
    decl = machine.declaration
    terminal = next(s.name for s in decl.states if s.flags[machine.terminal_flag])
    trigger = decl.trigger_names()[0]
    row = {"trigger": trigger, "source": terminal, "dest": decl.initial}
    verdict = absorbing(attrs.evolve(decl, transitions=(*decl.transitions, row)),
                        machine.terminal_flag)  # fmt: skip
    assert verdict.status is Status.FAILS
    assert verdict.detail.endswith(f"-> {decl.initial}) leaves {terminal}")


def test_a_dropped_rejection_leaves_the_cell_undecided() -> None:
    assert set(failing(mutants.FINALIZE_UNDECIDED)) == {"V5"}
    verdict = total(mutants.FINALIZE_UNDECIDED.declaration)
    assert verdict.evidence == (
        "(created, finalize): no row applies and no rejection or ignore rule covers it",
    )


def test_half_a_guarded_pair_leaves_the_other_guard_value_undecided() -> None:
    verdicts = failing(mutants.HALF_GUARDED_PAIR)
    assert set(verdicts) == {"V2", "V5"}
    assert verdicts["V5"].detail == (
        "(created, initialize) [should_start=false]: no row applies and no rejection or ignore "
        "rule covers it"
    )


def test_an_overlapping_row_breaks_determinism_though_the_compiler_would_refuse_it() -> None:
    decl = mutants.OVERLAPPING_ROW.declaration
    verdict = deterministic(decl)
    assert verdict.status is Status.FAILS
    assert verdict.detail == (
        "(started, batch_start): row 7 (batch_start from started -> (stays)) and row 22 "
        "(batch_start from started -> ended) both apply"
    )
    assert set(failing(mutants.OVERLAPPING_ROW)) == {"V4"}
    with pytest.raises(DeclarationError, match="not one guard and its negation"):
        compile_machine(decl, state_attr="_state")


def test_a_row_and_a_rejection_on_one_cell_break_determinism() -> None:
    decl = mutants.LIFECYCLE.declaration
    row = {"trigger": "finalize", "source": "created", "dest": "finalized_initialized"}
    verdict = deterministic(attrs.evolve(decl, transitions=(*decl.transitions, row)))
    assert verdict.detail == (
        "(created, finalize): rejection R6 and row 22 (finalize from created -> "
        "finalized_initialized) both apply"
    )


def test_states_no_call_sequence_enters_are_reported_unreachable() -> None:
    verdicts = failing(mutants.NEVER_WAITS)
    assert set(verdicts) == {"V2"}
    assert verdicts["V2"].detail == (
        "unreachable: initialized, ended_unstarted, finalized_initialized, "
        "finalized_ended_unstarted (no sequence of calls from created reaches them)"
    )


def test_an_initial_state_with_a_hooked_flag_set_fails_the_flag_proof() -> None:
    decl = mutants.STAGE.declaration
    verdict = flags_set_by_hooks(attrs.evolve(decl, initial="applied"), {"applied": ("x",)})
    assert verdict.status is Status.FAILS
    assert verdict.detail == "the initial state applied already has applied set"


def test_a_table_naming_undeclared_things_fails_well_formedness_and_nothing_else_runs() -> None:
    decl = mutants.LIFECYCLE.declaration
    row = {"trigger": "finalise", "source": "started", "dest": "done", "before": ["cleanup"]}
    broken = attrs.evolve(decl, transitions=(*decl.transitions, row))
    assert well_formed(broken).evidence == (
        "row 22: trigger 'finalise' is not declared",
        "row 22: dest 'done' is not a declared state or None",
        "row 22: before ['cleanup'] names an undeclared hook",
    )
    machine = attrs.evolve(mutants.LIFECYCLE, declaration=broken)
    statuses = {v.property_id: v.status for v in prove(machine)}
    assert statuses == {"V1": Status.FAILS} | dict.fromkeys(
        ["V2", "V3", "V4", "V5", "V6"], Status.NOT_CHECKED
    )
