"""Resume equivalence: N batches straight == k batches, save, fresh objects, load, N-k more.

Over random schedules, accumulation, epoch counting and save points k, the
resumed run's hook calls after the save point equal the straight run's, and the
final model weights are bitwise equal. Everything crosses a real
``torch.save`` / ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
from typing import Any

import attrs
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import Event, EventType, Modifier, State
from engine.session import Session
from tests.property import strategies as s


@attrs.define(eq=False)
class Decay(Modifier):
    """Shrinks the weights after each optimizer step in its window; counts its updates."""

    updates: int = 0
    calls: list[tuple[str, str | None, float | None]] = attrs.field(factory=list)

    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        self.calls.append(("on_initialize", None, None))
        return True

    def on_start(self, state: State, event: Event, **kwargs: Any) -> None:
        self.calls.append(("on_start", event.type_.value, event.current_index))

    def on_update(self, state: State, event: Event, **kwargs: Any) -> None:
        self.calls.append(("on_update", event.type_.value, event.current_index))
        if event.type_ is EventType.OPTIM_POST_STEP:
            self.updates += 1
            with torch.no_grad():
                for parameter in state.model.parameters():
                    parameter.mul_(1.0 - 0.01 * self.updates)

    def on_end(self, state: State, event: Event, **kwargs: Any) -> None:
        self.calls.append(("on_end", event.type_.value, event.current_index))

    def on_finalize(self, state: State, **kwargs: Any) -> bool:
        self.calls.append(("on_finalize", None, None))
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates}

    def load_state_dict(self, state_dict: Any, state: State) -> None:
        self.updates = int(state_dict["updates"])


def build(schedule: list[tuple[Any, Any]]) -> tuple[torch.nn.Module, Any, list[Decay]]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return model, optimizer, [Decay(start=a, end=b) for a, b in schedule]


def run_batches(session: Session, model: torch.nn.Module, optimizer: Any, first: int,
                last: int) -> None:  # fmt: skip
    for batch in range(first, last):
        generator = torch.Generator().manual_seed(batch)
        inputs, targets = (
            torch.randn(5, 4, generator=generator),
            torch.randn(5, 2, generator=generator),
        )
        session.batch_start(batch)
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        session.loss_calculated(loss)
        (loss / session.batches_per_step).backward()  # type: ignore[no-untyped-call]  # torch
        if session.position == "step_due_loss":
            session.optim_pre_step()
            optimizer.step()
            optimizer.zero_grad()
            session.optim_post_step()
        session.batch_end()


def through_torch(value: Any) -> Any:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@settings(max_examples=40)
@given(
    schedule=st.lists(st.tuples(s.schedule_values, s.schedule_values), min_size=1, max_size=2),
    per_step=st.integers(1, 3),
    steps_per_epoch=st.one_of(st.none(), st.integers(1, 3)),
    total=st.integers(1, 12),
    data=st.data(),
)
def test_a_resumed_run_equals_an_uninterrupted_one(
    schedule: list[tuple[Any, Any]],
    per_step: int,
    steps_per_epoch: int | None,
    total: int,
    data: st.DataObject,
) -> None:
    save_at = data.draw(st.integers(0, total), label="save_at")
    config: dict[str, Any] = {"batches_per_step": per_step, "steps_per_epoch": steps_per_epoch}

    # Straight through.
    model, optimizer, straight = build(schedule)
    session = Session()
    session.initialize(model=model, optimizer=optimizer, recipe=list(straight), **config)
    run_batches(session, model, optimizer, 0, save_at)
    marks = [len(m.calls) for m in straight]
    run_batches(session, model, optimizer, save_at, total)
    session.finalize()
    expected = [m.calls[mark:] for m, mark in zip(straight, marks, strict=True)]
    expected_weights = [p.detach().clone() for p in model.parameters()]

    # Interrupted at save_at: save everything, then continue in fresh objects.
    model, optimizer, first = build(schedule)
    session = Session()
    session.initialize(model=model, optimizer=optimizer, recipe=list(first), **config)
    run_batches(session, model, optimizer, 0, save_at)
    checkpoint = through_torch({
        "session": session.state_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "grads": [p.grad for p in model.parameters()],
    })  # fmt: skip

    model, optimizer, resumed = build(schedule)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)  # fresh weights differ until the checkpoint is loaded
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    for parameter, grad in zip(model.parameters(), checkpoint["grads"], strict=True):
        parameter.grad = grad
    session = Session()
    session.load_state_dict(checkpoint["session"])
    session.initialize(model=model, optimizer=optimizer, recipe=list(resumed), **config)
    run_batches(session, model, optimizer, save_at, total)
    session.finalize()

    assert [m.calls for m in resumed] == expected
    for want, got in zip(expected_weights, model.parameters(), strict=True):
        assert torch.equal(want, got)
