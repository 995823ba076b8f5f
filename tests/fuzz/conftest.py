"""Report how many hostile inputs the fuzz tests ran, per surface, at the end of the session."""

from __future__ import annotations

import pytest

from tests.fuzz.oracle import COUNTED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if COUNTED:
        total = sum(COUNTED.values())
        parts = ", ".join(f"{surface} {count}" for surface, count in sorted(COUNTED.items()))
        terminalreporter.write_line(f"modfsm fuzz: {total} hostile inputs run ({parts})")
