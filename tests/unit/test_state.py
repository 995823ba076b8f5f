"""State, Data, Hardware and the system logger."""

from __future__ import annotations

import logging

import attrs
import pytest

from modfsm.engine import Data, Event, EventType, Hardware, LoggerManager, State


def test_a_new_state_has_empty_slots_and_its_own_containers() -> None:
    first, second = State(), State()
    assert (first.model, first.optimizer, first.loss, first.batch_data) == (None,) * 4
    assert first.data == Data()
    assert first.hardware == Hardware()
    assert first.data is not second.data
    assert first.loggers is not second.loggers


def test_state_holds_the_reference_fields() -> None:
    names = {
        "model", "teacher_model", "optimizer", "optim_wrapped", "loss", "batch_data",
        "data", "hardware", "loggers", "start_event", "last_event",
    }  # fmt: skip
    initial = {field.alias for field in attrs.fields(State) if field.init}
    assert initial == names  # the __init__ names
    extra = {field.name for field in attrs.fields(State) if not field.init}
    assert extra == {"modifier_data"}  # modfsm's own, set by the session for each event
    assert all(hasattr(State(), name) for name in names)
    event = Event(EventType.BATCH_END, global_step=2)
    state = State(last_event=event)
    assert state.last_event is event


def test_data_and_hardware_hold_the_reference_fields() -> None:
    data = Data(train=[1], val=[2], test=[3], calib=[4])
    assert (data.train, data.val, data.test, data.calib) == ([1], [2], [3], [4])
    hardware = Hardware(device="cpu", rank=0, world_size=1, distributed=False)
    assert (hardware.device, hardware.rank, hardware.world_size) == ("cpu", 0, 1)
    assert hardware.local_rank is None
    assert hardware.distributed_strategy is None


@pytest.mark.parametrize("level", ["debug", "info", "warning", "error"])
def test_system_logger_writes_tagged_lines_through_stdlib_logging(
    level: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="modfsm.system")
    getattr(State().loggers.system, level)(tag="stage", string="Modifiers initialized")
    (record,) = caplog.records
    assert record.name == "modfsm.system"
    assert record.levelname == level.upper()
    assert record.getMessage() == "[stage] Modifiers initialized"


def test_a_logger_manager_can_log_to_another_logger(caplog: pytest.LogCaptureFixture) -> None:
    from modfsm.engine.model.state import SystemLogger

    custom = LoggerManager(system=SystemLogger(logging.getLogger("my.run")))
    with caplog.at_level(logging.INFO, logger="my.run"):
        custom.system.info(tag="t", string="s")
    assert [r.name for r in caplog.records] == ["my.run"]
