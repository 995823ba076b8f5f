"""``modfsm.modifiers.smoothing.mappings``: recipe mappings checked, resolved, applied."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from modfsm.engine import ConfigError
from modfsm.modifiers.smoothing.mappings import (
    LLAMA_SMOOTHQUANT_MAPPINGS,
    ResolvedMapping,
    apply_smoothing,
    parse_mappings,
    resolve_mappings,
)
from tests.one_shot_support import batches, tiny_llama

transformers = pytest.importorskip("transformers")

QKV = ("re:.*q_proj", "re:.*k_proj", "re:.*v_proj")


# --- parse_mappings -------------------------------------------------------------------------


def test_the_list_form_and_the_reference_dict_form_parse_to_the_same_pairs() -> None:
    as_lists = [[list(QKV), "re:.*input_layernorm"], [["re:.*up_proj"], "re:.*post_ln"]]
    as_dicts = [
        {"balance_layers": list(QKV), "smooth_layer": "re:.*input_layernorm"},
        {"balance_layers": ["re:.*up_proj"], "smooth_layers": ["re:.*post_ln"]},
    ]
    expected = ((QKV, "re:.*input_layernorm"), (("re:.*up_proj",), "re:.*post_ln"))
    assert parse_mappings("M", "mappings", as_lists) == expected
    assert parse_mappings("M", "mappings", as_dicts) == expected
    assert parse_mappings("M", "mappings", [("fc1", "ln")]) == ((("fc1",), "ln"),)


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ({"balance_layers": ["a"], "smooth_layer": "b"}, "must be a list of pairs"),
        ("re:.*q_proj", "must be a list of pairs"),
        ([], "must not be empty"),
        ([[["a"], "b", "c"]], "pair [balance, smooth]"),
        ([[[], "b"]], "non-empty list"),
        ([[["a"], 3]], "one pattern"),
        ([[["a"], ["b", "c"]]], "one pattern"),
        ([{"balance_layers": ["a"], "smooth_layer": "b", "alpha": 1}], "unknown: ['alpha']"),
        ([{"balance_layers": ["a"]}], "exactly the keys"),
        ([[["re:(unclosed"], "b"]], "not a valid regular expression"),
    ],
)
def test_a_badly_shaped_mapping_is_refused_naming_the_field(value: Any, said: str) -> None:
    with pytest.raises(ConfigError, match="To fix") as caught:
        parse_mappings("SmoothQuantModifier", "mappings", value)
    assert said in str(caught.value)
    assert caught.value.owner == "SmoothQuantModifier"
    assert caught.value.field == "mappings"


# --- resolve_mappings -------------------------------------------------------------------------


def test_the_llama_default_gives_two_mappings_per_decoder_layer_within_that_layer() -> None:
    model = tiny_llama()
    found = resolve_mappings("M", model, LLAMA_SMOOTHQUANT_MAPPINGS, [])
    expected = []
    for i in range(2):
        expected += [
            (f"model.layers.{i}.input_layernorm",
             tuple(f"model.layers.{i}.self_attn.{p}_proj" for p in "qkv")),
            (f"model.layers.{i}.post_attention_layernorm",
             (f"model.layers.{i}.mlp.gate_proj", f"model.layers.{i}.mlp.up_proj")),
        ]  # fmt: skip
    assert [(m.smooth_name, m.balance_names) for m in found] == expected
    modules = dict(model.named_modules())
    for mapping in found:
        assert mapping.smooth is modules[mapping.smooth_name]
        assert mapping.balance == tuple(modules[n] for n in mapping.balance_names)


def test_a_pattern_that_matches_nothing_is_one_error_naming_it_and_similar_layers() -> None:
    mappings = [(("re:.*q_projection", "re:.*k_proj"), "re:.*input_layernorm")]
    with pytest.raises(ConfigError) as caught:
        resolve_mappings("SmoothQuantModifier", tiny_llama(), mappings, [])
    message = str(caught.value)
    assert "'re:.*q_projection' matches no module" in message
    assert "model.layers.0.self_attn.q_proj" in message
    assert caught.value.value == "re:.*q_projection"


def gqa_llama() -> Any:
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def test_v_proj_to_o_proj_is_skipped_under_grouped_query_attention_only() -> None:
    mappings = [(("re:.*o_proj",), "re:.*v_proj")]
    full = resolve_mappings("M", tiny_llama(), mappings, [])
    assert [m.balance_names for m in full] == [
        ("model.layers.0.self_attn.o_proj",),
        ("model.layers.1.self_attn.o_proj",),
    ]
    assert resolve_mappings("M", gqa_llama(), mappings, []) == []


def test_a_mapping_with_an_ignored_smooth_or_balance_layer_is_left_out_whole() -> None:
    ignore = ["model.layers.0.input_layernorm", "re:model.layers.1.mlp.up_proj"]
    found = resolve_mappings("M", tiny_llama(), LLAMA_SMOOTHQUANT_MAPPINGS, ignore)
    assert [m.smooth_name for m in found] == [
        "model.layers.0.post_attention_layernorm",
        "model.layers.1.input_layernorm",
    ]


def test_a_layer_with_the_same_role_in_two_mappings_is_refused() -> None:
    mappings = [(("re:.*q_proj",), "re:.*input_layernorm"), (("re:.*q_proj",), "re:.*v_proj")]
    with pytest.raises(ConfigError, match=r"'model\.layers\.0\.self_attn\.q_proj' is the balance"):
        resolve_mappings("M", tiny_llama(), mappings, [])
    chained = [(("re:.*v_proj$",), "re:.*input_layernorm$"), (("re:.*o_proj$",), "re:.*v_proj$")]
    found = resolve_mappings("M", tiny_llama(), chained, [])  # v_proj: balance, then smooth
    assert {m.smooth_name for m in found if ".layers.0." in m.smooth_name} == {
        "model.layers.0.input_layernorm",
        "model.layers.0.self_attn.v_proj",
    }


def test_a_balance_layer_that_is_not_linear_is_refused() -> None:
    mappings = [(("re:.*post_attention_layernorm",), "re:.*input_layernorm")]
    with pytest.raises(ConfigError, match="not a Linear"):
        resolve_mappings("M", tiny_llama(), mappings, [])


def test_a_block_without_its_own_balance_layer_never_borrows_another_blocks() -> None:
    blocks = torch.nn.ModuleDict(
        {
            "a": torch.nn.ModuleDict({"norm": torch.nn.LayerNorm(4), "fc": torch.nn.Linear(4, 2)}),
            "b": torch.nn.ModuleDict({"norm": torch.nn.LayerNorm(4), "out": torch.nn.Linear(4, 2)}),
        }
    )
    found = resolve_mappings("M", blocks, [(("re:.*fc",), "re:.*norm")], [])
    assert [(m.smooth_name, m.balance_names) for m in found] == [("a.norm", ("a.fc",))]


# --- apply_smoothing ----------------------------------------------------------------------------


def test_smoothing_a_llama_leaves_its_logits_unchanged() -> None:
    model = tiny_llama()
    data = batches(2)
    with torch.no_grad():
        before = torch.cat([model(**b).logits for b in data])
        generator = torch.Generator().manual_seed(1)
        for mapping in resolve_mappings("M", model, LLAMA_SMOOTHQUANT_MAPPINGS, []):
            apply_smoothing(mapping, torch.rand(mapping.width, generator=generator) * 9 + 0.1)
        after = torch.cat([model(**b).logits for b in data])
    assert not torch.equal(before, after)  # rounding differs: the weights did change
    assert (after - before).abs().max() <= 1e-4 * before.abs().max()


def test_a_linear_smooth_layer_has_its_rows_and_bias_divided() -> None:
    torch.manual_seed(0)
    first, second = torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)
    weight, bias, columns = first.weight.clone(), first.bias.clone(), second.weight.clone()
    scales = torch.tensor([1.0, 2.0, 4.0, 0.5])
    x = torch.randn(5, 3)
    with torch.no_grad():
        before = second(first(x))
        apply_smoothing(ResolvedMapping("first", first, ("second",), (second,)), scales)
        after = second(first(x))
    torch.testing.assert_close(first.weight, weight / scales[:, None])
    torch.testing.assert_close(first.bias, bias / scales)
    torch.testing.assert_close(second.weight, columns * scales)
    torch.testing.assert_close(after, before)


@pytest.mark.parametrize("scales", [torch.ones(3), torch.tensor([1.0, 0.0, 1.0, 1.0]),
                                    torch.tensor([1.0, float("inf"), 1.0, 1.0])])  # fmt: skip
def test_scales_of_the_wrong_size_or_not_positive_and_finite_are_refused(
    scales: torch.Tensor,
) -> None:
    norm, fc = torch.nn.LayerNorm(4), torch.nn.Linear(4, 2)
    weight = fc.weight.clone()
    with pytest.raises(ValueError, match="positive finite"):
        apply_smoothing(ResolvedMapping("norm", norm, ("fc",), (fc,)), scales)
    assert torch.equal(fc.weight, weight)
