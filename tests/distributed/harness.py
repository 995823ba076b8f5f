"""Run one scenario of :mod:`tests.distributed.workers` on N spawned ranks (gloo, CPU).

Each rank writes what happened to ``rank<r>.json``; :func:`run_ranks` waits for all
of them within a deadline, kills every rank still alive on the way out (a hung rank
fails the test, it never hangs the suite) and returns the results, indexed by rank.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path
from typing import Any

__all__ = ["DEADLINE_S", "run_ranks"]

#: Seconds a whole scenario may take, spawning included (each rank imports torch).
DEADLINE_S = 90.0


def run_ranks(
    scenario: str, world: int, workdir: Path, deadline_s: float = DEADLINE_S, **options: Any
) -> list[dict[str, Any]]:
    """Run ``scenario`` on ``world`` ranks; every rank's result, indexed by rank."""
    from tests.distributed.workers import main

    context = multiprocessing.get_context("spawn")
    workdir.mkdir(parents=True, exist_ok=True)
    ranks = [
        context.Process(
            target=main,
            args=(rank, world, str(workdir), scenario, options),
            name=f"{scenario}-rank{rank}",
            daemon=True,
        )
        for rank in range(world)
    ]
    started = time.monotonic()
    try:
        for process in ranks:
            process.start()
        for process in ranks:
            process.join(max(0.0, deadline_s - (time.monotonic() - started)))
        hung = [process.name for process in ranks if process.is_alive()]
        assert not hung, f"{scenario}: ranks still running after {deadline_s:g} s: {hung}"
    finally:
        for process in ranks:
            if process.is_alive():
                process.kill()
                process.join(5)
    results = []
    for rank, process in enumerate(ranks):
        path = workdir / f"rank{rank}.json"
        assert path.exists(), f"{scenario}: rank {rank} exited ({process.exitcode}) with no result"
        results.append(json.loads(path.read_text(encoding="utf-8")))
    return results
