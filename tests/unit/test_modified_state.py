"""Session calls return the modified state (the reference's ``ModifiedState``): a modifier
that replaces ``state.loss`` changes what the loop trains on."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import torch

from modfsm.engine import Event, EventType, ModifiedState, Modifier, State, handles
from modfsm.engine.loop.session import Session


@attrs.define(eq=False)
class Doubling(Modifier):
    """Doubles the loss inside its window (from step ``start``)."""

    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        return True

    @handles(EventType.LOSS_CALCULATED)
    def on_update(self, state: State, event: Event, **kwargs: Any) -> None:
        state.loss = state.loss * 2


@attrs.define(eq=False)
class Reporting(Modifier):
    """Overrides ``update_event`` and returns what it saw (the reference collects it)."""

    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        return True

    def update_event(self, state: State, event: Event, **kwargs: Any) -> Any:
        super().update_event(state, event, **kwargs)
        return None if event.type_ is EventType.BATCH_END else (self.index, event.type_.name)


@pytest.mark.parametrize("trace", [False, True], ids=["untraced", "traced"])
def test_every_call_returns_the_model_optimizer_and_loss_as_the_modifiers_left_them(
    trace: bool,
) -> None:
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    session = Session()
    started = session.initialize(
        model=model, optimizer=optimizer, recipe=[Doubling(start=1)], trace=trace
    )
    assert started == ModifiedState(model, optimizer, None, [])
    losses = []
    for _ in range(3):
        assert session.batch_start().model is model
        loss = model(torch.ones(1, 3)).sum()
        returned = session.loss_calculated(loss)
        assert returned.optimizer is optimizer
        losses.append((loss, returned.loss))
        session.optim_pre_step()
        session.optim_post_step()
        assert session.batch_end().loss is returned.loss
    assert losses[0][1] is losses[0][0]  # step 0: before the window, the loss given
    for given, used in losses[1:]:
        assert torch.equal(used, given * 2)  # inside it, the modifier's
    finalized = session.finalize()
    assert finalized == ModifiedState(model, optimizer, losses[-1][1], [])  # the last loss


def test_training_on_the_returned_loss_follows_the_modifiers_loss() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    twin = torch.nn.Linear(3, 1)
    twin.load_state_dict(model.state_dict())
    session = Session()
    session.initialize(model=model, recipe=[Doubling(start=0)])
    session.batch_start()
    session.loss_calculated(model(torch.ones(2, 3)).pow(2).sum()).loss.backward()
    (2 * twin(torch.ones(2, 3)).pow(2).sum()).backward()
    assert model.weight.grad is not None
    assert twin.weight.grad is not None
    assert torch.equal(model.weight.grad, twin.weight.grad)


def test_modifier_data_holds_what_update_event_overrides_returned_for_this_event_only() -> None:
    session = Session()
    session.initialize(recipe=[Reporting(start=0), Doubling(start=0), Reporting(start=0)])
    assert session.batch_start().modifier_data == [(0, "BATCH_START"), (2, "BATCH_START")]
    assert session.loss_calculated(torch.tensor(1.0)).modifier_data == [
        (0, "LOSS_CALCULATED"),
        (2, "LOSS_CALCULATED"),
    ]
    session.optim_pre_step()
    session.optim_post_step()
    assert session.batch_end().modifier_data == []  # None is not collected
    event = session.event(EventType.BATCH_START)
    assert event.modifier_data == [(0, "BATCH_START"), (2, "BATCH_START")]
