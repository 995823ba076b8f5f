"""Lockstep across ranks: the session's agreement protocol over ``torch.distributed``.

Theory of operation
-------------------
Under ``torch.distributed`` every rank runs its own session and its own copy of
the modifiers. Their lifecycles must move together: a modifier that starts on
one rank and not on another, or a rank that fails inside a lifecycle call while
the others wait for it, is how distributed runs hang or silently diverge.

A session with a :class:`Collective` therefore stops at *agreement points*:
after each stage's ``initialize`` and ``finalize`` (the only stage boundaries a
session has), after a resume, every ``agree_every`` optimizer steps (at the
``batch_end`` that reaches the step) and whenever the loop calls
:meth:`modfsm.engine.loop.session.Session.agree`. At each point every rank builds a
:class:`Snapshot` (where it is, its counters, its grammar position, every
modifier's and stage's lifecycle state, and the error it hit, if any) and
:func:`agree` runs a two-phase exchange:

1. every rank contributes a 64-bit digest of its snapshot (one small tensor
   ``all_gather``); if all digests are equal and no rank failed, that is all;
2. otherwise every rank (they all saw the same digests) gathers the whole
   snapshots and raises the same error: :class:`RankFailureError` naming the
   ranks that failed and their errors, else :class:`RankDivergenceError` listing,
   field by field, which ranks differ in which modifier.

The lifecycle call that failed on one rank has therefore completed (or failed)
on every rank before anyone raises: no rank is left blocked in a barrier. A
rank that never reaches the agreement (it crashed, or failed outside the
session) makes the others raise :class:`CollectiveError` when its peer
connection closes or, at the latest, when the session's collective timeout
runs out.

Nothing here imports ``torch``: :func:`torch_collective` uses
``torch.distributed`` only when the program already imported and initialized it.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, Final, Protocol, runtime_checkable

import attrs

from modfsm.engine.kernel.errors import ConfigError, LifecycleError
from modfsm.engine.model.state import Hardware

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "Collective",
    "CollectiveError",
    "DistributedError",
    "RankDivergenceError",
    "RankFailureError",
    "Snapshot",
    "TorchCollective",
    "agree",
    "differences",
    "hardware",
    "torch_collective",
    "unwrap_model",
]

#: Seconds a rank waits at an agreement point for the others (the session's default).
DEFAULT_TIMEOUT_S: Final = 300.0

_WRAPPERS: Final = {
    "DistributedDataParallel": "ddp",
    "DataParallel": "dp",
}


class DistributedError(LifecycleError, RuntimeError):
    """The ranks of a distributed run are not in lockstep (root of the errors below).

    Attributes:
        rank: the rank that raised.
        where: the agreement point (``"initialize stage 'default'"``, ``"step 100"``, ...).
    """

    def __init__(self, message: str, *, rank: int, where: str) -> None:
        super().__init__(message)
        self.rank = rank
        self.where = where


class RankFailureError(DistributedError):
    """A lifecycle call failed on some ranks; every rank raises this one error.

    Attributes:
        failures: rank -> the error it hit (``"TypeName: message"``), for each failed rank.
    """

    def __init__(self, message: str, *, rank: int, where: str, failures: dict[int, str]) -> None:
        super().__init__(message, rank=rank, where=where)
        self.failures = dict(failures)


class RankDivergenceError(DistributedError):
    """The ranks reached an agreement point in different lifecycle states.

    Attributes:
        ranks: the ranks whose snapshot differs from rank 0's.
        differences: one sentence per field that differs, naming the values per rank.
    """

    def __init__(
        self,
        message: str,
        *,
        rank: int,
        where: str,
        ranks: Sequence[int],
        differences: Sequence[str],
    ) -> None:
        super().__init__(message, rank=rank, where=where)
        self.ranks = tuple(ranks)
        self.differences = tuple(differences)


class CollectiveError(DistributedError):
    """An agreement could not complete: a peer left, crashed or timed out."""


@attrs.frozen
class Snapshot:
    """What one rank reports at an agreement point.

    Attributes:
        where: the agreement point.
        counters: ``(global_step, global_batch, batches_since_step)``.
        position: the session's position in the step grammar.
        modifiers: ``(id, type name, lifecycle state)`` of each modifier, in order.
        stages: ``(label, state)`` of each stage, in order.
        recipe: ``(id, arguments repr)`` of each modifier; only at initialize.
        error: ``"TypeName: message"`` if this rank failed here, else None.
    """

    where: str
    counters: tuple[int, int, int]
    position: str
    modifiers: tuple[tuple[str, str, str], ...]
    stages: tuple[tuple[str, str], ...]
    recipe: tuple[tuple[str, str], ...] = ()
    error: str | None = None

    def digest(self) -> int:
        """A signed 64-bit digest, equal on two ranks exactly when their snapshots are."""
        text = repr(attrs.astuple(self, recurse=False)).encode("utf-8")
        return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big", signed=True)


@runtime_checkable
class Collective(Protocol):
    """The two collectives an agreement needs; every rank must call them in the same order.

    :class:`TorchCollective` implements it over ``torch.distributed``; pass your own
    to ``Session.initialize(distributed=...)`` for another launcher or for tests.
    """

    @property
    def rank(self) -> int:
        """This process's rank."""
        ...

    @property
    def world_size(self) -> int:
        """How many ranks take part."""
        ...

    def gather_digests(self, digest: int) -> list[int]:
        """Every rank's digest, indexed by rank."""
        ...

    def gather_snapshots(self, snapshot: Snapshot) -> list[Snapshot]:
        """Every rank's snapshot, indexed by rank."""
        ...


