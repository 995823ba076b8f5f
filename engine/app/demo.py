"""``modfsm demo``: two illustrative modifiers on a tiny torch training loop.

A two-layer MLP learns a synthetic classification task. Two modifiers with
different windows act on it: ``WarmupModifier`` ramps the learning rate over
steps [0, 4) and ``FreezeModifier`` freezes the first layer over steps [6, 9).
The demo prints which hooks fired at which step, the learning rate and how much
the first layer moved, and writes the lifecycle diagram as mermaid text.

Events carry the optimizer step count: ``BATCH_START`` .. ``OPTIM_PRE_STEP`` of
step ``s`` carry ``global_step=s``; ``OPTIM_POST_STEP`` and ``BATCH_END`` carry
``s + 1``, since the optimizer has stepped. A window ``[0, 4)`` therefore spans
four optimizer steps and closes at the ``BATCH_END`` of the fourth.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import attrs

from modfsm.engine.model.events import TRAINING_STEP_EVENTS, Event, EventType
from modfsm.engine.model.state import State
from modfsm.engine.runtime.modifier import Modifier
from modfsm.engine.tools.diagrams import draw, render

if TYPE_CHECKING:
    import torch

__all__ = ["FreezeModifier", "WarmupModifier", "run_demo"]


@attrs.define(eq=False)
class _Reporting(Modifier):
    """Records the hooks that fired (except ``on_event``) for the demo's table."""

    fired: list[str] = attrs.field(factory=list, repr=False)

    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        self.fired.append("on_initialize")
        return True

    def on_start(self, state: State, event: Event, **kwargs: Any) -> None:
        self.fired.append("on_start")

    def on_update(self, state: State, event: Event, **kwargs: Any) -> None:
        self.fired.append("on_update")

    def on_end(self, state: State, event: Event, **kwargs: Any) -> None:
        self.fired.append("on_end")

    def on_finalize(self, state: State, **kwargs: Any) -> bool:
        self.fired.append("on_finalize")
        return True

    def take(self) -> list[str]:
        """The hooks fired since the last call, oldest first."""
        fired, self.fired = self.fired, []
        return fired


@attrs.define(eq=False)
class WarmupModifier(_Reporting):
    """Linear learning-rate warmup over its window, then the base rate."""

    base_lr: float | None = attrs.field(default=None, init=False)

    def on_start(self, state: State, event: Event, **kwargs: Any) -> None:
        super().on_start(state, event, **kwargs)
        self.base_lr = float(state.optimizer.param_groups[0]["lr"])

    def on_update(self, state: State, event: Event, **kwargs: Any) -> None:
        super().on_update(state, event, **kwargs)
        if event.type_ is EventType.BATCH_START and self.base_lr is not None:
            assert self.start is not None
            assert self.end is not None
            fraction = (event.current_index - self.start + 1) / (self.end - self.start)
            self._set_lr(state, self.base_lr * min(1.0, fraction))

    def on_end(self, state: State, event: Event, **kwargs: Any) -> None:
        super().on_end(state, event, **kwargs)
        if self.base_lr is not None:
            self._set_lr(state, self.base_lr)

    @staticmethod
    def _set_lr(state: State, lr: float) -> None:
        for group in state.optimizer.param_groups:
            group["lr"] = lr


@attrs.define(eq=False)
class FreezeModifier(_Reporting):
    """Stops gradient updates to one submodule during its window."""

    target: str = "0"

    def _parameters(self, state: State) -> list[torch.nn.Parameter]:
        return list(state.model.get_submodule(self.target).parameters())

    def on_start(self, state: State, event: Event, **kwargs: Any) -> None:
        super().on_start(state, event, **kwargs)
        for parameter in self._parameters(state):
            parameter.requires_grad_(False)

    def on_end(self, state: State, event: Event, **kwargs: Any) -> None:
        super().on_end(state, event, **kwargs)
        for parameter in self._parameters(state):
            parameter.requires_grad_(True)


