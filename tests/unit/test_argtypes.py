"""modfsm.engine.config.argtypes: recipe values checked against field annotations."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, Optional, TypeVar

import attrs
import pytest

from modfsm.engine import Modifier, State
from modfsm.engine.config.argtypes import describe, field_annotations, mismatch

T = TypeVar("T")


@pytest.mark.parametrize(
    ("annotation", "fits", "fails"),
    [
        (bool, [True, False], [1, 0, "true", None]),
        (int, [0, -3, 2**70], [True, 1.0, "1", None]),
        (float, [0.5, 1, -2], [True, "0.5", None]),
        (str, ["", "W8A8"], [1, None, ["a"]]),
        (None, [None], [0, "", False]),
        (type(None), [None], [0]),
        (Any, [None, 1, "x", [1], {"a": 1}], []),
        (object, [None, 1, "x"], []),
        (int | None, [None, 3], [True, 2.5]),
        (Optional[float], [None, 1, 1.5], ["1.5", False]),  # noqa: UP045  # Optional on purpose
        (str | list[str], ["a", ["a", "b"], []], [1, ["a", 1], None]),
        (list[int], [[], [1, 2]], [[1, True], (1, 2.0), "12", {"a": 1}]),
        (list, [[], [1, "a"]], ["ab", 1]),
        (tuple[int, ...], [[], [1, 2], (3,)], [[1, "a"]]),
        (tuple[int, str], [[1, "a"], (1, "a")], [[1], [1, "a", 2], ["a", 1]]),
        (dict[str, float], [{}, {"a": 1, "b": 0.5}], [{"a": "x"}, {1: 1.0}, ["a"]]),
        (dict, [{}, {"a": [1]}], [[], "a"]),
        (Sequence[str], [["a"], ("a",)], ["abc", [1]]),
        (Mapping[str, Any], [{"a": None}], [{1: 1}, []]),
        (Literal["W8A8", "W4A16"], ["W8A8"], ["W8A16", 8, None]),
        (Literal[1, True], [1, True], [1.0, False]),
        (list[dict[str, list[int]]], [[{"a": [1]}]], [[{"a": [1, "x"]}]]),
    ],
)
def test_values_fit_the_annotations_they_should(
    annotation: Any, fits: list[Any], fails: list[Any]
) -> None:
    for value in fits:
        assert mismatch(value, annotation) is None, (value, annotation)
    for value in fails:
        assert mismatch(value, annotation) is not None, (value, annotation)


class Custom:
    pass


@pytest.mark.parametrize("annotation", [Custom, T, set[int], frozenset, complex, "Nope"])
def test_annotations_it_does_not_understand_are_not_checked(annotation: Any) -> None:
    for value in (None, 1, "x", [1], {"a": 1}):
        assert mismatch(value, annotation) is None


def test_a_failing_item_is_named() -> None:
    found = mismatch({"g": {"bits": [4, "8"]}}, dict[str, dict[str, list[int]]])
    assert found is not None
    assert found.explain() == "item ['g']['bits'][1] is '8' (str), not int"
    union = mismatch(["a", 2], str | list[str] | None)
    assert union is not None
    assert union.explain() == "item [1] is 2 (int), not str"
    whole = mismatch(3, str | list[str])
    assert whole is not None
    assert (whole.where, whole.explain()) == ("", "")


@pytest.mark.parametrize(
    ("annotation", "shown"),
    [
        (float, "float"),
        (str | list[str], "str | list[str]"),
        (Optional[int], "int | None"),  # noqa: UP045  # Optional on purpose
        (dict[str, Any], "dict[str, Any]"),
        (tuple[int, ...], "tuple[int, ...]"),
        (Literal["a", 1], "Literal['a', 1]"),
        (Sequence[str], "Sequence[str]"),
    ],
)
def test_annotations_are_described_as_written(annotation: Any, shown: str) -> None:
    assert describe(annotation) == shown


@attrs.define(eq=False)
class Annotated(Modifier):
    ratio: float = 0.5
    names: list[str] = attrs.field(factory=list)
    _private: int = 0
    converted: int = attrs.field(default=0, converter=int)
    hidden: int = attrs.field(default=0, init=False)

    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        return True


def test_field_annotations_are_resolved_by_init_name() -> None:
    annotations = field_annotations(Annotated)
    assert annotations["ratio"] is float
    assert annotations["names"] == list[str]
    assert annotations["private"] is int  # the field _private is the argument private
    assert annotations["start"] == float | None  # inherited from Modifier
    assert "converted" not in annotations  # its converter sees the value first
    assert "hidden" not in annotations


def test_an_annotation_that_does_not_resolve_is_skipped_not_an_error() -> None:
    @attrs.define(eq=False)
    class Unresolvable(Modifier):
        ghost: NotDefinedAnywhere = None  # type: ignore[name-defined]  # noqa: F821  # on purpose
        ratio: float = 0.5

        def on_initialize(self, state: State, **kwargs: Any) -> bool:
            return True

    annotations = field_annotations(Unresolvable)
    assert "ghost" not in annotations
    assert annotations["ratio"] is float


def test_a_class_that_is_not_an_attrs_class_has_no_annotations_to_check() -> None:
    assert field_annotations(Custom) == {}