@attrs.define
class TorchCollective:
    """:class:`Collective` over a ``torch.distributed`` process group.

    Attributes:
        group: the session's own ``gloo`` group: agreements need no GPU tensor under
            NCCL, and wait ``timeout_s`` at most whatever the default group's timeout.
        timeout_s: the group's timeout, for error messages.
    """

    group: Any
    timeout_s: float | None
    _rank: int = attrs.field(alias="rank")
    _world_size: int = attrs.field(alias="world_size")

    @property
    def rank(self) -> int:
        """This process's rank."""
        return self._rank

    @property
    def world_size(self) -> int:
        """How many ranks take part."""
        return self._world_size

    def gather_digests(self, digest: int) -> list[int]:
        """All-gather one int64 per rank."""
        import torch  # already imported: torch_collective found torch.distributed loaded

        mine = torch.tensor([digest], dtype=torch.int64)
        gathered = [torch.zeros(1, dtype=torch.int64) for _ in range(self._world_size)]
        torch.distributed.all_gather(gathered, mine, group=self.group)
        return [int(value.item()) for value in gathered]

    def close(self) -> None:
        """Destroy the group (the session calls it after its last agreement).

        Gloo's threads must not outlive the interpreter (a process that exits with a
        live group can abort); a peer still waiting on this rank gets a closed
        connection at once instead of waiting out the timeout.
        """
        import torch

        if self.group is not None:
            group, self.group = self.group, None
            torch.distributed.destroy_process_group(group)

    def gather_snapshots(self, snapshot: Snapshot) -> list[Snapshot]:
        """All-gather the snapshots as plain tuples (pickled by torch)."""
        import torch

        gathered: list[Any] = [None] * self._world_size
        torch.distributed.all_gather_object(
            gathered, attrs.astuple(snapshot, recurse=False), group=self.group
        )
        return [Snapshot(*fields) for fields in gathered]


