"""A pytest plugin for ``make mutation``: import-time code belongs to many tests.

mutmut links each mutated function to the tests that call it, by recording the
calls made between two test teardowns. The engine compiles its machines
(``compile_machine`` and the declarations' helpers) when it is imported, during
collection, so mutmut would link those calls to the first test only, and a
mutant there would be run against that one test. This plugin snapshots the
calls made during collection and adds them to every test in
:data:`IMPORT_TIME_TESTS` (mutmut imports the engine afresh, with the mutant
active, for each mutant: ``process_isolation = "forkserver"`` in
pyproject.toml). That set is every unit test plus the exhaustive cell checks
and the model-based lifecycle, stage, grammar and compiler tests: broad and
quick. The exhaustive trace enumeration (``tests/exhaustive/test_traces.py``)
is left out of it: it would make every surviving compiler mutant cost half a
minute, and the cells and models already check every state and trigger.

It also runs a mutant's tests fastest first (unit, exhaustive, then property
tests), so that a mutant the unit tests kill (mutmut stops at the first
failure) does not wait for the property tests.

It does nothing outside mutmut (``MUTANT_UNDER_TEST`` unset).
"""

from __future__ import annotations

import os

import pytest

_import_time_calls: set[str] = set()

#: The tests (path prefixes) that run against mutants of code called at import time.
IMPORT_TIME_TESTS = (
    "tests/unit/",
    "tests/exhaustive/test_cells.py",
    "tests/exhaustive/test_cell_shapes.py",
    "tests/property/test_compiler_model.py",
    "tests/property/test_lifecycle_model.py",
    "tests/property/test_session_grammar.py",
    "tests/property/test_stage_model.py",
)
_FOLDER_ORDER = ("tests/unit/", "tests/exhaustive/", "tests/property/")


def _in_stats_run() -> bool:
    return os.environ.get("MUTANT_UNDER_TEST") == "stats"


def _rank(item: pytest.Item) -> int:
    path = item.nodeid
    return next((i for i, folder in enumerate(_FOLDER_ORDER) if path.startswith(folder)), 3)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under mutmut, run the unit tests first (the order within a folder is kept)."""
    if os.environ.get("MUTANT_UNDER_TEST"):
        items.sort(key=_rank)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Snapshot the functions the imports called (mutmut's trampolines recorded them)."""
    if _in_stats_run():
        from mutmut.state import state

        _import_time_calls.update(state()._stats)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    """Before mutmut files this test's calls, add the import-time ones."""
    if _in_stats_run() and _import_time_calls and item.nodeid.startswith(IMPORT_TIME_TESTS):
        from mutmut.state import state

        state()._stats.update(_import_time_calls)
