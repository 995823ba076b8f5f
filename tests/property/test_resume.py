"""Resume equivalence: a run straight through == interrupted at k, saved, resumed in fresh objects.

Over random schedules, accumulation, epoch counting, one or two stages, with or
without ``wrap_optimizer``, skipped steps and a last partial step, and save
points k between batches *and inside them* (after ``batch_start``, after the
backward pass, after the optimizer step): the resumed run's hook calls after k
equal the straight run's, and the final model weights are bitwise equal.
Everything crosses a real ``torch.save`` / ``torch.load(weights_only=True)``.

Every example has an *anchor*: a modifier whose window is open from
``initialize`` on and whose saved state (its update count) scales the weights
at each optimizer step, with at least one step before k and one after it. So a
resume that loses a modifier's state (``Modifier.load_state_dict`` not called)
changes the calls and the weights in every example, not only in lucky ones.
"""

from __future__ import annotations

import io
from typing import Any

import attrs
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from modfsm.engine import Event, EventType, Modifier, State
from modfsm.engine.loop.session import Session
from modfsm.engine.runtime.stage import StageModifiers
from modfsm.engine.tools.testing import strategies as ms


@attrs.define(eq=False)
class Decay(Modifier):
    """Shrinks the weights after each optimizer step in its window by its update count."""

    updates: int = 0
    calls: list[tuple[str, str | None, float | None, int]] = attrs.field(factory=list)

    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        self.calls.append(("on_initialize", None, None, self.updates))
        return True

    def on_start(self, state: State, event: Event, **kwargs: Any) -> None:
        self.calls.append(("on_start", event.type_.value, event.current_index, self.updates))

    def on_update(self, state: State, event: Event, **kwargs: Any) -> None:
        if event.type_ is EventType.OPTIM_POST_STEP:
            self.updates += 1
            with torch.no_grad():
                for parameter in state.model.parameters():
                    parameter.mul_(1.0 - 0.01 * self.updates)
        self.calls.append(("on_update", event.type_.value, event.current_index, self.updates))

    def on_end(self, state: State, event: Event, **kwargs: Any) -> None:
        self.calls.append(("on_end", event.type_.value, event.current_index, self.updates))

    def on_finalize(self, state: State, **kwargs: Any) -> bool:
        self.calls.append(("on_finalize", None, None, self.updates))
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates}

    def load_state_dict(self, state_dict: Any, state: State) -> None:
        self.updates = int(state_dict["updates"])


@attrs.frozen
class Plan:
    """One example: the recipe, the loop's settings and where it is interrupted."""

    schedule: list[tuple[Any, Any]]  # the anchor's window first
    two_stages: bool
    per_step: int
    steps_per_epoch: int | None
    wrap: bool
    total: int  # batches
    save_at: tuple[int, int]  # (batch, phase): saved just before that phase of that batch
    skips: frozenset[int]  # step batches whose optimizer step is skipped
    flush: bool  # step the last batch partially when it does not complete an accumulation

    @property
    def config(self) -> dict[str, Any]:
        return {
            "batches_per_step": self.per_step,
            "steps_per_epoch": self.steps_per_epoch,
            "wrap_optimizer": self.wrap,
        }


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    per_step = draw(st.integers(1, 3), label="per_step")
    # Step batches are the same with or without skips: a skipped step restarts the count too.
    first_step = per_step - 1
    save_batch = draw(st.integers(first_step, first_step + 5), label="save batch")
    phase = 3 if save_batch == first_step else draw(st.integers(0, 3), label="phase")
    total = save_batch + per_step + 1 + draw(st.integers(0, 3), label="extra batches")
    step_batches = [b for b in range(total) if (b + 1) % per_step == 0]
    # The anchor updates at the first step (before k) and the last one (after k): keep both.
    skippable = step_batches[1:-1]
    skips = draw(st.frozensets(st.sampled_from(skippable)) if skippable else st.just(frozenset()))
    anchor = (draw(st.sampled_from([-1, 0]), label="anchor start"), None)
    others = draw(st.lists(st.tuples(ms.schedule_values, ms.schedule_values), max_size=2))
    return Plan(
        schedule=[anchor, *others],
        two_stages=draw(st.booleans(), label="two stages"),
        per_step=per_step,
        steps_per_epoch=draw(st.one_of(st.none(), st.integers(1, 3)), label="steps_per_epoch"),
        wrap=draw(st.booleans(), label="wrap_optimizer"),
        total=total,
        save_at=(save_batch, phase),
        skips=skips,
        flush=draw(st.booleans(), label="flush"),
    )


