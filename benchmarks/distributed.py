"""Lockstep cost: what the ranks' agreements add to a DDP training step.

Two ranks (gloo, CPU, spawned here) train a 784-512-512-10 MLP with
``DistributedDataParallel`` through a session with 10 no-op modifiers. Measured
side by side in one run, on every rank:

* ``agreement`` — one agreement (``Session.agree()``: a snapshot, its digest and
  one int64 all-gather), in a tight loop;
* ``step, no agreements`` and ``step, agree every step`` — a whole DDP training
  step with the five session calls, ``agree_every=None`` against ``agree_every=1``,
  in alternating blocks of steps (two sessions over one model);
* ``amortized at K`` — the agreement's cost divided by K steps, as a fraction of
  the step: the default ``agree_every=100`` is the figure to read.

Run ``python -m benchmarks.distributed`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

WIDTHS = (784, 512, 512, 10)
BATCH = 128
MODIFIERS = 10
WORLD = 2


def _rank(rank: int, root: str, rounds: int, block: int, calls: int) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from benchmarks.session_overhead import NoopModifier, mlp
    from modfsm.engine.loop.session import Session

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{Path(root) / 'rendezvous'}",
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=120),
    )
    net = DistributedDataParallel(mlp(WIDTHS))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    x = torch.randn(BATCH, WIDTHS[0], generator=torch.Generator().manual_seed(rank))
    y = torch.randint(0, WIDTHS[-1], (BATCH,), generator=torch.Generator().manual_seed(rank))

    def session(agree_every: int | None) -> Session:
        made = Session()
        made.initialize(
            model=net,
            optimizer=optimizer,
            recipe=[NoopModifier(start=0) for _ in range(MODIFIERS)],
            agree_every=agree_every,
        )
        return made

    def steps(run: Session, count: int) -> float:
        started = time.perf_counter()
        for _ in range(count):
            run.batch_start(x)
            loss = torch.nn.functional.cross_entropy(net(x), y)
            run.loss_calculated(loss)
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]  # torch leaves it unannotated
            run.optim_pre_step()
            optimizer.step()
            run.optim_post_step()
            run.batch_end()
        return (time.perf_counter() - started) / count * 1e6

    quiet, every = session(None), session(1)
    steps(quiet, block)  # warm up both
    steps(every, block)
    plain_us: list[float] = []
    agreeing_us: list[float] = []
    for round_ in range(rounds):
        order = [(quiet, plain_us), (every, agreeing_us)]
        for run, into in order if round_ % 2 == 0 else reversed(order):
            into.append(steps(run, block))
    agreement_us: list[float] = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(calls):
            quiet.agree()
        agreement_us.append((time.perf_counter() - started) / calls * 1e6)
    quiet.finalize()
    every.finalize()
    report = {
        "rank": rank,
        "step_us": statistics.median(plain_us),
        "step_agreeing_us": statistics.median(agreeing_us),
        "agreement_us": statistics.median(agreement_us),
    }
    (Path(root) / f"rank{rank}.json").write_text(json.dumps(report), encoding="utf-8")
    dist.barrier()
    # Skip torch's gloo teardown, which sometimes aborts at exit (specs/distributed.md).
    os._exit(0)


def measure(rounds: int, block: int, calls: int) -> dict[str, Any]:
    """Run both ranks; rank 0's figures plus the derived fractions."""
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as root:
        ranks = [
            context.Process(target=_rank, args=(rank, root, rounds, block, calls))
            for rank in range(WORLD)
        ]
        for process in ranks:
            process.start()
        for process in ranks:
            process.join(600)
        for process in ranks:
            if process.is_alive():
                process.kill()
        if any(process.exitcode != 0 for process in ranks):
            raise RuntimeError(f"a benchmark rank failed: {[p.exitcode for p in ranks]}")
        reports = [
            json.loads((Path(root) / f"rank{rank}.json").read_text(encoding="utf-8"))
            for rank in range(WORLD)
        ]
    first = reports[0]
    step, agreement = first["step_us"], first["agreement_us"]
    return {
        "model": "-".join(map(str, WIDTHS)) + f", batch {BATCH}, DDP on {WORLD} gloo ranks",
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "ranks": reports,
        "step_us": step,
        "step_agreeing_us": first["step_agreeing_us"],
        "agreement_us": agreement,
        "agree_every_step": (first["step_agreeing_us"] - step) / step,
        "amortized": {str(k): agreement / k / step for k in (1, 10, 100)},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a smoke run: few rounds")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    rounds, block, calls = (2, 3, 20) if args.quick else (9, 20, 200)
    figures = measure(rounds, block, calls)
    print(f"{figures['model']} ({figures['cpu_count']} CPUs, median over {rounds} rounds)")
    print(f"  DDP step, no agreements       {figures['step_us']:9.0f} us")
    print(f"  DDP step, agree every step    {figures['step_agreeing_us']:9.0f} us")
    print(f"  one agreement (tight loop)    {figures['agreement_us']:9.0f} us")
    print(f"  agreeing every step costs     {figures['agree_every_step']:9.2%} of a step")
    for k, fraction in figures["amortized"].items():
        print(f"  one agreement per {k:>3} steps   {fraction:9.3%} of a step")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