def torch_collective(distributed: bool | None, timeout_s: float) -> TorchCollective | None:
    """The collective for this process, or None for a single-process run.

    Args:
        distributed: None to follow ``torch.distributed`` (used when the program
            initialized a process group), True to require it, False to ignore it.
        timeout_s: how long an agreement waits for the other ranks.

    Raises:
        ConfigError: ``distributed=True`` but no process group is initialized.

    Every rank must call this at the same point: it creates a ``gloo`` group with
    ``timeout_s`` (``destroy_process_group()`` destroys it with the others).
    """
    dist = sys.modules.get("torch.distributed")
    ready = dist is not None and dist.is_available() and dist.is_initialized()
    if distributed is False or (distributed is None and not ready):
        return None
    if not ready:
        raise ConfigError(
            "Session.initialize: distributed=True, but torch.distributed has no process "
            "group. To fix, call torch.distributed.init_process_group(...) first (torchrun "
            "sets up its environment), or drop distributed=True.",
            owner="Session",
            field="distributed",
            value=True,
        )
    assert dist is not None  # for mypy: ready implies it
    group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
    return TorchCollective(
        group=group,
        timeout_s=timeout_s,
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
    )


def unwrap_model(model: Any) -> tuple[Any, str | None]:
    """The module a data-parallel wrapper holds, and the wrapper's strategy name.

    Modifiers attach hooks and masks to the underlying module, whose submodule
    names are the user's (``fc1``, not ``module.fc1``); the wrapper's forward runs
    them all the same.
    """
    strategy = _WRAPPERS.get(type(model).__name__)
    if strategy is not None and _is_torch_wrapper(model):
        return model.module, strategy
    return model, None


def _is_torch_wrapper(model: Any) -> bool:
    parallel = sys.modules.get("torch.nn.parallel")
    kinds = tuple(
        kind
        for kind in (
            getattr(parallel, "DistributedDataParallel", None),
            getattr(parallel, "DataParallel", None),
        )
        if isinstance(kind, type)
    )
    return bool(kinds) and isinstance(model, kinds)


def hardware(collective: Collective | None, model: Any, strategy: str | None) -> Hardware:
    """Where the run executes: ranks from ``collective`` (or a single process)."""
    device = _device(model)
    if collective is None:
        return Hardware(
            device=device,
            rank=0,
            world_size=1,
            local_rank=0,
            local_world_size=1,
            distributed=False,
            distributed_strategy=strategy,
        )
    return Hardware(
        device=device,
        rank=collective.rank,
        world_size=collective.world_size,
        local_rank=_env_int("LOCAL_RANK"),
        local_world_size=_env_int("LOCAL_WORLD_SIZE"),
        distributed=True,
        distributed_strategy=strategy,
    )


def _device(model: Any) -> str | None:
    parameters = getattr(model, "parameters", None)
    if not callable(parameters):
        return None
    first = next(iter(parameters()), None)
    return None if first is None else str(first.device)


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() else None


def agree(
    collective: Collective,
    snapshot: Snapshot,
    *,
    cause: BaseException | None = None,
) -> None:
    """Run the agreement protocol (module docstring) for ``snapshot``.

    Args:
        collective: how to reach the other ranks.
        snapshot: this rank's report; its ``error`` says whether it failed here.
        cause: this rank's own exception, chained to the error it raises.

    Raises:
        RankFailureError: some rank failed (every rank raises it).
        RankDivergenceError: the snapshots differ (every rank raises it).
        CollectiveError: the exchange itself failed (a peer left or timed out).
    """
    rank = collective.rank
    digests = _exchange(collective, snapshot, lambda: collective.gather_digests(snapshot.digest()))
    if all(digest == digests[0] for digest in digests) and snapshot.error is None:
        return
    if all(digest == digests[0] for digest in digests):
        # Equal digests, equal snapshots: every rank failed, the same way.
        if cause is not None:
            cause.add_note(
                f"every rank ({collective.world_size}) failed the same way at {snapshot.where}"
            )
            raise cause
        snapshots = [snapshot] * collective.world_size
    else:
        snapshots = _exchange(collective, snapshot, lambda: collective.gather_snapshots(snapshot))
    failures = {r: s.error for r, s in enumerate(snapshots) if s.error is not None}
    if failures:
        listed = "; ".join(f"rank {r}: {error}" for r, error in failures.items())
        raise RankFailureError(
            f"rank {rank}: {snapshot.where} failed on {_ranks(failures)} of "
            f"{collective.world_size} ({listed}). Every rank raises this error, so none is "
            "left waiting. To fix, fix the error on the failed rank; the lifecycle call can "
            "be retried on every rank.",
            rank=rank,
            where=snapshot.where,
            failures=failures,
        ) from cause
    found = differences(snapshots)
    reference = snapshots[0]
    odd = [r for r, s in enumerate(snapshots) if s != reference]
    raise RankDivergenceError(
        f"rank {rank}: the ranks are out of lockstep at {snapshot.where}: {_ranks(odd)} "
        f"{'differs' if len(odd) == 1 else 'differ'} from rank 0 ({'; '.join(found)}). "
        "To fix, make every rank run the same recipe and report the same events (a "
        "modifier must not decide from rank-local data alone).",
        rank=rank,
        where=snapshot.where,
        ranks=odd,
        differences=found,
    ) from cause