def build(plan: Plan) -> tuple[torch.nn.Module, Any, list[Decay], list[StageModifiers]]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    modifiers = [Decay(start=a, end=b) for a, b in plan.schedule]
    if plan.two_stages and len(modifiers) > 1:  # the anchor goes last, into the second stage
        modifiers = modifiers[1:] + modifiers[:1]
        stages = [StageModifiers(modifiers[:1], group="first", index=0),
                  StageModifiers(modifiers[1:], group="second", index=1)]  # fmt: skip
    else:
        stages = [StageModifiers(modifiers, group="only", index=0)]
    return model, optimizer, modifiers, stages


def run(plan: Plan, session: Session, model: torch.nn.Module, optimizer: Any,
        start: tuple[int, int], stop: tuple[int, int]) -> None:  # fmt: skip
    """Run the loop's phases from ``start`` up to, not including, ``stop``."""
    phases = [(b, p) for b in range(plan.total) for p in range(4)] + [(plan.total, 0)]
    for batch, phase in phases[phases.index(start) : phases.index(stop)]:
        if phase == 0:
            session.batch_start(batch)
        elif phase == 1:
            generator = torch.Generator().manual_seed(batch)
            inputs = torch.randn(5, 4, generator=generator)
            targets = torch.randn(5, 2, generator=generator)
            loss = torch.nn.functional.mse_loss(model(inputs), targets)
            session.loss_calculated(loss)
            (loss / plan.per_step).backward()  # type: ignore[no-untyped-call]  # torch
        elif phase == 2:
            due = session.position == "step_due_loss"
            partial = plan.flush and batch == plan.total - 1 and not due
            if due and batch in plan.skips:
                optimizer.zero_grad()  # the step is skipped (as a GradScaler does)
            elif due or partial:
                if plan.wrap:
                    optimizer.step()  # the session's hooks report the step (partial or not)
                else:
                    session.optim_pre_step(partial=partial)
                    optimizer.step()
                    session.optim_post_step()
                optimizer.zero_grad()
        else:
            session.batch_end()


def through_torch(value: Any) -> Any:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@settings(max_examples=60)
@given(plan=plans())
def test_a_resumed_run_equals_an_uninterrupted_one(plan: Plan) -> None:
    begin, end = (0, 0), (plan.total, 0)

    # Straight through.
    model, optimizer, straight, stages = build(plan)
    session = Session()
    session.initialize(model=model, optimizer=optimizer, recipe=stages, **plan.config)
    run(plan, session, model, optimizer, begin, plan.save_at)
    marks = [len(m.calls) for m in straight]
    anchor = next(m for m in straight if m.start in (-1, 0) and m.end is None)
    updates_at_save = anchor.updates
    run(plan, session, model, optimizer, plan.save_at, end)
    session.finalize()
    assert 0 < updates_at_save < anchor.updates  # the anchor updates on both sides of k
    expected = [m.calls[mark:] for m, mark in zip(straight, marks, strict=True)]
    expected_weights = [p.detach().clone() for p in model.parameters()]

    # Interrupted at save_at: save everything, then continue in fresh objects.
    model, optimizer, _, stages = build(plan)
    session = Session()
    session.initialize(model=model, optimizer=optimizer, recipe=stages, **plan.config)
    run(plan, session, model, optimizer, begin, plan.save_at)
    checkpoint = through_torch({
        "session": session.state_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "grads": [p.grad for p in model.parameters()],
    })  # fmt: skip

    model, optimizer, resumed, stages = build(plan)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)  # fresh weights differ until the checkpoint is loaded
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    for parameter, grad in zip(model.parameters(), checkpoint["grads"], strict=True):
        parameter.grad = grad
    session = Session()
    session.load_state_dict(checkpoint["session"])
    session.initialize(model=model, optimizer=optimizer, recipe=stages, **plan.config)
    assert session.position == checkpoint["session"]["position"]
    run(plan, session, model, optimizer, plan.save_at, end)
    session.finalize()

    assert [m.calls for m in resumed] == expected
    for want, got in zip(expected_weights, model.parameters(), strict=True):
        assert torch.equal(want, got)
