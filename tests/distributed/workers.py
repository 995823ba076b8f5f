"""What each spawned rank runs (see :mod:`tests.distributed.harness`).

A scenario is a function ``(rank, world, workdir, options) -> dict`` that trains a
small model through a :class:`~modfsm.engine.loop.session.Session` under ``torch.distributed``
(gloo, CPU) and reports what it saw. :func:`main` sets up the process group, runs
it, and writes the report, or the error the rank raised, to ``rank<r>.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import modfsm.engine.loop.distributed
import modfsm.engine.loop.session
from modfsm.engine import Event, Modifier, State
from modfsm.engine.loop.distributed import CollectiveError, DistributedError
from modfsm.engine.loop.session import Session
from modfsm.modifiers import MagnitudePruningModifier

Scenario = Callable[[int, int, Path, dict[str, Any]], dict[str, Any]]
SCENARIOS: dict[str, Scenario] = {}

#: The session's collective timeout in these tests: far above any real wait, so a
#: test that sees a RankFailureError knows no rank waited for a timeout.
TIMEOUT_S = 60.0


def scenario(function: Scenario) -> Scenario:
    SCENARIOS[function.__name__] = function
    return function


def main(rank: int, world: int, workdir: str, name: str, options: dict[str, Any]) -> None:
    """Entry point of a spawned rank."""
    root = Path(workdir)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{root / 'rendezvous'}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=TIMEOUT_S),
    )
    try:
        report = {"outcome": "ok", **SCENARIOS[name](rank, world, root, options)}
    except Exception as error:
        report = {"outcome": "error", "error": describe(error)}
    _write(root / f"rank{rank}.json", {"rank": rank, **report})
    # No destroy_process_group: a peer may already be gone (crash scenario).
    os._exit(0)


def describe(error: BaseException) -> dict[str, Any]:
    """The error as plain data (type, message, the distributed errors' attributes)."""
    found: dict[str, Any] = {
        "type": type(error).__name__,
        "message": str(error),
        "cause": None if error.__cause__ is None else type(error.__cause__).__name__,
        "notes": list(getattr(error, "__notes__", [])),
        "traceback": traceback.format_exception(error),
    }
    if isinstance(error, DistributedError):
        found["where"] = error.where
        found["rank"] = error.rank
    for name in ("failures", "ranks", "differences"):
        if hasattr(error, name):
            value = getattr(error, name)
            found[name] = {str(k): v for k, v in value.items()} if name == "failures" else value
    return found


def _write(path: Path, report: dict[str, Any]) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(report, default=repr), encoding="utf-8")
    partial.replace(path)


# --- the model, the data, the loop ----------------------------------------------------------


def model(seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))


def batch(rank: int, step: int) -> torch.Tensor:
    """Different data on each rank, as with a DistributedSampler."""
    return torch.randn(6, 8, generator=torch.Generator().manual_seed(1000 * (rank + 1) + step))


def digest(module: torch.nn.Module) -> str:
    hasher = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        hasher.update(name.encode())
        hasher.update(tensor.detach().contiguous().numpy().tobytes())
    return hasher.hexdigest()[:16]


