"""Hostile checkpoints: ``modfsm run --resume`` refuses every damaged or crafted checkpoint
with exit 2 and one message naming it, and leaves the checkpoint and the trace as they were.

The checkpoint is a real one (a short run stopped at step 5). Damage breaks its seal; a
crafted payload is sealed again (as an attacker, or a buggy tool, would) and must fail
the checks of what it holds.
"""

from __future__ import annotations

import copy
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modfsm.engine.app import checkpoint, runner
from tests.fuzz.oracle import EXAMPLES, assert_refused, invoke, unchanged
from tests.fuzz.strategies import damaged_bytes

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "tests" / "recipes" / "run" / "short.yaml"
STEPS = ["--steps", "120"]


def _saved_run() -> tuple[bytes, dict[str, Any]]:
    with tempfile.TemporaryDirectory() as folder:
        config = runner.RunConfig(recipe=RECIPE, steps=120, checkpoint=Path(folder), stop_at=25)
        runner.run(config)  # really trained: the pruning window opens at step 20
        path = Path(folder) / checkpoint.NAME
        return path.read_bytes(), checkpoint.read(path)


FILE, PAYLOAD = _saved_run()


def resume(data: bytes, surface: str) -> None:
    """Resume from a checkpoint holding ``data``: refused, and nothing on disk changes."""
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / checkpoint.NAME).write_bytes(data)
        (Path(folder) / "run.jsonl").write_text('{"kind": "header"}\n')
        argv = ["run", str(RECIPE), *STEPS, "--checkpoint", folder, "--resume",
                "--trace", str(Path(folder) / "run.jsonl")]  # fmt: skip
        with unchanged(Path(folder), surface):
            outcome = invoke(argv, surface)
        assert_refused(outcome, argv)
        assert f"checkpoint '{folder}/{checkpoint.NAME}'" in outcome.err or (
            "the checkpoint in" in outcome.err
        ), outcome.err


def test_the_intact_checkpoint_resumes() -> None:
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / checkpoint.NAME).write_bytes(FILE)
        outcome = invoke(["run", str(RECIPE), *STEPS, "--checkpoint", folder, "--resume"],
                         "checkpoints")  # fmt: skip
        assert outcome.code == 0, outcome
        assert outcome.trained


def test_200_single_byte_flips_are_all_refused() -> None:
    chooser = random.Random(20261204)
    positions = sorted(chooser.sample(range(len(FILE)), 200))
    for position in positions:
        damaged = bytearray(FILE)
        damaged[position] ^= chooser.randrange(1, 256)
        resume(bytes(damaged), "checkpoint byte flips")


@settings(max_examples=EXAMPLES, suppress_health_check=[HealthCheck.too_slow])
@given(data=damaged_bytes(FILE))
def test_damaged_bytes_are_refused(data: bytes) -> None:
    if data != FILE:
        resume(data, "checkpoints")


