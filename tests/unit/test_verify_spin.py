"""Model checking with Spin (tools/verify/spin.py): the catalog holds, mutated tables are caught.

Needs ``spin`` and a C compiler. ``make test`` installs spin and sets
``MODFSM_REQUIRE_SPIN=1``, so these fail there rather than skip when it is missing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from modfsm.engine.tools.verify.promela import generate, generate_for
from modfsm.engine.tools.verify.properties import (
    MACHINES,
    TemporalProperty,
    VerifiedMachine,
    machine_named,
)
from modfsm.engine.tools.verify.spin import (
    INSTALL_HINT,
    ModelCheckError,
    SpinNotFoundError,
    check_machine,
    check_model,
    find_tools,
    parse_pan_output,
)
from modfsm.engine.tools.verify.structure import shortest_paths
from modfsm.engine.tools.verify.verdict import SpinStats, Status, Verdict
from tests import verify_support as mutants


@pytest.fixture
def needs_spin() -> None:
    mutants.require_spin()


_CHECKED: dict[int, dict[str, Verdict]] = {}


def verdicts_of(machine: VerifiedMachine) -> dict[str, Verdict]:
    """Spin's verdicts on ``machine`` (a module-level constant), computed once per session."""
    if id(machine) not in _CHECKED:
        _CHECKED[id(machine)] = {v.property_id: v for v in check_machine(machine)}
    return _CHECKED[id(machine)]


def failing(machine: VerifiedMachine) -> dict[str, Verdict]:
    return {name: v for name, v in verdicts_of(machine).items() if not v.holds}


@pytest.mark.usefixtures("needs_spin")
@pytest.mark.parametrize(
    ("machine_name", "property_id"),
    [(m.name, p.id) for m in MACHINES for p in m.temporal],
)
def test_every_temporal_property_of_the_declared_machines_holds(
    machine_name: str, property_id: str
) -> None:
    verdict = verdicts_of(machine_named(machine_name))[property_id]
    assert verdict.status is Status.HOLDS, verdict.detail
    assert verdict.stats is not None
    assert verdict.stats.errors == 0
    assert verdict.stats.states_stored > len(machine_named(machine_name).declaration.states)
    assert verdict.stats.transitions >= verdict.stats.states_stored


@pytest.mark.usefixtures("needs_spin")
def test_a_row_that_starts_without_on_start_is_caught_with_a_readable_counterexample() -> None:
    failures = failing(mutants.STARTS_WITHOUT_ON_START)
    assert set(failures) == {"LT2", "LT6"}
    assert failures["LT2"].evidence == (
        "initialize [on_initialize=true, should_start=false] / on_initialize -> initialized",
        "batch_start [should_start=true] / on_event, on_update -> started",
    )
    assert failures["LT2"].formula == "[] ((started && !was_started) -> ran_on_start)"
    assert failures["LT2"].detail == (
        "[] ((started && !was_started) -> ran_on_start) is violated by: "
        "initialize [on_initialize=true, should_start=false] / on_initialize -> initialized; "
        "batch_start [should_start=true] / on_event, on_update -> started"
    )


@pytest.mark.usefixtures("needs_spin")
def test_a_finalized_state_that_can_be_left_is_caught() -> None:
    failures = failing(mutants.FINALIZED_LEFT)
    assert set(failures) == {"LT1", "LT5"}
    steps = failures["LT1"].evidence
    assert len(steps) == 3
    assert steps[0].startswith("initialize [on_initialize=true, should_start=")
    assert steps[1].startswith("finalize [on_finalize=true] / on_finalize, release_hooks -> ")
    assert steps[2] == "initialize [on_initialize=true] / on_initialize -> created"
    # Re-initialized, the modifier can open its window a second time.
    assert sum(step.endswith("on_start -> started") for step in failures["LT5"].evidence) == 2


@pytest.mark.usefixtures("needs_spin")
def test_a_dropped_rejection_is_caught_as_a_call_the_table_does_not_decide() -> None:
    failures = failing(mutants.FINALIZE_UNDECIDED)
    assert set(failures) == {"LT9"}
    assert failures["LT9"].evidence == (
        "finalize -> UNDEFINED: no row, rejection or ignore rule covers (created, finalize)",
    )


@pytest.mark.usefixtures("needs_spin")
def test_an_overlapping_row_is_caught_as_a_call_with_two_outcomes() -> None:
    failures = failing(mutants.OVERLAPPING_ROW)
    assert set(failures) == {"LT10"}
    first, second = failures["LT10"].evidence
    assert first == (
        "initialize [on_initialize=true, should_start=true] / on_initialize, on_start -> started"
    )
    assert second.startswith("batch_start / on_event, ")
    assert second.endswith(" (ambiguous: 2 rows or rules apply)")


@pytest.mark.usefixtures("needs_spin")
def test_a_session_finalized_in_the_middle_of_a_step_is_caught() -> None:
    failures = failing(mutants.FINALIZED_MID_STEP)
    assert set(failures) == {"SET2", "SET6"}
    assert failures["SET6"].evidence == (
        "initialize [setup=true] / setup -> idle",
        "batch_start [completes_accumulation=true] / absorb, send -> step_due",
        "optim_pre_step / absorb, send -> stepping",
        "finalize [teardown=true] / teardown -> finalized",
    )


