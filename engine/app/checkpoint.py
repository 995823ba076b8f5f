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
float anywhere. What the payload must contain is the run's business
(:mod:`modfsm.engine.app.runner` checks it against the run).

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

__all__ = ["FORMAT", "MAX_BYTES", "NAME", "check_tensors", "read", "write"]

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
