"""modfsm.modifiers.targets: which layers ``targets`` and ``ignore`` select."""

from __future__ import annotations

import pytest
import torch

from modfsm.engine import ConfigError, ConfigTypeError
from modfsm.modifiers.targets import check_names, layers, matches_any, resolve, select_modules


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU())
        self.conv = torch.nn.Conv1d(1, 2, 3)
        self.norm = torch.nn.LayerNorm(8)  # a 1-D weight: not a layer here
        self.head = torch.nn.Linear(8, 2)


@pytest.mark.parametrize(
    ("targets", "ignore", "chosen"),
    [
        (["__ALL__"], [], ["encoder.0", "conv", "head"]),
        (["Linear"], [], ["encoder.0", "head"]),
        (["Conv1d"], [], ["conv"]),
        (["head"], [], ["head"]),
        (["head.weight"], [], ["head"]),
        (["re:encoder\\..*"], [], ["encoder.0"]),
        (["re:.*weight"], [], ["encoder.0", "conv", "head"]),
        (["head", "encoder.0"], [], ["encoder.0", "head"]),  # model order, not target order
        (["__ALL__"], ["Conv1d"], ["encoder.0", "head"]),
        (["Linear"], ["re:enc.*"], ["head"]),
    ],
)
def test_targets_select_layers_in_model_order(
    targets: list[str], ignore: list[str], chosen: list[str]
) -> None:
    assert list(resolve("T", Net(), targets, ignore)) == chosen


def test_only_weights_of_two_or_more_dimensions_are_layers() -> None:
    assert list(layers(Net())) == ["encoder.0", "conv", "head"]


def test_a_target_that_matches_nothing_lists_the_layers() -> None:
    with pytest.raises(ConfigError, match=r"'hed' matches no layer.*encoder\.0 \(Linear\)"):
        resolve("T", Net(), ["hed"], [])


def test_ignoring_every_target_is_an_error() -> None:
    with pytest.raises(ConfigError, match="removes every target layer"):
        resolve("T", Net(), ["Linear"], ["Linear"])


@pytest.mark.parametrize("value", [3, [""], ["a", 1], None])
def test_names_must_be_strings(value: object) -> None:
    with pytest.raises(ConfigTypeError, match="must be a name or a list of names"):
        check_names("T", "targets", value)


def test_a_bad_regex_is_caught_when_checked() -> None:
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        check_names("T", "targets", "re:(unclosed")


def test_a_single_name_becomes_a_list() -> None:
    assert check_names("T", "targets", "Linear") == ["Linear"]


@pytest.mark.parametrize(
    ("target", "chosen"),
    [
        ("__ALL_PRUNABLE__", ["encoder.0", "conv", "head"]),  # llm-compressor: Linear, Conv1-3d
        ("__ALL_QUANTIZABLE__", ["encoder.0", "head"]),  # llm-compressor: Linear, Conv2d, Conv3d
    ],
)
def test_the_reference_special_targets_select_their_layer_types(
    target: str, chosen: list[str]
) -> None:
    assert list(resolve("T", Net(), [target], [])) == chosen


def test_ignoring_everything_with_a_special_target_is_an_error() -> None:
    with pytest.raises(ConfigError, match="removes every target layer"):
        resolve("T", Net(), ["Linear"], ["__ALL_PRUNABLE__"])


def test_select_modules_reads_the_same_entries_over_every_module() -> None:
    net = Net()
    assert list(select_modules("T", net, ["Sequential"])) == ["encoder"]
    chosen = list(select_modules("T", net, ["re:enc.*", "norm"]))
    assert chosen == ["encoder", "encoder.0", "encoder.1", "norm"]
    assert list(select_modules("T", net, ["__ALL_PRUNABLE__"])) == ["encoder.0", "conv", "head"]
    assert list(select_modules("T", net, ["re:.*"])) == [n for n, _ in net.named_modules() if n]


def test_a_module_target_that_matches_nothing_lists_the_module_types() -> None:
    with pytest.raises(
        ConfigError, match=r"'dec' matches no module.*types are: Conv1d, LayerNorm, Linear, ReLU"
    ):
        select_modules("T", Net(), ["dec"])


def test_matches_any_reads_an_ignore_list_for_one_module() -> None:
    net = Net()
    assert matches_any(["re:.*head"], "head", net.head)
    assert matches_any(["Conv1d"], "conv", net.conv)
    assert not matches_any(["Linear", "norm"], "conv", net.conv)
