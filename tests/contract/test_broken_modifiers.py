"""Each deliberately broken modifier in ``broken/`` is caught, with its smallest counterexample.

The contract runs with ``derandomize=True`` and no example database, so hypothesis
finds and shrinks the same run every time; each test names the check that must
fail, what it must say, and the run it must show (one call a line, ``<- here``
at the call where the contract saw the break, ``--`` for what the contract did
between calls). ``Shrink``, which each broken modifier breaks once, passes.
"""

from __future__ import annotations

import pytest
from hypothesis import settings

from modfsm.engine import Modifier
from modfsm.engine.tools.testing import Contract, ContractViolation
from tests.contract.broken.changes_weights_early import ZeroesEarly
from tests.contract.broken.forgets_state import ForgetsCount
from tests.contract.broken.keeps_hooks import KeepsHooks
from tests.contract.broken.leaks_hook import LeaksHook
from tests.contract.broken.no_reattach import ForgetsHookOnResume
from tests.contract.broken.no_return import ForgetsReturn
from tests.contract.broken.resets_on_initialize import ResetsOnInitialize
from tests.contract.broken.runs_hooks_itself import ShrinksOnEveryStep
from tests.contract.broken.shrinks_after_end import ShrinksAfterEnd
from tests.contract.shrink import Shrink

REPRODUCIBLE = settings(derandomize=True, database=None)

LOOP = "loop: batches_per_step=1, steps_per_epoch=None"
SAVED = "  -- saved; resumed in a new model, optimizer, session and modifier"
OPEN_FROM_INITIALIZE_TO_FINALIZE = [
    "schedule: start=0, end=None",
    LOOP,
    "  initialize",
    "  finalize   <- here",
]


def usual_batch(batch: int, here: str = "", then: str = "") -> list[str]:
    """The lines of usual batch ``batch`` with one step per batch; ``<- here`` after the call
    ``here``, and the note ``then`` after the call ``optim_post_step``."""
    lines = []
    for call, step in [("batch_start", batch), ("loss_calculated", batch),
                       ("optim_pre_step", batch), ("optim_post_step", batch + 1),
                       ("batch_end", batch + 1)]:  # fmt: skip
        done = batch + 1 if call == "batch_end" else batch
        lines.append(f"  {call} step {step} batch {done}" + ("   <- here" if call == here else ""))
        if then and call == "optim_post_step":
            lines.append(then)
    return lines


def contract_for(cls: type[Modifier]) -> Contract:
    return Contract(
        make_modifier=lambda start, end: cls(start=start, end=end),
        settings=REPRODUCIBLE,
        max_examples=60,
    )


def violation(cls: type[Modifier], check: str) -> ContractViolation:
    try:
        getattr(contract_for(cls), check)()
    except ContractViolation as caught:
        return caught
    raise AssertionError(f"the contract's {check} passed {cls.__name__}")


def expect_caught(cls: type[Modifier], check: str, problem: str, run: list[str]) -> None:
    """The contract's ``check`` fails on ``cls`` with ``problem``, showing ``run``."""
    caught = violation(cls, check)
    assert caught.problem == problem
    assert caught.scenario == run


def test_the_modifier_the_broken_ones_break_passes_the_whole_contract() -> None:
    Contract(make_modifier=lambda start, end: Shrink(start=start, end=end)).check_all()


def test_an_update_event_override_that_runs_on_update_itself_is_caught() -> None:
    expect_caught(
        ShrinksOnEveryStep,
        "check_lifecycle",
        "update_event in state 'started': expected the hooks on_event, on_update; they were "
        "on_update, on_event, on_update",
        [
            "schedule: start=0, end=None",
            LOOP,
            "  initialize",
            *usual_batch(0, here="optim_post_step"),
            "  finalize",
        ],
    )


def test_a_hook_registered_directly_with_torch_is_caught_surviving_finalize() -> None:
    expect_caught(
        LeaksHook,
        "check_hooks_released",
        "torch hooks survive finalize: 1 forward_pre hook on module '0'",
        OPEN_FROM_INITIALIZE_TO_FINALIZE,
    )


def test_a_release_hooks_override_that_keeps_the_hooks_is_caught() -> None:
    expect_caught(
        KeepsHooks,
        "check_hooks_released",
        "torch hooks survive finalize: 1 forward_pre hook on module '0'",
        OPEN_FROM_INITIALIZE_TO_FINALIZE,
    )


