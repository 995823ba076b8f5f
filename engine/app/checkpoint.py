"""Checkpoint files of ``modfsm run``: written atomically, sealed with a digest, checked on load.

A checkpoint file is::

    modfsm.run/2\\n
    <sha256 of the payload, 64 hex digits>\\n
    <the payload: torch.save of a dict>

:func:`write` writes it to a temporary file, flushes and fsyncs it, and renames
it over the target, so a crash leaves the previous checkpoint intact.
:func:`read` reads at most :data:`MAX_BYTES`, refuses a file whose header or
digest does not match (any flipped or missing byte), and only then unpickles
the payload, with ``torch.load(weights_only=True)``. It never suggests loading
a file unsafely. :func:`check_tensors` refuses a payload holding a non-finite
float anywhere; :func:`tensor_misfit`, :func:`optimizer_misfit`,
:func:`evaluations_misfit` and :func:`is_plain` check its parts.
:func:`modfsm.engine.app.runner.load_checkpoint` applies them against the run.

Every refusal is a :class:`~modfsm.engine.kernel.errors.ConfigError` whose
message names the file, what is wrong and the fix.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import torch

from modfsm.engine.kernel.errors import ConfigError

__all__ = [
    "FORMAT",
    "MAX_BYTES",
    "NAME",
    "check_tensors",
    "evaluations_misfit",
    "is_plain",
    "optimizer_misfit",
    "read",
    "tensor_misfit",
    "write",
]

FORMAT: Final = "modfsm.run/2"
NAME: Final = "checkpoint.pt"
MAX_BYTES: Final = 1 << 30
"""The largest checkpoint read (1 GiB; the built-in run's is about 0.5 MB)."""

_MAGIC: Final = FORMAT.encode() + b"\n"
_DIGEST_LINE: Final = 65  # 64 hex digits and a newline
_OWNER: Final = "modfsm run"


def _refuse(path: Path, problem: str, fix: str) -> ConfigError:
    return ConfigError(
        f"{_OWNER}: checkpoint {str(path)!r} {problem}. To fix, {fix}.",
        owner=_OWNER,
        field="checkpoint",
        value=str(path),
    )


def write(path: Path, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically, sealed with its digest."""
    buffer = io.BytesIO()
    torch.save(dict(payload), buffer)
    body = buffer.getvalue()
    digest = hashlib.sha256(body).hexdigest().encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("wb") as handle:
        handle.write(_MAGIC + digest + b"\n" + body)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    if hasattr(os, "O_DIRECTORY"):
        directory = os.open(path.parent, os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def read(path: Path) -> dict[str, Any]:
    """The payload of the checkpoint at ``path``, once its header and digest check out.

    Raises:
        ConfigError: unreadable, too large, not a modfsm run checkpoint (or an older
            format), damaged (the digest differs), or a payload that is not a dict.
    """
    intact = "resume from an intact checkpoint, or start again with --overwrite"
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except OSError as error:
        raise _refuse(path, f"cannot be read ({error.strerror})", intact) from None
    if len(data) > MAX_BYTES:
        raise _refuse(path, f"is larger than {MAX_BYTES:,} bytes", intact)
    if not data.startswith(_MAGIC):
        if data.startswith(b"PK\x03\x04"):  # a bare torch.save file: format modfsm.run/1
            problem = "was written by an older modfsm (unsealed, format modfsm.run/1)"
            fix = "start the run again with --overwrite"
        else:
            problem = f"is not a modfsm run checkpoint (it does not start with {FORMAT!r})"
            fix = "point --checkpoint at a folder written by modfsm run"
        raise _refuse(path, problem, fix)
    header = data[len(_MAGIC) : len(_MAGIC) + _DIGEST_LINE]
    body = data[len(_MAGIC) + _DIGEST_LINE :]
    if hashlib.sha256(body).hexdigest().encode() + b"\n" != header:
        raise _refuse(
            path,
            f"is damaged: the digest of its {len(body):,} bytes of payload does not match the "
            "one written with it (a changed, missing or added byte)",
            intact,
        )
    try:
        saved = torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types; its text advises unsafe loading
        raise _refuse(
            path,
            f"holds a payload that torch cannot load safely ({type(error).__name__})",
            intact,
        ) from None
    if not isinstance(saved, dict):
        raise _refuse(path, f"holds a {type(saved).__name__}, not a dict", intact)
    return saved


def check_tensors(path: Path, saved: Mapping[str, Any]) -> None:
    """Refuse ``saved`` if any floating tensor or float in it is NaN or infinite.

    Raises:
        ConfigError: naming the first such value by its path in the payload.
    """
    for where, value in _leaves(saved, ""):
        bad = False
        if isinstance(value, torch.Tensor):
            bad = value.is_floating_point() and not bool(torch.isfinite(value).all())
        elif isinstance(value, float):
            bad = value != value or value in (float("inf"), float("-inf"))
        if bad:
            raise _refuse(
                path,
                f"holds a NaN or infinite value at {where}",
                "resume from a checkpoint of a run whose weights stayed finite",
            )


def _leaves(value: Any, where: str) -> Iterator[tuple[str, Any]]:
    """Every leaf of nested dicts, lists and tuples, with its path (``model / fc1.weight``)."""
    stack: list[tuple[str, Any]] = [(where, value)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, Mapping):
            stack.extend((f"{where} / {key}" if where else str(key), item)
                         for key, item in value.items())  # fmt: skip
        elif isinstance(value, list | tuple):
            stack.extend((f"{where} / {i}", item) for i, item in enumerate(value))
        else:
            yield where, value


# --- checks of what a payload holds; each returns the problem, or "" when it fits ---------


_ADAM_STATE: Final = frozenset({"step", "exp_avg", "exp_avg_sq"})


def is_plain(value: Any) -> bool:
    """True for nested dicts, lists and tuples of str, int, float, bool and None only
    (values that ``==`` compares without surprises, unlike tensors)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif item is not None and not isinstance(item, str | int | float):
            return False
    return True


def tensor_misfit(saved: Any, expected: Mapping[str, torch.Tensor]) -> str:
    """What keeps ``saved`` from being loaded as ``expected`` (empty when it fits)."""
    if not isinstance(saved, Mapping):
        return f"a {type(saved).__name__}, not a dict of tensors"
    if set(saved) != set(expected):
        missing, extra = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
        return f"missing {missing}, unexpected {extra}"
    for name, tensor in expected.items():
        value = saved[name]
        if not isinstance(value, torch.Tensor):
            return f"{name} is a {type(value).__name__}, not a tensor"
        if value.shape != tensor.shape or value.dtype != tensor.dtype:
            return (
                f"{name} is {value.dtype} {tuple(value.shape)}, expected {tensor.dtype} "
                f"{tuple(tensor.shape)}"
            )
    return ""


def optimizer_misfit(
    saved: Any, optimizer: torch.optim.Optimizer, lr: float, steps_done: int
) -> str:
    """What keeps ``saved`` from being this run's Adam state after ``steps_done`` steps
    (empty when it fits).

    Every parameter has a state once a step was taken (all of them get gradients),
    and each state counts ``steps_done`` steps. Shapes and dtypes are checked on the
    saved tensors themselves: torch's ``load_state_dict`` casts them to the
    parameter's dtype without a word.
    """
    if not isinstance(saved, Mapping) or set(saved) != {"state", "param_groups"}:
        return "not the state_dict of a torch optimizer"
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    state = saved["state"]
    if not isinstance(state, Mapping):
        return "its per-parameter state is not a dict"
    expected = set(range(len(parameters))) if steps_done else set()
    if set(state) != expected:
        return (
            f"it holds state for parameters {sorted(map(str, state))}, but after "
            f"{steps_done} steps every one of the {len(parameters)} has one"
            if steps_done
            else "it holds per-parameter state, but no step was taken"
        )
    for index, entry in state.items():
        parameter = parameters[index]
        if not isinstance(entry, Mapping) or set(entry) != _ADAM_STATE:
            return f"the state of parameter {index} is not Adam's {sorted(_ADAM_STATE)}"
        if not (
            isinstance(entry["step"], torch.Tensor)
            and entry["step"].numel() == 1
            and float(entry["step"]) == steps_done
        ):
            return f"parameter {index} counts {_short(entry['step'])} steps, not {steps_done}"
        for key, value in entry.items():
            if not isinstance(value, torch.Tensor) or value.dtype != parameter.dtype:
                return f"{key} of parameter {index} is not a {parameter.dtype} tensor"
            if key != "step" and value.shape != parameter.shape:
                return (
                    f"{key} of parameter {index} has shape {tuple(value.shape)}, the "
                    f"parameter {tuple(parameter.shape)}"
                )
    groups = optimizer.state_dict()["param_groups"]  # this run's Adam, not yet loaded
    if not is_plain(saved["param_groups"]):
        return "its hyperparameters (param_groups) hold tensors or objects"
    if saved["param_groups"] != groups:
        given = saved["param_groups"] if isinstance(saved["param_groups"], list | tuple) else []
        saved_lr = [g.get("lr") for g in given if isinstance(g, Mapping)]
        if saved_lr and saved_lr != [lr] * len(groups):
            return f"its learning rate is {_short(saved_lr[0])}, the run's is {lr}"
        return "its hyperparameters (param_groups) are not the run's Adam's"
    try:
        optimizer.load_state_dict(dict(saved))
    except Exception as error:  # torch raises ValueError, KeyError, TypeError, ...
        return f"torch refuses it ({type(error).__name__}: {_first_line(error)})"
    return ""


def evaluations_misfit(saved: Any, steps_done: int) -> str:
    if not isinstance(saved, list | tuple):
        return f"a {type(saved).__name__}, not a list"
    for entry in saved:
        if not (
            isinstance(entry, list | tuple)
            and len(entry) == 3
            and isinstance(entry[0], int)
            and not isinstance(entry[0], bool)
            and 0 <= entry[0] <= steps_done
            and isinstance(entry[1], str)
            and isinstance(entry[2], float)
            and 0.0 <= entry[2] <= 1.0
        ):
            return f"{_short(entry)} is not (step <= {steps_done}, label, accuracy in [0, 1])"
    return ""


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