def _tensor_paths(value: Any, where: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        return [p for key, item in value.items() for p in _tensor_paths(item, (*where, key))]
    if isinstance(value, list | tuple):
        return [p for i, item in enumerate(value) for p in _tensor_paths(item, (*where, i))]
    return [where] if isinstance(value, torch.Tensor) else []


def _leaf_paths(value: Any, where: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        return [where, *(p for k, item in value.items() for p in _leaf_paths(item, (*where, k)))]
    if isinstance(value, list | tuple):
        return [where, *(p for i, item in enumerate(value) for p in _leaf_paths(item, (*where, i)))]
    return [where]


def _get(payload: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        payload = payload[key]
    return payload


def _set(payload: Any, path: tuple[Any, ...], value: Any) -> None:
    parent = _get(payload, path[:-1])
    if isinstance(parent, tuple):
        grand = _get(payload, path[:-2])
        items = list(parent)
        items[path[-1]] = value
        grand[path[-2]] = tuple(items)
    else:
        parent[path[-1]] = value


def _delete(payload: Any, path: tuple[Any, ...]) -> None:
    parent = _get(payload, path[:-1])
    if isinstance(parent, dict | list):
        del parent[path[-1]]
    else:
        _set(payload, path[:-1], tuple(v for i, v in enumerate(parent) if i != path[-1]))


FLOAT_TENSORS = [p for p in _tensor_paths(PAYLOAD) if _get(PAYLOAD, p).is_floating_point()]
SHAPED = [p for p in FLOAT_TENSORS if _get(PAYLOAD, p).dim() > 0]
MAPS = [p for p in _leaf_paths(PAYLOAD) if isinstance(_get(PAYLOAD, p), dict) and p]
KEYED = [(*p, k) for p in [(), *MAPS] for k in _get(PAYLOAD, p)]
ODD_VALUES: list[Any] = [None, True, -1, 2**70, 1.5, float("nan"), "x", [], {}, (), b"\x00",
              torch.tensor(1.0), torch.zeros(3, dtype=torch.int64)]  # fmt: skip

def _is_harmless(path: tuple[Any, ...]) -> bool:
    """A change that keeps the checkpoint resumable by this very run: an accuracy's label."""
    return len(path) == 3 and path[0] == "evaluations" and path[2] == 1


@st.composite
def crafted(draw: st.DrawFn) -> tuple[str, tuple[Any, ...], Any]:
    """One thing wrong with the payload: (kind, where, what), applied by :func:`apply`."""
    kind = draw(st.sampled_from(["nan", "inf", "shape", "dtype", "drop", "add", "value"]))
    if kind in ("nan", "inf"):
        path = draw(st.sampled_from(FLOAT_TENSORS))
        return kind, path, draw(st.integers(0, _get(PAYLOAD, path).numel() - 1))
    if kind in ("shape", "dtype"):
        return kind, draw(st.sampled_from(SHAPED if kind == "shape" else FLOAT_TENSORS)), None
    if kind == "drop":
        return kind, draw(st.sampled_from([p for p in KEYED if not _is_harmless(p)])), None
    if kind == "add":
        path = draw(st.sampled_from([(), *[p for p in MAPS if p[0] != "session" or len(p) < 3]]))
        return kind, path, draw(st.sampled_from(ODD_VALUES))
    path = draw(st.sampled_from([p for p in KEYED if not _is_harmless(p)]))
    old = _get(PAYLOAD, path)
    return kind, path, draw(st.sampled_from([v for v in ODD_VALUES if not _same(v, old)]))


def apply(change: tuple[str, tuple[Any, ...], Any]) -> dict[str, Any]:
    """A copy of the real payload with ``change`` made."""
    kind, path, what = change
    payload = copy.deepcopy(PAYLOAD)
    if kind in ("nan", "inf"):
        tensor = _get(payload, path).clone()
        tensor.view(-1)[what] = float("nan") if kind == "nan" else float("-inf")
        _set(payload, path, tensor)
    elif kind == "shape":
        tensor = _get(payload, path)
        _set(payload, path, tensor.reshape(-1)[: max(tensor.numel() - 1, 1)].clone())
    elif kind == "dtype":
        _set(payload, path, _get(payload, path).to(torch.float64))
    elif kind == "drop":
        _delete(payload, path)
    elif kind == "add":
        _get(payload, path)["zz_extra"] = what
    else:
        _set(payload, path, what)
    return payload


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return False
    return type(a) is type(b) and a == b


def _sealed(payload: dict[str, Any]) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / checkpoint.NAME
        checkpoint.write(path, payload)
        return path.read_bytes()


@settings(max_examples=EXAMPLES, suppress_health_check=[HealthCheck.too_slow])
@given(change=crafted())
def test_a_crafted_payload_with_a_valid_seal_is_refused(
    change: tuple[str, tuple[Any, ...], Any],
) -> None:
    resume(_sealed(apply(change)), "checkpoints")


CRAFTED: dict[str, Callable[[dict[str, Any]], None]] = {
    "settings None": lambda p: p.__setitem__("settings", None),
    "no optimizer": lambda p: p.pop("optimizer"),
    "step past the session's": lambda p: p.__setitem__("steps_done", p["steps_done"] + 1),
    "weights all NaN": lambda p: p["model"].__setitem__(
        "fc1.weight", torch.full_like(p["model"]["fc1.weight"], float("nan"))
    ),
    "optimizer state of another shape": lambda p: p["optimizer"]["state"][0].__setitem__(
        "exp_avg", torch.zeros(3)
    ),
    "optimizer learning rate changed": lambda p: p["optimizer"]["param_groups"][0].__setitem__(
        "lr", 10.0
    ),
    "a mask of another shape": lambda p: _set(
        p, _first_mask(p), torch.ones(2, 2, dtype=_get(p, _first_mask(p)).dtype)
    ),
    "steps_done past the most --steps": lambda p: p.__setitem__("steps_done", 2**70),
    "steps_done past this run's --steps": lambda p: p.__setitem__("steps_done", 500),
    "a session that steps every 2**70 batches": lambda p: p["session"]["config"].__setitem__(
        "batches_per_step", 2**70
    ),
    "a session with an epoch length": lambda p: p["session"]["config"].__setitem__(
        "steps_per_epoch", 7
    ),
    "a modifier argument as a tensor that equals it": lambda p: p["session"]["modifiers"][
        "sparsity_stage.0"
    ]["arguments"].__setitem__("leave_enabled", torch.tensor(1.0)),
    "session counters as text": lambda p: p["session"]["counters"].__setitem__(
        "global_step", "25"
    ),
}


def _first_mask(payload: dict[str, Any]) -> tuple[Any, ...]:
    return next(p for p in _tensor_paths(payload["session"], ("session",)) if "mask" in str(p))


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_named_crafted_payloads_are_refused(name: str) -> None:
    payload = copy.deepcopy(PAYLOAD)
    CRAFTED[name](payload)
    resume(_sealed(payload), "checkpoints")