def _exchange(collective: Collective, snapshot: Snapshot, call: Callable[[], Any]) -> Any:
    try:
        return call()
    except Exception as error:
        timeout = getattr(collective, "timeout_s", None)
        within = "" if timeout is None else f" within {timeout:g} s"
        raise CollectiveError(
            f"rank {collective.rank}: the agreement at {snapshot.where} did not complete"
            f"{within}: {error}. Another rank crashed, failed outside the session or fell "
            "too far behind. To fix, look for the first error in the other ranks' output "
            "(or raise the collective timeout if a rank is merely slow).",
            rank=collective.rank,
            where=snapshot.where,
        ) from error


def differences(snapshots: Sequence[Snapshot]) -> list[str]:
    """One sentence per field of ``snapshots`` that is not equal on every rank."""
    found: list[str] = []
    fields: dict[str, list[Any]] = {
        "where": [s.where for s in snapshots],
        "global_step": [s.counters[0] for s in snapshots],
        "global_batch": [s.counters[1] for s in snapshots],
        "batches_since_step": [s.counters[2] for s in snapshots],
        "position": [s.position for s in snapshots],
    }
    for name, values in fields.items():
        _differ(found, name, values)
    _keyed(found, "modifier", [{m[0]: (m[1], m[2]) for m in s.modifiers} for s in snapshots])
    _keyed(found, "stage", [dict(s.stages) for s in snapshots])
    _keyed(found, "arguments of", [dict(s.recipe) for s in snapshots])
    return found


def _keyed(found: list[str], kind: str, tables: Sequence[dict[str, Any]]) -> None:
    keys: list[str] = []
    for table in tables:
        keys += [key for key in table if key not in keys]
    for key in keys:
        values = [table.get(key) for table in tables]
        if any(isinstance(value, tuple) for value in values):  # modifiers: (type, state)
            types = {value[0] for value in values if value is not None}
            label = f"{kind} {key} ({'/'.join(sorted(types))})"
            values = [None if value is None else value[1] for value in values]
        else:
            label = f"{kind} {key}"
        _differ(found, label, values)


def _differ(found: list[str], name: str, values: Sequence[Any]) -> None:
    if all(value == values[0] for value in values):
        return
    groups: dict[str, list[int]] = {}
    for rank, value in enumerate(values):
        groups.setdefault("missing" if value is None else repr(value), []).append(rank)
    found.append(f"{name}: " + ", ".join(f"{text} on {_ranks(r)}" for text, r in groups.items()))


def _ranks(ranks: Sequence[int] | dict[int, Any]) -> str:
    listed = list(ranks)
    return ("rank " if len(listed) == 1 else "ranks ") + ", ".join(str(r) for r in listed)
