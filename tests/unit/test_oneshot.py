"""``modfsm oneshot``'s model files (``write_compressed``/``read_compressed``) and its checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
import torch

from modfsm.engine import ConfigError
from modfsm.engine.app.oneshot import OneshotConfig, read_compressed, write_compressed
from modfsm.modifiers.quantization.args import parse_args
from modfsm.modifiers.quantization.fake import dequantize, quantize, scale_shape, weight_qparams


def quantized(model: torch.nn.Module, name: str, raw: dict[str, Any]) -> dict[str, Any]:
    """Put layer ``name`` of ``model`` on the grid of ``raw`` and return its export entry."""
    args = parse_args("weights", raw, activations=False)
    layer = model.get_submodule(name)
    assert isinstance(layer, torch.nn.Linear)
    weight = layer.weight.data
    scale, zero_point = weight_qparams(weight, args)
    q = quantize(weight, scale, zero_point, args)
    weight.copy_(dequantize(q, scale, zero_point, args))
    shape = scale_shape(weight, args)
    return {"weight": q, "weight_scale": scale.reshape(shape),
            "weight_zero_point": zero_point.reshape(shape),
            "scheme": {"weights": args.to_dict()}}  # fmt: skip


SCHEMES = [
    {"num_bits": 4, "symmetric": True, "strategy": "group", "group_size": 16},
    {"num_bits": 4, "symmetric": False, "strategy": "group", "group_size": 8},
    {"num_bits": 8, "symmetric": True, "strategy": "channel"},
    {"num_bits": 3, "symmetric": False, "strategy": "tensor"},
]


@pytest.mark.parametrize("raw", SCHEMES, ids=lambda r: f"{r['num_bits']}b-{r['strategy']}")
def test_a_written_model_reads_back_to_exactly_the_compressed_weights(
    raw: dict[str, Any], tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    exports = {"0": quantized(model, "0", raw)}
    written = write_compressed(model, exports, "recipe: text\n", tmp_path / "out")
    assert [p.name for p in written] == ["model.safetensors", "recipe.yaml"]
    assert (tmp_path / "out" / "recipe.yaml").read_text() == "recipe: text\n"
    weights = read_compressed(tmp_path / "out")
    assert set(weights) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    for name, value in model.state_dict().items():
        assert torch.equal(weights[name], value), name
    if raw["num_bits"] <= 4:  # two weights a byte
        from safetensors import safe_open

        with safe_open(str(tmp_path / "out" / "model.safetensors"), framework="pt") as handle:
            assert handle.get_tensor("0.weight_packed").numel() == (32 * 7 + 1) // 2


def test_a_folder_not_written_by_oneshot_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    (tmp_path / "other").mkdir()
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other" / "model.safetensors"))
    with pytest.raises(ConfigError, match="was not written by modfsm oneshot"):
        read_compressed(tmp_path / "other")
    with pytest.raises(ConfigError, match="cannot be read"):
        read_compressed(tmp_path / "missing")


def test_a_failed_write_leaves_no_folder_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import safetensors.torch

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(OSError, match="No space left"):
        write_compressed(torch.nn.Linear(4, 4), {}, "", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"calib": 0}, "--calib 0: must be a whole number from 1 to 4096"),
        ({"eval_sequences": 10**6}, "--eval-sequences 1000000: must be a whole number"),
        ({"seq_len": 1}, "--seq-len 1: must be a whole number from 2 to 4096"),
        ({"seq_len": 300}, "the built-in LM reads at most 256 tokens"),
        ({"pipeline": "fast"}, "--pipeline 'fast': unknown. To fix, use one of basic, sequential"),
        ({"output": Path(".")}, "already exists, and a compressed model is never written over"),
        ({"output": Path("FILE/out")}, "its folder cannot be written: "),
        ({"trace": Path("FILE/t.jsonl")}, "t.jsonl': cannot be written: "),
    ],
)
def test_every_bad_option_is_refused_before_any_work_naming_it_and_the_fix(
    change: dict[str, Any], message: str, tmp_path: Path
) -> None:
    (tmp_path / "FILE").write_text("a file, not a folder")
    change = {k: tmp_path / v if isinstance(v, Path) and str(v).startswith("FILE") else v
              for k, v in change.items()}  # fmt: skip
    with pytest.raises(ConfigError, match="To fix") as caught:
        OneshotConfig(**change).check()
    assert message in str(caught.value)


def test_the_summary_names_each_layers_weight_format_inputs_and_the_kv_cache() -> None:
    from modfsm.engine.app.oneshot import LayerRow, OneshotResult, format_summary

    def row(name: str, **changes: Any) -> LayerRow:
        fields: dict[str, Any] = {"name": name, "parameters": 100, "zeros": 50, "bits": 4,
                                      "group_size": 16, "strategy": "tensor_group"}  # fmt: skip
        return LayerRow(**{**fields, **changes})

    rows = (
        row("a", kind="fp4", inputs="fp4 tensor_group local"),
        row("b", bits=8, group_size=None, strategy="channel", inputs="int8 token"),
        row("c", bits=8, group_size=None, strategy="channel", kind="float8"),
        row("head", bits=None, group_size=None, strategy=None, zeros=0),
    )
    result = OneshotResult(
        model="m", recipe="r", modifiers=("QuantizationModifier",), pipeline="basic", calib=1,
        seq_len=8, perplexity_before=2.0, perplexity_after=2.5, layers=rows, float_bytes=400,
        compressed_bytes=100, seconds=1.0, written=(), kv_cache="fp8 keys and values",
    )  # fmt: skip
    lines = format_summary(result).splitlines()
    table = {line.split()[0]: line.split()[1:] for line in lines[5:9]}
    assert table == {
        "a": ["50.0%", "fp4*", "16", "fp4", "tensor_group", "local"],
        "b": ["50.0%", "int8", "channel", "int8", "token"],
        "c": ["50.0%", "fp8", "channel", "-"],
        "head": ["0.0%", "-", "-", "-"],
    }
    assert any(line.startswith("* fp4: FP4 E2M1 values emulated") for line in lines)
    assert "kv cache: fp8 keys and values" in lines
    plain = attrs.evolve(result, layers=rows[1:], kv_cache="")
    assert not any(
        line.startswith(("* fp4", "kv cache")) for line in format_summary(plain).splitlines()
    )
