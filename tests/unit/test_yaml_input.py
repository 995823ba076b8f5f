"""engine/config/yaml_input.py: recipe YAML is read within bounds, as plain data, or refused
with one message that says where and what (and never with a traceback)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from modfsm.engine.config import yaml_input
from modfsm.engine.config.recipe import Recipe, RecipeError
from modfsm.engine.config.yaml_input import MAX_BYTES, MAX_DEPTH, MAX_NODES, YamlRefused, load


def refused(text: str) -> YamlRefused:
    with pytest.raises(YamlRefused) as caught:
        load(text)
    return caught.value


def test_plain_data_reads_as_safe_load_reads_it() -> None:
    text = "a: 1\nb: [x, 2.5, true, null]\nc: {d: e}\n'1': quoted\nbase: &b {k: v}\nm:\n  <<: *b\n"
    assert load(text) == yaml.safe_load(text)
    assert load("") is None


def test_nesting_deeper_than_the_bound_is_refused_before_anything_recurses() -> None:
    assert load("[" * MAX_DEPTH + "]" * MAX_DEPTH) is not None
    error = refused("a:\n  b: " + "[" * 500 + "]" * 500)
    assert (error.where, error.message) == (
        "line 2",
        f"mappings and lists nest more than {MAX_DEPTH} deep. To fix, flatten the recipe "
        "(real recipes nest about 6 deep).",
    )
    assert isinstance(refused("[" * 100_000), YamlRefused)  # no RecursionError


def test_an_alias_bomb_is_refused_quickly_and_small() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    started = time.perf_counter()
    error = refused("\n".join(lines))
    assert time.perf_counter() - started < 2
    assert error.message.startswith(f"its aliases expand to more than {MAX_NODES:,} values")
    # below the bound, aliases are fine
    assert load("x: &x [1, 2]\ny: [*x, *x]\n") == {"x": [1, 2], "y": [[1, 2], [1, 2]]}


def test_a_recursive_alias_is_refused() -> None:
    error = refused("a: &a [1, *a]\n")
    assert error.message == (
        "an alias refers to the mapping or list that contains it, so it never ends. To fix, "
        "remove the recursive alias."
    )


@pytest.mark.parametrize(
    ("text", "where", "key"),
    [
        ("1: x\n", "line 1", "'1' is not a string (it reads as !!int)"),
        ("a:\n  null: x\n", "line 2", "'null' is not a string (it reads as !!null)"),
        ("? [a, b]\n: x\n", "line 1", "'SequenceNode' is not a string (it reads as !!seq)"),
        ("a:\n  ? {b: c}\n  : x\n", "line 2", "'MappingNode' is not a string (it reads as !!map)"),
    ],
)
def test_keys_that_are_not_strings_are_refused(text: str, where: str, key: str) -> None:
    error = refused(text)
    assert error.where == where
    assert error.message.startswith(f"the key {key}. To fix, use names as keys")


@pytest.mark.parametrize(
    ("text", "tag"),
    [
        ("a: !!set {x, y}\n", "!!set"),
        ("a: !!omap [x: 1]\n", "!!omap"),
        ("a: !!binary aGk=\n", "!!binary"),
        ("a: 2001-12-14\n", "!!timestamp"),
        ("a: !mine x\n", "!mine"),
        ("a: !!python/name:os.system ''\n", "!!python/name:os.system"),
    ],
)
def test_tags_beyond_plain_data_are_refused(text: str, tag: str) -> None:
    assert refused(text).message.startswith(f"the tag {tag} is not plain data.")


def test_a_key_written_twice_is_refused_with_both_lines() -> None:
    error = refused("a: 1\nb: 2\na: 3\n")
    assert (error.where, error.message) == (
        "line 3",
        "the key 'a' appears twice in one mapping (first on line 1); YAML would silently keep "
        "only the last. To fix, rename or merge them.",
    )


def test_a_file_that_is_not_utf8_names_the_line_and_the_byte(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("a: 1\nname: caf\xe9\n".encode("latin-1"))
    with pytest.raises(YamlRefused) as caught:
        yaml_input.read_file(path)
    assert (caught.value.where, caught.value.message) == (
        "line 2",
        "byte 0xe9 at offset 14 is not UTF-8. To fix, save the recipe as UTF-8 text.",
    )


def test_a_file_over_the_bound_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_bytes(b"# " + b"x" * (MAX_BYTES + 10))
    with pytest.raises(YamlRefused, match=r"larger than 1,048,576 bytes"):
        yaml_input.read_file(path)
    with pytest.raises(YamlRefused, match=r"longer than 1,048,576 characters"):
        load("#" * (MAX_BYTES + 1))


def test_recipes_report_the_refusals_as_one_problem(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(RecipeError) as caught:
        Recipe.load(path)
    assert str(caught.value) == (
        f"recipe {path} has 1 problem:\n  - line 1: byte 0xff at offset 0 is not UTF-8. To fix, "
        "save the recipe as UTF-8 text."
    )
    with pytest.raises(RecipeError, match=r"it is a folder, not a file. To fix"):
        Recipe.load(tmp_path)
    with pytest.raises(RecipeError, match=r"line 1: the key '1' is not a string"):
        Recipe.load("1: x\n")
