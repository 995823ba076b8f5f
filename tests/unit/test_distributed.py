"""engine/loop/distributed.py and the session's lockstep, in one process.

The other ranks are scripted (:class:`ScriptedRanks`); tests/distributed/ runs the
same protocol over real gloo ranks.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import attrs
import pytest
import torch

from modfsm.engine import EventType
from modfsm.engine.kernel.errors import ConfigError, ConfigTypeError, IllegalTransitionError
from modfsm.engine.loop.distributed import (
    Collective,
    CollectiveError,
    RankDivergenceError,
    RankFailureError,
    Snapshot,
    agree,
    differences,
    torch_collective,
    unwrap_model,
)
from modfsm.engine.loop.session import Session
from tests.doubles import NoopModifier

Peer = Callable[[Snapshot], Snapshot]


def same(snapshot: Snapshot) -> Snapshot:
    return snapshot


@attrs.define
class Ranks:
    """A :class:`Collective` for rank 0 whose peers answer with ``peers[i](our snapshot)``.

    ``last`` is the snapshot being agreed on (``run_agree`` and the ``spy`` fixture set
    it), so the digest phase sees the peers' digests as real ranks would send them.
    """

    peers: list[Peer] = attrs.field(factory=lambda: [same])
    fail: Exception | None = None
    last: Snapshot | None = None
    calls: list[str] = attrs.field(factory=list)
    places: list[str] = attrs.field(factory=list)

    @property
    def rank(self) -> int:
        return 0

    @property
    def world_size(self) -> int:
        return 1 + len(self.peers)

    def gather_digests(self, digest: int) -> list[int]:
        self.calls.append("digests")
        if self.fail is not None:
            raise self.fail
        assert self.last is not None
        assert digest == self.last.digest()
        self.places.append(self.last.where)
        return [digest, *(peer(self.last).digest() for peer in self.peers)]

    def gather_snapshots(self, snapshot: Snapshot) -> list[Snapshot]:
        self.calls.append("snapshots")
        return [snapshot, *(peer(snapshot) for peer in self.peers)]


def run_agree(ranks: Ranks, snapshot: Snapshot, cause: BaseException | None = None) -> None:
    ranks.last = snapshot
    agree(ranks, snapshot, cause=cause)


SNAPSHOT = Snapshot(
    where="the end of batch 4 (step 4)",
    counters=(4, 4, 0),
    position="idle",
    modifiers=(("s.0", "Pruning", "started"), ("s.1", "Quant", "initialized")),
    stages=(("s", "initialized"),),
)


# --- the protocol ---------------------------------------------------------------------------------


def test_ranks_in_the_same_state_exchange_only_digests() -> None:
    ranks = Ranks(peers=[same, same])
    run_agree(ranks, SNAPSHOT)
    assert ranks.calls == ["digests"]


def test_a_rank_in_another_state_raises_a_divergence_error_naming_it() -> None:
    def started_late(s: Snapshot) -> Snapshot:
        return attrs.evolve(s, modifiers=(("s.0", "Pruning", "initialized"), s.modifiers[1]))

    ranks = Ranks(peers=[same, started_late])
    with pytest.raises(RankDivergenceError) as caught:
        run_agree(ranks, SNAPSHOT)
    assert ranks.calls == ["digests", "snapshots"]
    error = caught.value
    assert str(error) == (
        "rank 0: the ranks are out of lockstep at the end of batch 4 (step 4): rank 2 differs "
        "from rank 0 (modifier s.0 (Pruning): 'started' on ranks 0, 1, 'initialized' on "
        "rank 2). To fix, make every rank run the same recipe and report the same events (a "
        "modifier must not decide from rank-local data alone)."
    )
    assert (error.rank, error.where, error.ranks) == (0, SNAPSHOT.where, (2,))
    assert isinstance(error, RuntimeError)


def test_a_failure_on_another_rank_raises_the_same_error_here() -> None:
    def failed(s: Snapshot) -> Snapshot:
        return attrs.evolve(s, error="ValueError: disk full")

    ranks = Ranks(peers=[failed, same])
    with pytest.raises(RankFailureError) as caught:
        run_agree(ranks, SNAPSHOT)
    assert str(caught.value) == (
        "rank 0: the end of batch 4 (step 4) failed on rank 1 of 3 (rank 1: ValueError: disk "
        "full). Every rank raises this error, so none is left waiting. To fix, fix the error "
        "on the failed rank; the lifecycle call can be retried on every rank."
    )
    assert caught.value.failures == {1: "ValueError: disk full"}
    assert caught.value.__cause__ is None


def test_the_failed_rank_chains_its_own_error() -> None:
    own = ValueError("disk full")
    ranks = Ranks(peers=[lambda s: attrs.evolve(s, error=None)])
    with pytest.raises(RankFailureError) as caught:
        run_agree(ranks, attrs.evolve(SNAPSHOT, error="ValueError: disk full"), cause=own)
    # The peer reported no error: the snapshots differ, so the details were gathered.
    assert ranks.calls == ["digests", "snapshots"]
    assert caught.value.failures == {0: "ValueError: disk full"}
    assert caught.value.__cause__ is own


def test_when_every_rank_fails_the_same_way_each_raises_its_own_error() -> None:
    own = ConfigError("bad", owner="Session", field="x", value=1)
    ranks = Ranks(peers=[same, same])
    with pytest.raises(ConfigError) as caught:
        run_agree(ranks, attrs.evolve(SNAPSHOT, error="ConfigError: bad"), cause=own)
    assert caught.value is own
    assert caught.value.__notes__ == [
        "every rank (3) failed the same way at the end of batch 4 (step 4)"
    ]
    assert ranks.calls == ["digests"]


def test_a_collective_that_breaks_raises_a_collective_error() -> None:
    broken = RuntimeError("Connection closed by peer")
    ranks = Ranks(fail=broken)
    with pytest.raises(CollectiveError) as caught:
        run_agree(ranks, SNAPSHOT)
    assert str(caught.value) == (
        "rank 0: the agreement at the end of batch 4 (step 4) did not complete: Connection "
        "closed by peer. Another rank crashed, failed outside the session or fell too far "
        "behind. To fix, look for the first error in the other ranks' output (or raise the "
        "collective timeout if a rank is merely slow)."
    )
    assert caught.value.__cause__ is broken


@pytest.mark.parametrize(
    ("change", "sentence"),
    [
        ({"where": "finalize"},
         "where: 'the end of batch 4 (step 4)' on rank 0, 'finalize' on rank 1"),
        ({"counters": (5, 4, 0)}, "global_step: 4 on rank 0, 5 on rank 1"),
        ({"counters": (4, 5, 0)}, "global_batch: 4 on rank 0, 5 on rank 1"),
        ({"counters": (4, 4, 1)}, "batches_since_step: 0 on rank 0, 1 on rank 1"),
        ({"position": "stepping"}, "position: 'idle' on rank 0, 'stepping' on rank 1"),
        ({"stages": (("s", "finalizing"),)},
         "stage s: 'initialized' on rank 0, 'finalizing' on rank 1"),
        ({"modifiers": (("s.0", "Pruning", "started"),)},
         "modifier s.1 (Quant): 'initialized' on rank 0, missing on rank 1"),
        ({"recipe": (("s.0", "{'a': 2}"),)},
         "arguments of s.0: missing on rank 0, \"{'a': 2}\" on rank 1"),
    ],
)  # fmt: skip
def test_each_field_that_differs_is_named_with_its_values_per_rank(
    change: dict[str, Any], sentence: str
) -> None:
    other = attrs.evolve(SNAPSHOT, **change)
    assert differences([SNAPSHOT, other]) == [sentence]
    assert other.digest() != SNAPSHOT.digest()
    assert attrs.evolve(SNAPSHOT).digest() == SNAPSHOT.digest()


def test_the_digest_does_not_depend_on_the_process() -> None:
    code = (
        "from modfsm.engine.loop.distributed import Snapshot; "
        "print(Snapshot('w', (1, 2, 3), 'idle', (('a', 'T', 's'),), (('x', 'y'),)).digest())"
    )
    seen = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={"PYTHONHASHSEED": seed, "PYTHONPATH": "."},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert len(seen) == 1


# --- the session ---------------------------------------------------------------------------------


def loop(session: Session, batches: int, stepping: Callable[[int], bool] = lambda b: True) -> None:
    for b in range(batches):
        session.batch_start()
        if stepping(b):
            session.optim_pre_step()
            session.optim_post_step()
        session.batch_end()


def lockstep_session(ranks: Ranks, **kwargs: Any) -> Session:
    session = Session()
    session.initialize(recipe=[NoopModifier(start=2, end=5)], distributed=ranks, **kwargs)
    return session


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> list[Snapshot]:
    """Feed each snapshot the session agrees on to the Ranks collective, and record them."""
    import modfsm.engine.loop.session

    seen: list[Snapshot] = []
    real = agree

    def recording(collective: Collective, snapshot: Snapshot, **kwargs: Any) -> None:
        seen.append(snapshot)
        if isinstance(collective, Ranks):
            collective.last = snapshot
        real(collective, snapshot, **kwargs)

    monkeypatch.setattr(modfsm.engine.loop.session, "agree", recording)
    return seen


def test_the_session_agrees_after_initialize_each_k_steps_and_at_finalize(
    spy: list[Snapshot],
) -> None:
    ranks = Ranks()
    session = lockstep_session(ranks, agree_every=3, batches_per_step=2)
    loop(session, 14, stepping=lambda b: b % 2 == 1)  # 7 optimizer steps
    session.finalize()
    assert ranks.places == [
        "initialize",
        "initialize of stage 'default_stage'",
        "the end of batch 6 (step 3)",
        "the end of batch 12 (step 6)",
        "finalize of stage 'default_stage'",
    ]
    assert [entry[0] for entry in spy[0].recipe] == ["default_stage.0"]
    assert "'start': 2" in spy[0].recipe[0][1]
    assert all(snapshot.recipe == () for snapshot in spy[1:])
    assert spy[0].modifiers == (("default_stage.0", "NoopModifier", ""),)
    assert spy[2].modifiers == (("default_stage.0", "NoopModifier", "started"),)
    assert spy[2].counters == (3, 6, 0)
    assert spy[-1].stages == (("default_stage", "applied"),)


def test_agree_every_none_leaves_only_the_stage_boundaries(spy: list[Snapshot]) -> None:
    ranks = Ranks()
    session = lockstep_session(ranks, agree_every=None)
    loop(session, 5)
    session.agree()
    session.finalize()
    assert ranks.places == [
        "initialize",
        "initialize of stage 'default_stage'",
        "Session.agree() in batch 5 (step 5)",
        "finalize of stage 'default_stage'",
    ]


def test_a_peer_that_started_late_fails_the_batch_end_that_reaches_the_agreement(
    spy: list[Snapshot],
) -> None:
    def stuck(s: Snapshot) -> Snapshot:
        return attrs.evolve(s, modifiers=(("default_stage.0", "NoopModifier", "initialized"),))

    ranks = Ranks(peers=[same])
    session = lockstep_session(ranks, agree_every=4)
    loop(session, 3)
    ranks.peers = [stuck]
    with pytest.raises(RankDivergenceError) as caught:
        loop(session, 1)
    assert caught.value.differences == (
        "modifier default_stage.0 (NoopModifier): 'started' on rank 0, 'initialized' on rank 1",
    )
    assert session.global_step == 4  # the batch itself completed on this rank


def test_a_single_process_session_never_gathers(spy: list[Snapshot]) -> None:
    session = Session()
    session.initialize(recipe=[NoopModifier(start=0)], agree_every=1)
    loop(session, 3)
    session.agree()  # nothing to agree with
    session.finalize()
    assert spy == []
    assert session.collective is None
    hardware = session.state.hardware
    assert (hardware.rank, hardware.world_size, hardware.distributed) == (0, 1, False)


def test_agree_outside_the_run_is_rejected() -> None:
    with pytest.raises(
        IllegalTransitionError, match=r"^session.agree is not allowed on Session: it is 'created' "
    ):
        Session().agree()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"distributed": "yes"}, ConfigTypeError,
         "Session.initialize: distributed must be None, a bool or a Collective, got 'yes' "
         "(str). To fix, pass True, False or leave it unset."),
        ({"agree_every": 0}, ConfigError, "Session.agree_every must be >= 1, got 0."),
        ({"collective_timeout": None}, ConfigTypeError,
         "Session.collective_timeout must be a number of seconds, got None. To fix, pass a "
         "positive number (default 300)."),
        ({"collective_timeout": 0}, ConfigError,
         "Session.collective_timeout must be >= 0.001, got 0."),
        ({"distributed": True}, ConfigError,
         "Session.initialize: distributed=True, but torch.distributed has no process group. "
         "To fix, call torch.distributed.init_process_group(...) first (torchrun sets up its "
         "environment), or drop distributed=True."),
    ],
)  # fmt: skip
def test_bad_lockstep_settings_are_refused_and_change_nothing(
    kwargs: dict[str, Any], error: type[ConfigError], message: str
) -> None:
    session = Session()
    with pytest.raises(error) as caught:
        session.initialize(recipe=[NoopModifier()], **kwargs)
    assert str(caught.value).startswith(message)
    ((field, value),) = kwargs.items()
    assert (caught.value.owner, caught.value.field, caught.value.value) == (
        "Session",
        field,
        value,
    )
    assert session.position.value == "created"
    assert session.collective is None


def test_a_data_parallel_model_is_unwrapped_for_the_modifiers() -> None:
    inner = torch.nn.Sequential(torch.nn.Linear(2, 2))
    wrapped = torch.nn.DataParallel(inner)
    assert unwrap_model(wrapped) == (inner, "dp")
    assert unwrap_model(inner) == (inner, None)
    session = Session()
    session.initialize(model=wrapped, recipe=[])
    assert session.state.model is inner
    assert session.state.hardware.distributed_strategy == "dp"
    # The model's device: on a machine with one GPU, DataParallel has moved it to cuda:0.
    device = str(inner[0].weight.device)
    assert session.state.hardware.device == device
    assert device == "cpu" or torch.cuda.is_available()


def test_an_object_named_like_a_wrapper_is_not_unwrapped() -> None:
    class DistributedDataParallel:
        module = "not a model"

    fake = DistributedDataParallel()
    assert unwrap_model(fake) == (fake, None)


def test_a_single_process_run_imports_nothing_distributed() -> None:
    code = (
        "import sys\n"
        "from modfsm.engine.loop.session import Session\n"
        "from tests.doubles import NoopModifier\n"
        "s = Session()\n"
        "s.initialize(recipe=[NoopModifier(start=0, end=2)])\n"
        "for _ in range(3):\n"
        "    s.batch_start(); s.optim_pre_step(); s.optim_post_step(); s.batch_end()\n"
        "s.finalize()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="."
    )
    assert done.stdout == "[]\n"


def test_a_batch_end_reported_through_event_counts_for_the_agreement(
    spy: list[Snapshot],
) -> None:
    ranks = Ranks()
    session = Session()
    session.initialize(recipe=[], distributed=ranks, agree_every=1)
    for kind in ("BATCH_START", "OPTIM_PRE_STEP", "OPTIM_POST_STEP", "BATCH_END"):
        session.event(EventType[kind])
    assert ranks.places[-1] == "the end of batch 1 (step 1)"


@attrs.define
class FakeDist:
    """Stands in for ``torch.distributed`` in sys.modules."""

    backend: str = "gloo"
    initialized: bool = True
    made: list[Any] = attrs.field(factory=list)

    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return self.initialized

    def get_backend(self) -> str:
        return self.backend

    def new_group(self, backend: str, timeout: Any) -> str:
        self.made.append((backend, timeout.total_seconds()))
        return "own group"

    def get_rank(self) -> int:
        return 1

    def get_world_size(self) -> int:
        return 4


@pytest.mark.parametrize("backend", ["gloo", "nccl"])
def test_the_collective_makes_a_gloo_group_with_the_session_timeout(
    monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    fake = FakeDist(backend=backend)
    monkeypatch.setitem(sys.modules, "torch.distributed", fake)
    collective = torch_collective(None, 12.5)
    assert collective is not None
    assert (collective.group, collective.timeout_s) == ("own group", 12.5)
    assert fake.made == [("gloo", 12.5)]
    assert (collective.rank, collective.world_size) == (1, 4)
    assert torch_collective(False, 12.5) is None


def test_no_process_group_means_no_collective_unless_one_is_required(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "torch.distributed", FakeDist(initialized=False))
    assert torch_collective(None, 1.0) is None
    with pytest.raises(ConfigError, match=r"distributed=True, but torch\.distributed has no"):
        torch_collective(True, 1.0)


def test_leaving_a_with_block_on_an_error_releases_the_collective(spy: list[Snapshot]) -> None:
    @attrs.define
    class Closable(Ranks):
        closed: int = 0

        def close(self) -> None:
            self.closed += 1

    ranks = Closable()
    session = Session()

    def failing_run() -> None:
        with session:
            session.initialize(recipe=[], distributed=ranks, agree_every=None)
            raise KeyError("the loop failed")

    with pytest.raises(KeyError):
        failing_run()
    assert ranks.closed == 1
    assert session.collective is None


@attrs.define
class CountingAccelerator:
    waits: int = 0

    def wait_for_everyone(self) -> None:
        self.waits += 1


def test_in_lockstep_the_stage_agreement_replaces_the_per_modifier_barriers(
    spy: list[Snapshot],
) -> None:
    alone, lockstep = CountingAccelerator(), CountingAccelerator()
    recipe = [NoopModifier(), NoopModifier()]
    Session().initialize(recipe=recipe, accelerator=alone)
    session = Session()
    session.initialize(
        recipe=[NoopModifier(), NoopModifier()], accelerator=lockstep, distributed=Ranks()
    )
    session.finalize(accelerator=lockstep)
    assert alone.waits == 2  # one per modifier, as in the reference
    assert lockstep.waits == 0
    assert all(stage.modifier_barriers is False for stage in session.stages)
    hardware = session.state.hardware
    assert (hardware.rank, hardware.world_size, hardware.distributed) == (0, 2, True)


def test_after_a_failed_run_released_its_collective_the_session_runs_alone(
    spy: list[Snapshot],
) -> None:
    @attrs.define
    class Closable(Ranks):
        def close(self) -> None:
            pass

    session = Session()
    ranks = Closable()

    def failing_run() -> None:
        with session:
            session.initialize(recipe=[NoopModifier(start=0)], distributed=ranks, agree_every=1)
            raise KeyError("the loop failed")

    with pytest.raises(KeyError):
        failing_run()
    agreed = len(ranks.places)
    loop(session, 2)  # every batch end would agree at agree_every=1: none does now
    assert session.global_step == 2
    assert len(ranks.places) == agreed


def test_agreement_points_name_unnamed_stages_by_position(spy: list[Snapshot]) -> None:
    from modfsm.engine.runtime.stage import StageModifiers

    ranks = Ranks()
    session = Session()
    session.initialize(
        recipe=[StageModifiers(modifiers=[NoopModifier()]), StageModifiers()], distributed=ranks
    )
    session.finalize()
    assert ranks.places == [
        "initialize",
        "initialize of stage 'stage_0'",
        "initialize of stage 'stage_1'",
        "finalize of stage 'stage_0'",
        "finalize of stage 'stage_1'",
    ]
    assert spy[0].stages == (("stage_0", ""), ("stage_1", ""))  # the recipe, not states
    assert spy[-1].stages == (("stage_0", "applied"), ("stage_1", "applied"))


def test_a_local_failure_is_reported_to_the_others_where_it_happened(
    spy: list[Snapshot],
) -> None:
    @attrs.define(eq=False)
    class Refuses(NoopModifier):
        def on_initialize(self, state: Any, **kwargs: Any) -> bool:
            raise ValueError(f"no disk (asked for {kwargs['size']})")

    ranks = Ranks(peers=[lambda s: attrs.evolve(s, error=None)])  # the peer succeeded
    session = Session()
    with pytest.raises(RankFailureError) as caught:
        session.initialize(recipe=[Refuses()], distributed=ranks, size=3)
    error = caught.value
    assert error.where == "initialize of stage 'default_stage'"
    assert error.failures == {0: "ValueError: no disk (asked for 3)"}
    assert isinstance(error.__cause__, ValueError)
    assert spy[-1].position == "created"
    assert spy[-1].error == "ValueError: no disk (asked for 3)"


def test_a_resumed_session_agrees_at_the_next_multiple_of_agree_every(
    spy: list[Snapshot],
) -> None:
    first = Session()
    first.initialize(recipe=[NoopModifier(start=0)], distributed=Ranks(), agree_every=3)
    loop(first, 4)
    state = first.state_dict()
    ranks = Ranks()
    resumed = Session()
    resumed.load_state_dict(state)
    resumed.initialize(recipe=[NoopModifier(start=0)], distributed=ranks, agree_every=3)
    loop(resumed, 3)
    assert ranks.places == [
        "initialize",
        "resume",
        "the end of batch 6 (step 6)",
    ]
    assert spy[-1].position == "idle"


def test_a_build_failure_on_one_rank_is_agreed_on_before_anyone_raises(
    spy: list[Snapshot],
) -> None:
    ranks = Ranks(peers=[lambda s: attrs.evolve(s, error=None)])
    with pytest.raises(RankFailureError) as caught:
        Session().initialize(recipe=[NoopModifier()], distributed=ranks, steps_per_epoch=0)
    assert caught.value.where == "initialize"
    assert caught.value.failures == {
        0: "ConfigError: Session.steps_per_epoch must be >= 1, got 0. To fix, pass a "
        "whole number >= 1."
    }
    assert isinstance(caught.value.__cause__, ConfigError)
    assert ranks.places == ["initialize"]


def test_a_retried_initialize_keeps_its_collective_unless_told_to_run_alone(
    spy: list[Snapshot],
) -> None:
    ranks = Ranks()
    session = Session()
    with pytest.raises(ConfigError):
        session.initialize(recipe=[NoopModifier()], distributed=ranks, steps_per_epoch=0)
    session.initialize(recipe=[NoopModifier()])  # distributed left unset: still in lockstep
    assert session.collective is ranks
    alone = Session()
    with pytest.raises(ConfigError):
        alone.initialize(recipe=[NoopModifier()], distributed=ranks, steps_per_epoch=0)
    alone.initialize(recipe=[NoopModifier()], distributed=False)
    assert alone.collective is None


def test_the_session_makes_its_group_with_the_collective_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeDist(backend="nccl")
    monkeypatch.setitem(sys.modules, "torch.distributed", fake)
    session = Session()
    with pytest.raises(CollectiveError):  # the fake group cannot really gather
        session.initialize(recipe=[], distributed=True, collective_timeout=7)
    assert fake.made == [("gloo", 7.0)]


def test_a_failure_on_another_rank_is_traced_as_stopped_after_every_stage(
    spy: list[Snapshot],
) -> None:
    def fails_in_stages(s: Snapshot) -> Snapshot:
        return attrs.evolve(s, error="OSError: disk") if s.where != "initialize" else s

    ranks = Ranks(peers=[fails_in_stages])
    session = Session()
    with pytest.raises(RankFailureError):
        session.initialize(recipe=[NoopModifier()], distributed=ranks, trace=True)
    assert session.trace is not None
    (failed,) = [r for r in session.trace.records if r["kind"] == "failed"]
    assert failed["stopped_at"] is None  # every stage here completed; another rank failed
    assert failed["error"].startswith(
        "RankFailureError: rank 0: initialize of stage 'default_stage' failed on rank 1"
    )
