"""What every hostile input must get from ``modfsm``: an exit code the CLI documents, one
message, no traceback, and nothing changed on disk that the command line did not name.

:func:`invoke` runs :func:`modfsm.engine.app.cli.main` in this process (fast enough for
thousands of inputs), with stdout and stderr captured. ``modfsm run``'s training loop is
replaced by one that only counts (:func:`no_training`): an input that passes every check
must not cost seconds of training here; what it costs to train is tested elsewhere. So is
``modfsm oneshot``'s model loading (it may train the built-in LM): an input that passes
every check stops there with exit 2 and :data:`LOADED` (``Outcome.loaded``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import attrs

from modfsm.engine.app import cli, oneshot, runner
from modfsm.engine.kernel.errors import ConfigError

EXAMPLES = int(os.environ.get("MODFSM_FUZZ_EXAMPLES", "0")) or (
    1000 if os.environ.get("HYPOTHESIS_PROFILE") == "ci" else 400
)
"""Examples per fuzz test (the command-line test takes twice as many): 400 in ``make
test`` (about 2,900 inputs in all), 1,000 under CI's profile (about 6,800); set
``MODFSM_FUZZ_EXAMPLES`` for a longer run."""

COUNTED: dict[str, int] = {}
"""Inputs run per surface in this process (printed by ``tests/fuzz/conftest.py``)."""


@attrs.frozen
class Outcome:
    code: int
    out: str
    err: str
    trained: bool
    loaded: bool = False


LOADED = "fuzz: every check passed; the model would load here. To fix, nothing."
"""What ``modfsm oneshot`` says where it would load (and maybe train) its model."""


def _no_model(*args: Any, **kwargs: Any) -> Any:
    _no_model.called = True  # type: ignore[attr-defined]  # a flag on the stub itself
    raise ConfigError(LOADED, owner="fuzz", field="model", value=None)


def _no_training(*args: Any, **kwargs: Any) -> float:
    _no_training.called = True  # type: ignore[attr-defined]  # a flag on the stub itself
    return float("nan")


def invoke(argv: list[str], surface: str) -> Outcome:
    """``modfsm ARGV`` in this process; a traceback fails the test as an exception."""
    COUNTED[surface] = COUNTED.get(surface, 0) + 1
    out, err = io.StringIO(), io.StringIO()
    _no_training.called = False  # type: ignore[attr-defined]
    _no_model.called = False  # type: ignore[attr-defined]
    with (
        mock.patch.object(runner, "_train", _no_training),
        mock.patch.object(oneshot, "_load_model", _no_model),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        try:
            code = cli.main(argv)
        except SystemExit as exit_:  # argparse's usage errors
            code = int(exit_.code or 0)
    return Outcome(code, out.getvalue(), err.getvalue(), _no_training.called,  # type: ignore[attr-defined]
                   _no_model.called)  # type: ignore[attr-defined]  # fmt: skip


def assert_refused(outcome: Outcome, argv: list[str]) -> None:
    """Exit 2, one message on stderr naming the command, no traceback, nothing trained."""
    where = f"modfsm {' '.join(argv)!r}"
    assert outcome.code == 2, (where, outcome)
    assert_one_message(outcome.err, where)
    assert not outcome.trained, where


def assert_one_message(err: str, where: str) -> None:
    """One message: a line that starts with ``modfsm`` (argparse adds its usage line before)."""
    assert "Traceback" not in err, (where, err)
    assert 'File "' not in err, (where, err)
    heads = [line for line in err.splitlines() if line.startswith("modfsm")]
    assert len(heads) == 1, (where, err)
    assert len(err) < 4000 + 4 * len(where), (where, len(err))  # it may quote the input


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` by relative path, with the sha256 of its bytes."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            found[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.is_dir():
            found[str(path.relative_to(folder)) + "/"] = ""
    return found


@contextlib.contextmanager
def unchanged(folder: Path, where: str) -> Iterator[None]:
    """Fail if anything under ``folder`` is added, removed or changed inside the block."""
    before = snapshot(folder)
    yield
    assert snapshot(folder) == before, where
