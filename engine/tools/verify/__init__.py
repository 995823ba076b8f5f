"""Verification of the declared machines: structural proofs and Spin model checking.

``structure`` proves properties of a declared table directly; ``promela``
generates a Promela model from it; ``spin`` runs the Spin model checker on that
model; ``report`` puts both together for ``modfsm verify``. What is verified
about each machine is data, in ``properties``. See ``specs/verification.md``.
"""

from modfsm.engine.tools.verify.model import Outcome, Row, Step
from modfsm.engine.tools.verify.promela import PromelaModel, generate, generate_for
from modfsm.engine.tools.verify.properties import (
    MACHINES,
    TemporalProperty,
    VerifiedMachine,
    machine_named,
)
from modfsm.engine.tools.verify.report import Report, format_report, verify
from modfsm.engine.tools.verify.spin import (
    Counterexample,
    ModelCheckError,
    PropertyResult,
    SpinNotFoundError,
    check_machine,
    check_model,
)
from modfsm.engine.tools.verify.structure import STRUCTURAL, prove, shortest_paths
from modfsm.engine.tools.verify.verdict import SpinStats, Status, Verdict

__all__ = [
    "MACHINES",
    "STRUCTURAL",
    "Counterexample",
    "ModelCheckError",
    "Outcome",
    "PromelaModel",
    "PropertyResult",
    "Report",
    "Row",
    "SpinNotFoundError",
    "SpinStats",
    "Status",
    "Step",
    "TemporalProperty",
    "Verdict",
    "VerifiedMachine",
    "check_machine",
    "check_model",
    "format_report",
    "generate",
    "generate_for",
    "machine_named",
    "prove",
    "shortest_paths",
    "verify",
]
