"""The ``modfsm`` logger: one line when a window opens or closes, a warning at finalize
for a scheduled window that never opened, and a word at initialize about epochs."""

from __future__ import annotations

import logging
from typing import Any

import attrs
import pytest

from modfsm.engine import Modifier, State
from modfsm.engine.loop.session import Session


@attrs.define(eq=False)
class Plain(Modifier):
    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        return True


class Open(Plain):
    """No ``@attrs.define``: instances have a ``__dict__`` (cells look hooks up by name)."""


def _run(modifiers: list[Modifier], steps: int, **settings: Any) -> None:
    session = Session()
    session.initialize(recipe=modifiers, **settings)
    for _ in range(steps):
        session.batch_start()
        session.optim_pre_step()
        session.optim_post_step()
        session.batch_end()
    session.finalize()


def _lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "modfsm"]


@pytest.mark.parametrize("cls", [Plain, Open], ids=["slots", "dict"])
def test_a_window_logs_one_line_when_it_opens_and_one_when_it_closes(
    caplog: pytest.LogCaptureFixture, cls: type[Modifier]
) -> None:
    caplog.set_level(logging.INFO, logger="modfsm")
    _run([cls(start=2, end=4), cls()], steps=6)
    name = cls.__name__
    assert _lines(caplog) == [
        (logging.INFO, f"modifier default_stage.0 ({name}): window opens at step 2"),
        (logging.INFO, f"modifier default_stage.0 ({name}): window closes at step 4"),
    ]  # nothing for the modifier without a window, nothing for the steps between


def test_a_window_never_opened_is_a_warning_at_finalize(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="modfsm")
    _run([Plain(start=50), Plain(start=3, end=2)], steps=4)
    assert _lines(caplog) == [
        (logging.INFO, "modifier default_stage.1 (Plain): window's end passed before it opened "
                       "at step 2"),
        (logging.WARNING, "modifier default_stage.0 (Plain): finalized, but its window never "
                          "opened (start=50, end=None). To fix, check start/end against the "
                          "steps the run took (and whether they are in epochs)."),
        (logging.WARNING, "modifier default_stage.1 (Plain): finalized, but its window never "
                          "opened (start=3, end=2). To fix, check start/end against the steps "
                          "the run took (and whether they are in epochs)."),
    ]  # fmt: skip


def test_windows_in_epochs_are_said_at_initialize_and_in_each_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="modfsm")
    _run([Plain(start=0.5, end=1)], steps=5, steps_per_epoch=4)
    assert _lines(caplog) == [
        (logging.INFO, "steps_per_epoch=4: the modifiers' start, end and update are read in "
                       "epochs (epoch = optimizer step / 4). To schedule in optimizer steps, "
                       "leave steps_per_epoch unset."),
        (logging.INFO, "modifier default_stage.0 (Plain): window opens at step 2 (epoch 0.5)"),
        (logging.INFO, "modifier default_stage.0 (Plain): window closes at step 4 (epoch 1)"),
    ]  # fmt: skip


def test_a_window_opened_after_its_end_passed_says_it_opens_and_closes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="modfsm")
    modifier = Plain(start=3, end=2)
    session = Session()
    session.initialize(recipe=[modifier])
    for step in range(5):
        if step == 3:
            modifier.end = None  # should_start now holds: the table opens it into ended
        session.batch_start()
        session.optim_pre_step()
        session.optim_post_step()
        session.batch_end()
    assert [message for _, message in _lines(caplog)] == [
        "modifier default_stage.0 (Plain): window's end passed before it opened at step 2",
        "modifier default_stage.0 (Plain): window opens and closes at step 3",
    ]
    assert modifier.started
    assert modifier.ended
