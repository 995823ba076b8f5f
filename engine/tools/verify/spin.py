"""Run the Spin model checker on a generated model; read its verdicts and counterexamples.

Theory of operation
-------------------
For one :class:`~modfsm.engine.tools.verify.promela.PromelaModel`, in a fresh temporary
folder: ``spin -a model.pml`` writes the verifier ``pan.c`` (with one never
claim per ``ltl`` property), ``cc -O0 -o pan pan.c`` builds it once, and
``./pan -a -n -N <id>`` checks each property in turn, searching for
acceptance cycles, so safety and liveness claims alike are decided. Its
report gives ``errors: N`` (0: the property holds) and the size of the search:
states stored and matched, transitions and depth.

When a property fails, pan writes a trail. To make the counterexample short,
a second verifier compiled with ``-DREACH`` searches again with ``-i``
(iteratively shorter trails; this works for safety claims, which every
property in the catalog is; otherwise the first trail is kept). ``spin -t``
replays the trail, the model prints one ``MODFSM`` line per call, and those
become :class:`~modfsm.engine.tools.verify.model.Step` s, printed as
``initialize [on_initialize=true, should_start=false] / on_initialize -> initialized; ...``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import attrs

from modfsm.engine.kernel.errors import LifecycleError
from modfsm.engine.tools.verify.model import Step, format_path
from modfsm.engine.tools.verify.promela import LINE_TAG, PromelaModel, generate_for
from modfsm.engine.tools.verify.properties import TemporalProperty, VerifiedMachine
from modfsm.engine.tools.verify.verdict import SpinStats, Status, Verdict

__all__ = [
    "INSTALL_HINT",
    "Counterexample",
    "ModelCheckError",
    "PropertyResult",
    "SpinNotFoundError",
    "check_machine",
    "check_model",
    "find_tools",
    "parse_pan_output",
    "spin_version",
]

INSTALL_HINT: Final = "To fix, install spin (apt-get install spin) and a C compiler (gcc)."

_TIMEOUT_S: Final = 300
_PAN_FLAGS: Final = ("-n", "-w20", "-m100000")
"""-n: no unreached-code report; -w20: a 2^20-slot hash table (the models are small);
-m: a search stack deep enough for every model here."""


class ModelCheckError(LifecycleError, RuntimeError):
    """Spin or the C compiler failed, or said something this module cannot read."""


class SpinNotFoundError(LifecycleError, FileNotFoundError):
    """``spin`` or a C compiler is not installed; the message says how to install them."""


@attrs.frozen
class Counterexample:
    """A run of the model that violates a property.

    Attributes:
        steps: the calls, in order.
        cycle_start: for an infinite run, the index of the first step of the
            cycle it repeats forever; None for a finite one.
    """

    steps: tuple[Step, ...]
    cycle_start: int | None = None

    def __str__(self) -> str:
        return format_path(self.steps, cycle_start=self.cycle_start)

    def lines(self) -> tuple[str, ...]:
        """One line per call; the first call of a repeated cycle is marked ``(cycle:)``."""
        return tuple(
            ("(cycle:) " if n == self.cycle_start else "") + str(step)
            for n, step in enumerate(self.steps)
        )


@attrs.frozen
class PropertyResult:
    """One property checked by Spin.

    Attributes:
        property: the property.
        holds: whether pan found no violation.
        stats: pan's figures for the search.
        counterexample: the shortest violating run found, when it fails.
    """

    property: TemporalProperty
    holds: bool
    stats: SpinStats
    counterexample: Counterexample | None = None


def find_tools() -> tuple[str, str]:
    """The paths of ``spin`` and a C compiler (``$CC``, ``cc`` or ``gcc``).

    Raises:
        SpinNotFoundError: one of them is missing.
    """
    spin = shutil.which("spin")
    compilers = [os.environ.get("CC", ""), "cc", "gcc"]
    cc = next((found for c in compilers if c and (found := shutil.which(c))), None)
    if spin is None or cc is None:
        missing = " and ".join(
            name for name, path in (("spin", spin), ("a C compiler", cc)) if path is None
        )
        raise SpinNotFoundError(f"model checking needs {missing}, not found on PATH. "
                                f"{INSTALL_HINT}")  # fmt: skip
    return spin, cc


def spin_version() -> str:
    """``Spin Version 6.5.2 -- 6 December 2019``, as ``spin -V`` prints it."""
    spin, _ = find_tools()
    return _run([spin, "-V"], Path.cwd()).strip()


def _run(argv: Sequence[str], cwd: Path, *, verifier: bool = False) -> str:
    """Run a tool and return its output; a failing exit raises, except for the verifier
    (pan), whose report says whether it finished."""
    try:
        done = subprocess.run(
            list(argv), cwd=cwd, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise ModelCheckError(f"{' '.join(argv)} ran for more than {_TIMEOUT_S} s. "
                              "To fix, check the model's size.") from None  # fmt: skip
    if done.returncode != 0 and not verifier:
        raise ModelCheckError(
            f"{' '.join(argv)} failed (exit {done.returncode}):\n{done.stdout}{done.stderr}\n"
            "To fix, report it with the model (modfsm verify --write-models DIR)."
        )
    return done.stdout + done.stderr


_FIGURES: Final = {
    "state_vector": r"State-vector (\d+) byte",
    "depth": r"depth reached (\d+)",
    "errors": r"errors: (\d+)",
    "states_stored": r"(\d+) states, stored",
    "states_matched": r"(\d+) states, matched",
    "transitions": r"(\d+) transitions \(= stored\+matched\)",
}


def parse_pan_output(text: str) -> SpinStats:
    """The figures of a pan report.

    Raises:
        ModelCheckError: a figure is missing (pan did not finish its search).
    """
    values: dict[str, int] = {}
    for name, pattern in _FIGURES.items():
        match = re.search(pattern, text)
        if match is None:
            raise ModelCheckError(f"pan's report has no {name.replace('_', ' ')}:\n{text}\n"
                                  "To fix, run pan by hand on the model.")  # fmt: skip
        values[name] = int(match.group(1))
    return SpinStats(**values)


def _counterexample(model: PromelaModel, spin: str, work: Path) -> Counterexample:
    replay = _run([spin, "-t", "model.pml"], work)
    steps: list[Step] = []
    cycle_start: int | None = None
    for line in replay.splitlines():
        text = line.strip()
        if "START OF CYCLE" in text:
            cycle_start = len(steps)
        elif text.startswith(LINE_TAG + " "):
            steps.append(model.decode(text))
    return Counterexample(tuple(steps), cycle_start)


def check_model(model: PromelaModel, *, workdir: Path | None = None) -> tuple[PropertyResult, ...]:
    """Check every property of ``model`` with Spin.

    Args:
        model: the generated model.
        workdir: where to build the verifier (default: a temporary folder, removed after).

    Raises:
        SpinNotFoundError: spin or a C compiler is missing.
        ModelCheckError: spin, the compiler or pan failed.
    """
    spin, cc = find_tools()
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="modfsm-spin-") as tmp:
            return check_model(model, workdir=Path(tmp))
    work = workdir
    (work / "model.pml").write_text(model.text, encoding="utf-8")
    _run([spin, "-a", "model.pml"], work)
    _run([cc, "-O0", "-o", "pan", "pan.c"], work)
    results = []
    shortest_built = False
    for prop in model.properties:
        name = model.claim_name(prop)
        stats = parse_pan_output(
            _run(["./pan", "-a", *_PAN_FLAGS, "-N", name], work, verifier=True)
        )
        if stats.errors == 0:
            results.append(PropertyResult(prop, True, stats))
            continue
        if not shortest_built:
            _run([cc, "-O0", "-DREACH", "-o", "pan_reach", "pan.c"], work)
            shortest_built = True
        trail = (work / "model.pml.trail").read_bytes()
        shorter = _run(["./pan_reach", "-i", *_PAN_FLAGS, "-N", name], work, verifier=True)
        if "errors: 0" in shorter or not (work / "model.pml.trail").exists():
            (work / "model.pml.trail").write_bytes(trail)  # not a safety claim: keep the first
        results.append(PropertyResult(prop, False, stats, _counterexample(model, spin, work)))
    return tuple(results)


def check_machine(
    machine: VerifiedMachine, *, model: PromelaModel | None = None
) -> tuple[Verdict, ...]:
    """Model-check ``machine``'s temporal properties; one verdict each.

    Without spin, every verdict is ``not checked`` and says how to install it.

    Raises:
        ModelCheckError: spin, the compiler or pan failed.
    """
    model = model if model is not None else generate_for(machine)
    try:
        results = check_model(model)
    except SpinNotFoundError as missing:
        return tuple(
            Verdict(
                machine.name, p.id, p.title, Status.NOT_CHECKED, str(missing), formula=p.formula
            )
            for p in model.properties
        )
    verdicts = []
    for result in results:
        prop, stats = result.property, result.stats
        evidence: tuple[str, ...] = ()
        if result.holds:
            detail = (f"{prop.formula}: no violation in {stats.states_stored} states, "
                      f"{stats.transitions} transitions")  # fmt: skip
        else:
            run = result.counterexample
            detail = f"{prop.formula} is violated by: {run}"
            if run is not None:
                evidence = run.lines() or (str(run),)
        status = Status.HOLDS if result.holds else Status.FAILS
        verdicts.append(
            Verdict(
                machine.name, prop.id, prop.title, status, detail, evidence, stats, prop.formula
            )
        )
    return tuple(verdicts)