@pytest.mark.usefixtures("needs_spin")
def test_a_stage_forwarding_events_while_finalizing_is_caught() -> None:
    failures = failing(mutants.STAGE_FORWARDS_WHILE_FINALIZING)
    assert set(failures) == {"STT2", "STT3"}
    assert failures["STT3"].evidence == (
        "initialize [initialize_modifiers=true] / initialize_modifiers -> initialized",
        "begin_finalize -> finalizing",
        "update / deliver -> finalizing",
    )


@pytest.mark.usefixtures("needs_spin")
def test_every_temporal_property_is_violated_by_some_mutated_table() -> None:
    # No property holds vacuously: for each, a mutant in tests/verify_support.py breaks it.
    violated = {
        (mutant.name, property_id)
        for mutant in mutants.MUTANTS.values()
        if mutant is not mutants.NEVER_WAITS and mutant is not mutants.HALF_GUARDED_PAIR
        for property_id in failing(mutant)
    }
    assert violated == {(m.name, p.id) for m in MACHINES for p in m.temporal}
    assert set(failing(mutants.LIFECYCLE_FAULTS)) == {"LT3", "LT4", "LT7", "LT8"}
    assert failing(mutants.LIFECYCLE_FAULTS)["LT8"].evidence == (
        "other_event / on_event -> created",
    )
    assert set(failing(mutants.STAGE_FAULTS)) == {
        "STT1", "STT3", "STT4", "STT5", "STT6", "STT7",
    }  # fmt: skip
    assert failing(mutants.STAGE_FAULTS)["STT7"].evidence == (
        "begin_finalize -> pending (ambiguous: 2 rows or rules apply)",
    )
    assert set(failing(mutants.CALIBRATION_HOOKS_FORGOTTEN)) == {
        "CAT2", "CAT3", "CAT6", "CAT7", "CAT9",
    }  # fmt: skip
    assert set(failing(mutants.CALIBRATION_FLAGS_WRONG)) == {"CAT4", "CAT5", "CAT8"}
    # the extra row also ends without a hook (CAT3); initialized again, on_start runs twice
    assert set(failing(mutants.CALIBRATION_UNDECIDED)) == {
        "CAT1", "CAT3", "CAT8", "CAT10", "CAT11", "CAT12",
    }  # fmt: skip
    assert set(failing(mutants.SESSION_FAULTS)) == {
        "SET1", "SET3", "SET4", "SET5", "SET7", "SET8",
    }  # fmt: skip


@pytest.mark.usefixtures("needs_spin")
@pytest.mark.parametrize(
    "machine",
    [*MACHINES, mutants.NEVER_WAITS],
    ids=["lifecycle", "calibration", "stage", "session", "never-waits"],
)
def test_the_model_checker_and_the_structural_proof_agree_on_every_state_and_its_distance(
    machine: VerifiedMachine,
) -> None:
    # Spin refutes "never in S" exactly for the states the breadth-first search reaches, and
    # its shortest counterexample is as long as the search's shortest path.
    decl = machine.declaration
    claims = [TemporalProperty(f"R{i}", f"never {s}", f"[] !at_{s}")
              for i, s in enumerate(decl.state_names())]  # fmt: skip
    results = check_model(generate(decl, claims))
    paths = shortest_paths(decl)
    for state, result in zip(decl.state_names(), results, strict=True):
        if state not in paths:
            assert result.holds, state
            continue
        assert not result.holds, state
        assert result.counterexample is not None
        if paths[state]:
            assert len(result.counterexample.steps) == len(paths[state]), state
            assert result.counterexample.steps[-1].dest == state


def test_the_figures_of_a_pan_report_are_read() -> None:
    report = """
State-vector 44 byte, depth reached 112, errors: 0
      595 states, stored
     2994 states, matched
     3589 transitions (= stored+matched)
"""
    assert parse_pan_output(report) == SpinStats(
        states_stored=595, states_matched=2994, transitions=3589, depth=112, state_vector=44,
        errors=0,
    )  # fmt: skip
    with pytest.raises(ModelCheckError, match="pan's report has no depth"):
        parse_pan_output("State-vector 44 byte, errors: 1")


def test_without_spin_every_temporal_property_is_not_checked_and_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    with pytest.raises(SpinNotFoundError, match="needs spin and a C compiler") as caught:
        find_tools()
    assert isinstance(caught.value, FileNotFoundError)
    assert str(caught.value).endswith(INSTALL_HINT)
    verdicts = check_machine(mutants.STAGE)
    assert [v.property_id for v in verdicts] == [p.id for p in mutants.STAGE.temporal]
    assert {v.status for v in verdicts} == {Status.NOT_CHECKED}
    assert "To fix, install spin (apt-get install spin)" in verdicts[0].detail


@pytest.mark.usefixtures("needs_spin")
def test_a_model_spin_rejects_raises_with_the_output(tmp_path: Path) -> None:
    model = generate_for(mutants.STAGE)
    broken = type(model)(model.declaration, model.text + "\nltl oops { [] ( }\n", model.properties)
    with pytest.raises(ModelCheckError, match=r"spin -a model\.pml failed"):
        check_model(broken, workdir=tmp_path)