def train(session: Session, net: torch.nn.Module, optimizer: Any, rank: int, steps: int) -> None:
    for _ in range(steps):
        x = batch(rank, session.global_step)
        session.batch_start(x)
        loss = net(x).pow(2).mean()
        session.loss_calculated(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()  # the session wraps it: optim_pre_step / optim_post_step
        session.batch_end()


def count_agreements() -> list[str]:
    """Record where the session runs the agreement protocol from now on."""
    places: list[str] = []
    real = modfsm.engine.loop.distributed.agree

    def counting(collective: Any, snapshot: Any, **kwargs: Any) -> None:
        places.append(snapshot.where)
        real(collective, snapshot, **kwargs)

    # a spy, in a child process that ends after
    vars(modfsm.engine.loop.session)["agree"] = counting
    return places


def pruning() -> list[Modifier]:
    return [MagnitudePruningModifier(final_sparsity=0.5, start=2, end=6, update=2)]


def start(
    rank: int, recipe: list[Modifier], *, ddp: bool = True, **kwargs: Any
) -> tuple[Session, torch.nn.Module, Any]:
    net: torch.nn.Module = model()
    if ddp:
        net = DistributedDataParallel(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    session = Session()
    session.initialize(
        model=net,
        optimizer=optimizer,
        recipe=recipe,
        wrap_optimizer=True,
        collective_timeout=TIMEOUT_S,
        **kwargs,
    )
    return session, net, optimizer


def unwrap(net: torch.nn.Module) -> torch.nn.Sequential:
    inner = net.module if isinstance(net, DistributedDataParallel) else net
    assert isinstance(inner, torch.nn.Sequential)
    return inner


def states(session: Session) -> dict[str, str]:
    return {mid: m._lc.name for mid, m in session.modifiers}


# --- scenarios ----------------------------------------------------------------------------------


@scenario
def lockstep(rank: int, world: int, root: Path, options: dict[str, Any]) -> dict[str, Any]:
    """A pruning recipe through 10 DDP steps; the ranks agree every 2 steps."""
    places = count_agreements()
    session, net, optimizer = start(rank, pruning(), ddp=options["ddp"], agree_every=2)
    hardware = attrs.asdict(session.state.hardware)
    underlying = unwrap(net)
    hooked_underlying = session.state.model is underlying
    train(session, net, optimizer, rank, 10)
    session.finalize()
    weights = [p for name, p in underlying.named_parameters() if name.endswith("weight")]
    zeros = [float(torch.eq(weight, 0).float().mean()) for weight in weights]
    return {
        "hardware": hardware,
        "state_model_is_underlying": hooked_underlying,
        "states": states(session),
        "agreements": places,
        "digest": digest(underlying),
        "sparsity": zeros,
    }


@attrs.define(eq=False)
class RankDecider(Modifier):
    """Starts on its own rank's say-so: at step 3 on rank 1, at step 5 elsewhere."""

    _rank: int = attrs.field(init=False, default=0)

    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        self._rank = state.hardware.rank or 0
        return True

    def should_start(self, event: Event) -> bool:
        return event.global_step >= (3 if self._rank == 1 else 5)


@scenario
def diverge(rank: int, world: int, root: Path, options: dict[str, Any]) -> dict[str, Any]:
    """A modifier that decides from rank-local data: caught at the next agreement."""
    recipe: list[Modifier] = [RankDecider(start=0)]
    session, net, optimizer = start(rank, recipe, agree_every=2)
    try:
        train(session, net, optimizer, rank, 8)
    finally:
        reached = session.global_step
        print(f"rank {rank} stopped at step {reached}")
    return {"reached": reached}


@scenario
def other_recipe(rank: int, world: int, root: Path, options: dict[str, Any]) -> dict[str, Any]:
    """The last rank builds the recipe with another final sparsity: caught at initialize."""
    sparsity = 0.75 if rank == world - 1 else 0.5
    recipe: list[Modifier] = [MagnitudePruningModifier(final_sparsity=sparsity, start=2, end=6)]
    start(rank, recipe)
    return {}


@attrs.define(eq=False)
class FailsOn(Modifier):
    """Raises in ``on_<hook>`` on one rank while ``armed`` (a class-level switch)."""

    failing_rank: int = 1
    hook: str = "initialize"
    armed: dict[str, bool] = attrs.field(factory=lambda: {"on": True})
    _rank: int = attrs.field(init=False, default=0)

    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        self._rank = state.hardware.rank or 0
        self._maybe_fail("initialize")
        return True

    def on_finalize(self, state: State, **kwargs: Any) -> bool:
        self._maybe_fail("finalize")
        return True

    def _maybe_fail(self, hook: str) -> None:
        if hook == self.hook and self._rank == self.failing_rank and self.armed["on"]:
            raise ValueError(f"disk full on rank {self._rank} during {hook}")


@scenario
def fail_initialize(rank: int, world: int, root: Path, options: dict[str, Any]) -> dict[str, Any]:
    """One rank's modifier raises in initialize; then every rank retries, disarmed."""
    armed = {"on": True}
    recipe: list[Modifier] = [
        MagnitudePruningModifier(final_sparsity=0.5, start=2, end=6),
        FailsOn(failing_rank=options["failing_rank"], armed=armed),
    ]
    net = model()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    session = Session()
    first: dict[str, Any] = {}
    try:
        session.initialize(model=net, optimizer=optimizer, recipe=recipe, wrap_optimizer=True)
    except Exception as error:
        first = describe(error)
    first_position = session.position.value
    armed["on"] = False
    session.initialize(model=net, optimizer=optimizer, recipe=recipe, wrap_optimizer=True)
    train(session, net, optimizer, rank, 3)
    session.finalize()
    return {"first": first, "first_position": first_position, "states": states(session)}


@scenario
def fail_finalize(rank: int, world: int, root: Path, options: dict[str, Any]) -> dict[str, Any]:
    """Rank 0's modifier raises in finalize; every rank raises, then all retry, disarmed."""
    armed = {"on": True}
    recipe: list[Modifier] = [FailsOn(failing_rank=0, hook="finalize", armed=armed)]
    session, net, optimizer = start(rank, recipe)
    train(session, net, optimizer, rank, 2)
    first: dict[str, Any] = {}
    try:
        session.finalize()
    except Exception as error:
        first = describe(error)
    first_position = session.position.value
    armed["on"] = False
    session.finalize()
    return {
        "first": first,
        "first_position": first_position,
        "position": session.position.value,
        "states": states(session),
    }


@scenario
def crash(rank: int, world: int, root: Path, options: dict[str, Any]) -> dict[str, Any]:
    """The last rank dies between agreements; the others must raise, not wait."""
    # No DDP: its gradient all-reduce would notice the dead rank before the session does.
    session, net, optimizer = start(rank, pruning(), ddp=False, agree_every=4)
    if rank == world - 1:
        train(session, net, optimizer, rank, 2)
        _write(root / f"rank{rank}.json", {"rank": rank, "outcome": "crashed"})
        os._exit(3)
    train(session, net, optimizer, rank, 8)
    return {"reached": session.global_step}


@scenario
def resume(rank: int, world: int, root: Path, options: dict[str, Any]) -> dict[str, Any]:
    """N steps straight vs k steps, rank 0 saves, fresh objects on every rank load it."""
    total, save_at = options["steps"], options["save_at"]
    session, net, optimizer = start(rank, pruning(), agree_every=2)
    train(session, net, optimizer, rank, total)
    session.finalize()
    straight = digest(unwrap(net))

    session, net, optimizer = start(rank, pruning(), agree_every=2)
    train(session, net, optimizer, rank, save_at)
    checkpoint = root / "checkpoint.pt"
    if rank == 0:
        torch.save(
            {
                "session": session.state_dict(),
                "model": unwrap(net).state_dict(),
                "optimizer": optimizer.state_dict(),
            },
            checkpoint,
        )
    dist.barrier()
    saved = torch.load(checkpoint, weights_only=True)
    net = DistributedDataParallel(model(seed=99))  # fresh objects, other weights
    unwrap(net).load_state_dict(saved["model"])
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    optimizer.load_state_dict(saved["optimizer"])
    places = count_agreements()
    session = Session()
    session.load_state_dict(saved["session"])
    session.initialize(
        model=net, optimizer=optimizer, recipe=pruning(), wrap_optimizer=True, agree_every=2
    )
    train(session, net, optimizer, rank, total - save_at)
    session.finalize()
    return {
        "straight": straight,
        "resumed": digest(unwrap(net)),
        "agreements": places,
        "states": states(session),
    }


@scenario
def resume_other(rank: int, world: int, root: Path, options: dict[str, Any]) -> dict[str, Any]:
    """Rank 1 resumes from a checkpoint taken one step later than rank 0's."""
    session, net, optimizer = start(rank, pruning(), agree_every=2)
    train(session, net, optimizer, rank, 2)
    early = session.state_dict()
    train(session, net, optimizer, rank, 2)
    late = session.state_dict()
    fresh = Session()
    fresh.load_state_dict(late if rank == 1 else early)
    net = DistributedDataParallel(model())
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    fresh.initialize(model=net, optimizer=optimizer, recipe=pruning(), collective_timeout=TIMEOUT_S)
    return {}


__all__ = ["SCENARIOS", "CollectiveError", "main"]