def _summarize(hooks: Sequence[str]) -> str:
    """``on_update, on_update, on_end`` -> ``on_update x2, on_end``."""
    parts = []
    for name, group in itertools.groupby(hooks):
        count = len(list(group))
        parts.append(name if count == 1 else f"{name} x{count}")
    return ", ".join(parts) or "-"


def run_demo(*, steps: int = 12, seed: int = 0, out: Path | None = None,
             stream: TextIO) -> list[dict[str, Any]]:  # fmt: skip
    """Train for ``steps`` steps with the two modifiers; print the table to ``stream``.

    Returns the table rows (for tests). Writes ``lifecycle.mmd`` into ``out`` if given.
    """
    import torch

    torch.manual_seed(seed)
    features = torch.randn(256, 8)
    labels = (features @ torch.randn(8) > 0).long()
    first = torch.nn.Linear(8, 16)
    model = torch.nn.Sequential(first, torch.nn.ReLU(), torch.nn.Linear(16, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    state = State(model=model, optimizer=optimizer)
    modifiers: list[_Reporting] = [
        WarmupModifier(start=0, end=4, group="demo", index=0),
        FreezeModifier(start=6, end=9, group="demo", index=1, target="0"),
    ]
    names = ["warmup [0, 4)", "freeze layer 0 [6, 9)"]

    rows: list[dict[str, Any]] = []

    def record(label: str, **extra: Any) -> None:
        row: dict[str, Any] = {"step": label, **extra}
        for name, modifier in zip(names, modifiers, strict=True):
            row[name] = (_summarize(modifier.take()), str(modifier.lifecycle_state))
        rows.append(row)

    for modifier in modifiers:
        modifier.initialize(state)
    record("init")
    for step in range(steps):
        batch = torch.randint(0, len(features), (32,))
        before = first.weight.detach().clone()
        for event_type in TRAINING_STEP_EVENTS:
            index = step + 1 if event_type in (EventType.OPTIM_POST_STEP, EventType.BATCH_END) \
                else step  # fmt: skip
            event = Event(event_type, global_step=index, global_batch=index)
            if event_type is EventType.LOSS_CALCULATED:
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(features[batch]), labels[batch])
                state.loss = loss
            elif event_type is EventType.OPTIM_PRE_STEP:
                loss.backward()  # type: ignore[no-untyped-call]  # torch leaves it unannotated
                lr = optimizer.param_groups[0]["lr"]
            elif event_type is EventType.OPTIM_POST_STEP:
                optimizer.step()  # between PRE (sent above) and POST (sent below)
            for modifier in modifiers:
                modifier.update_event(state, event)
        moved = float((first.weight.detach() - before).abs().max())
        record(str(step), loss=loss.item(), lr=lr, moved=moved)
    for modifier in modifiers:
        modifier.finalize(state)
    record("final")

    _print_table(rows, names, stream)
    print("(on_event fires on every event and is not listed; 'moved' is the largest change "
          "of a layer-0 weight in that step)", file=stream)  # fmt: skip
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        path = out / "lifecycle.mmd"
        path.write_bytes(render(draw("lifecycle"), "mermaid"))
        print(f"lifecycle diagram (mermaid): {path}", file=stream)
    return rows


def _print_table(rows: list[dict[str, Any]], names: list[str], stream: TextIO) -> None:
    headers = ["step", "loss", "lr", "moved", *names]
    cells = []
    for row in rows:
        line = [
            row["step"],
            f"{row['loss']:.3f}" if "loss" in row else "",
            f"{row['lr']:.3f}" if "lr" in row else "",
            f"{row['moved']:.4f}" if "moved" in row else "",
        ]
        line += [f"{hooks} -> {state}" for hooks, state in (row[name] for name in names)]
        cells.append(line)
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(),
          file=stream)  # fmt: skip
    print("  ".join("-" * w for w in widths), file=stream)
    for line in cells:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip(),
              file=stream)  # fmt: skip
