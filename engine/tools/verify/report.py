"""Everything verified about the declared machines, as one report (``modfsm verify``)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import attrs

from modfsm.engine.tools.verify.promela import generate_for
from modfsm.engine.tools.verify.properties import MACHINES, VerifiedMachine
from modfsm.engine.tools.verify.spin import SpinNotFoundError, check_machine, spin_version
from modfsm.engine.tools.verify.structure import prove
from modfsm.engine.tools.verify.verdict import Status, Verdict

__all__ = ["Report", "format_report", "verify"]


@attrs.frozen
class Report:
    """The verdicts of every structural proof and model check.

    Attributes:
        verdicts: per machine, the structural proofs (V1-V6), then its temporal properties.
        spin: ``spin -V``'s line, or None when model checking did not run.
        missing: why model checking did not run (spin or a compiler is
            missing), with the fix; None when it ran or was not asked for.
        model_check_s: wall time of model checking, in seconds.
    """

    verdicts: tuple[Verdict, ...]
    spin: str | None
    missing: str | None
    model_check_s: float

    @property
    def exit_code(self) -> int:
        """0: every property holds; 1: some property fails; 2: some could not be checked."""
        statuses = {v.status for v in self.verdicts}
        if Status.FAILS in statuses:
            return 1
        return 2 if Status.NOT_CHECKED in statuses else 0


def verify(
    machines: Sequence[VerifiedMachine] = MACHINES,
    *,
    model_check: bool = True,
    write_models: Path | None = None,
) -> Report:
    """Prove and model-check ``machines``.

    Args:
        machines: what to verify (default: every declared machine).
        model_check: run Spin on the temporal properties (else only the structural proofs).
        write_models: also write each generated model to ``DIR/<machine>.pml``.

    Raises:
        modfsm.engine.tools.verify.spin.ModelCheckError: spin, the compiler or pan failed.
        OSError: ``write_models`` cannot be written.
    """
    verdicts: list[Verdict] = []
    version: str | None = None
    missing: str | None = None
    if model_check:
        try:
            version = spin_version()
        except SpinNotFoundError as error:
            missing = str(error)
    if write_models is not None:
        write_models.mkdir(parents=True, exist_ok=True)
    spent = 0.0
    for machine in machines:
        verdicts.extend(prove(machine))
        model = generate_for(machine)
        if write_models is not None:
            (write_models / f"{machine.name}.pml").write_text(model.text, encoding="utf-8")
        if version is not None:
            began = time.perf_counter()
            verdicts.extend(check_machine(machine, model=model))
            spent += time.perf_counter() - began
        else:
            why = missing or "not checked: model checking was not asked for"
            verdicts.extend(
                Verdict(machine.name, p.id, p.title, Status.NOT_CHECKED, why, formula=p.formula)
                for p in machine.temporal
            )
    return Report(tuple(verdicts), version, missing, spent)


def _figure(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def format_report(report: Report) -> str:
    """The report as a table, then every failure's counterexample and a summary line."""
    header = ("machine", "id", "property", "verdict", "states", "transitions", "depth")
    rows = [
        (
            v.machine,
            v.property_id,
            v.title,
            str(v.status),
            _figure(v.stats.states_stored if v.stats else None),
            _figure(v.stats.transitions if v.stats else None),
            _figure(v.stats.depth if v.stats else None),
        )
        for v in report.verdicts
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    numeric = {4, 5, 6}

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if i in numeric else c.ljust(w)
                 for i, (c, w) in enumerate(zip(cells, widths, strict=True))]  # fmt: skip
        return "  ".join(parts).rstrip()

    tool = report.spin or "Spin: not run"
    out = [
        f"modfsm verify: structural proofs over the declared tables; model checking with {tool}",
        "",
        line(header),
        line(["-" * w for w in widths]),
        *(line(r) for r in rows),
        "",
    ]
    for verdict in report.verdicts:
        if verdict.status is not Status.FAILS:
            continue
        out.append(f"FAILS {verdict.machine} {verdict.property_id} ({verdict.title})")
        if verdict.formula is None:
            out.extend(f"  - {line}" for line in verdict.evidence)
        else:
            out.append(f"  {verdict.formula} is violated by this run:")
            out.extend(f"  {n}. {line}" for n, line in enumerate(verdict.evidence, start=1))
    held = sum(v.holds for v in report.verdicts)
    failed = sum(v.status is Status.FAILS for v in report.verdicts)
    unchecked = len(report.verdicts) - held - failed
    checked = [v.stats for v in report.verdicts if v.stats is not None]
    summary = f"{held} of {len(report.verdicts)} properties hold"
    if failed:
        summary += f", {failed} fail"
    if unchecked:
        summary += f", {unchecked} not checked"
    if checked:
        summary += (f"; Spin searched at most {max(s.states_stored for s in checked):,} states "
                    f"per property, in {report.model_check_s:.1f} s")  # fmt: skip
    out.append(summary + ".")
    if report.missing is not None:
        out.append(f"Model checking did not run: {report.missing}")
    return "\n".join(out) + "\n"
