"""engine/app/checkpoint.py: sealed checkpoint files, refused whole when anything is off."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
import torch

from modfsm.engine.app import checkpoint
from modfsm.engine.kernel.errors import ConfigError


def test_a_written_checkpoint_reads_back_equal(tmp_path: Path) -> None:
    path = tmp_path / "sub" / checkpoint.NAME
    checkpoint.write(path, {"a": torch.arange(3.0), "b": [1, "x"]})
    assert path.read_bytes().startswith(b"modfsm.run/2\n")
    got = checkpoint.read(path)
    assert torch.equal(got["a"], torch.arange(3.0))
    assert got["b"] == [1, "x"]
    assert not list(path.parent.glob(".*.tmp"))


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "is not a modfsm run checkpoint (it does not start with 'modfsm.run/2')"),
        (b"PK\x03\x04rest", "was written by an older modfsm (unsealed, format modfsm.run/1)"),
        (b"modfsm.run/2\n" + b"0" * 64 + b"\npayload", "is damaged: the digest of its 7 bytes"),
    ],
)
def test_a_file_that_is_not_sealed_right_is_refused_naming_it(
    tmp_path: Path, data: bytes, problem: str
) -> None:
    path = tmp_path / checkpoint.NAME
    path.write_bytes(data)
    with pytest.raises(ConfigError) as caught:
        checkpoint.read(path)
    assert str(caught.value).startswith(f"modfsm run: checkpoint '{path}' {problem}")
    assert "weights_only" not in str(caught.value)


def test_a_sealed_payload_torch_cannot_load_safely_is_refused_without_torchs_advice(
    tmp_path: Path,
) -> None:
    path = sealed(tmp_path / checkpoint.NAME, b"not a torch file at all")
    with pytest.raises(ConfigError) as caught:
        checkpoint.read(path)
    message = str(caught.value)
    assert "holds a payload that torch cannot load safely" in message
    assert "weights_only" not in message
    assert "\n" not in message


def sealed(path: Path, body: bytes) -> Path:
    """``body`` with a right header and digest, as :func:`checkpoint.write` seals it."""
    path.write_bytes(b"modfsm.run/2\n" + hashlib.sha256(body).hexdigest().encode() + b"\n" + body)
    return path


def test_a_sealed_payload_that_is_not_a_dict_is_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    torch.save([1, 2], buffer)
    path = sealed(tmp_path / checkpoint.NAME, buffer.getvalue())
    with pytest.raises(ConfigError, match="holds a list, not a dict"):
        checkpoint.read(path)


def test_non_finite_values_are_named_by_their_place(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"holds a NaN or infinite value at model / w"):
        checkpoint.check_tensors(tmp_path, {"model": {"w": torch.tensor([1.0, float("nan")])}})
    with pytest.raises(ConfigError, match=r"at evaluations / 0 / 2"):
        checkpoint.check_tensors(tmp_path, {"evaluations": [(1, "x", float("inf"))]})
    checkpoint.check_tensors(tmp_path, {"ok": torch.zeros(2), "n": torch.tensor([1])})


def test_plain_values_are_told_from_tensors_and_objects() -> None:
    assert checkpoint.is_plain({"a": [1, 2.5, "x", None, True, (3,)]})
    assert not checkpoint.is_plain({"a": [torch.zeros(1)]})
    assert not checkpoint.is_plain({torch.zeros(1): 1})
    assert not checkpoint.is_plain(object())