def test_weights_changed_before_the_window_opens_are_caught() -> None:
    expect_caught(
        ZeroesEarly,
        "check_untouched_outside_window",
        "the modifier changed the model before the window opened: parameter '0.weight' "
        "differs from the same run without the modifier",
        [
            "schedule: start=None, end=None",
            LOOP,
            "  initialize   <- here",
            "  finalize",
        ],
    )


def test_weights_changed_after_the_window_closed_are_caught() -> None:
    expect_caught(
        ShrinksAfterEnd,
        "check_untouched_outside_window",
        "the modifier changed the model after the window closed: parameter '0.weight' "
        "differs from the same run without the modifier",
        [
            "schedule: start=0, end=1",
            LOOP,
            "  initialize",
            *usual_batch(0),
            *usual_batch(1, here="optim_post_step"),
            "  finalize",
        ],
    )


def test_state_left_out_of_state_dict_is_caught_after_a_resume() -> None:
    expect_caught(
        ForgetsCount,
        "check_resume",
        "parameter '0.weight' differs from the uninterrupted run",
        [
            "schedule: start=0, end=None",
            LOOP,
            "  initialize",
            *usual_batch(0, then=SAVED),
            *usual_batch(1, here="optim_post_step"),
            "  finalize",
        ],
    )


def test_a_hook_not_reattached_on_resume_is_caught() -> None:
    expect_caught(
        ForgetsHookOnResume,
        "check_resume",
        "the model's output differs from the uninterrupted run",
        [
            "schedule: start=0, end=None",
            LOOP,
            "  initialize   <- here",
            SAVED,
            "  finalize",
        ],
    )


def test_a_forgotten_return_true_is_caught_at_initialize() -> None:
    caught = violation(ForgetsReturn, "check_lifecycle")
    assert caught.problem.startswith(
        "the call raised HookReturnError: ForgetsReturn.on_initialize returned None, expected "
        "True or False"
    )
    assert caught.scenario == [
        "schedule: start=0, end=None",
        LOOP,
        "  initialize   <- here",
        "  finalize",
    ]


def test_an_illegal_call_that_changes_state_before_raising_is_caught() -> None:
    expect_caught(
        ResetsOnInitialize,
        "check_illegal_calls",
        "the illegal call initialize() raised, but field updates, state_dict()['updates'] changed",
        [
            "schedule: start=0, end=None",
            LOOP,
            "  initialize",
            *usual_batch(0, then="  -- illegal: initialize()   <- here"),
            "  finalize",
        ],
    )


def test_the_message_shows_the_modifier_the_check_and_the_run() -> None:
    caught = violation(LeaksHook, "check_hooks_released")
    assert str(caught).splitlines() == [
        "LeaksHook breaks the modifier contract (torch hooks): torch hooks survive finalize: "
        "1 forward_pre hook on module '0'",
        "The smallest run found that shows it:",
        "  schedule: start=0, end=None",
        f"  {LOOP}",
        "    initialize",
        "    finalize   <- here",
    ]


def test_hypothesis_own_report_is_shown_only_when_pytest_is_verbose(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from modfsm.engine.tools.testing import plugin

    monkeypatch.setattr(plugin, "PYTEST_VERBOSITY", [0])
    with pytest.raises(ContractViolation) as quiet:
        contract_for(ForgetsCount).check_resume()
    assert quiet.value.__notes__ == ["(pytest -v also shows hypothesis' own report of it)"]
    monkeypatch.setattr(plugin, "PYTEST_VERBOSITY", [1])
    with pytest.raises(ContractViolation) as verbose:
        contract_for(ForgetsCount).check_resume()
    assert str(verbose.value) == str(quiet.value)  # the same headline and shrunk loop
    assert any("Draw 1 (schedule)" in note for note in verbose.value.__notes__)


def test_a_one_shot_modifier_acting_after_its_calibration_is_caught() -> None:
    from modfsm.engine.tools.testing import strategies
    from tests.contract.broken.acts_after_calibration import ActsAfterCalibration

    contract = Contract(
        make_modifier=lambda start, end: ActsAfterCalibration(start=start, end=end),
        streams=strategies.calibration_streams(),
        settings=REPRODUCIBLE,
        max_examples=60,
    )
    with pytest.raises(ContractViolation, match="after the window closed") as caught:
        contract.check_untouched_outside_window()
    lines = caught.value.scenario
    assert "  calibration_epoch_end step 0 batch 0" in lines  # shrinking at the end: allowed
    assert any(line.endswith("<- here") and "optim_post_step" in line for line in lines)
