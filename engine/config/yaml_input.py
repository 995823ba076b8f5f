"""Reading recipe YAML within bounds: plain data only, and a clear refusal for anything else.

A recipe is small, plain data: mappings with string keys, lists, strings,
numbers, booleans and nulls. :func:`read_file` and :func:`load` accept exactly
that and refuse, each with one :class:`YamlRefused` naming where and what:

* a file over :data:`MAX_BYTES`, or bytes that are not UTF-8 (with the line);
* nesting deeper than :data:`MAX_DEPTH` (checked on the event stream, before
  anything recursive runs);
* an alias that refers to itself, or aliases that expand to more than
  :data:`MAX_NODES` values (an "alias bomb": ten lines can stand for billions);
* a tag other than the plain-data ones (``!!set``, ``!!omap``, ``!!binary``,
  timestamps, custom tags);
* a mapping key that is not a string (``1: x``, ``? [a, b]``, ``null: x``);
* a key written twice among one mapping's own keys (plain ``safe_load`` keeps
  the last one silently). Merge keys (``<<: *anchor``) work as in ``safe_load``.

Nothing in a recipe is executed: the loader is a ``yaml.SafeLoader`` subclass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import yaml

__all__ = ["MAX_BYTES", "MAX_DEPTH", "MAX_NODES", "YamlRefused", "load", "read_file"]

MAX_BYTES: Final = 1 << 20
"""The largest recipe read, in bytes (1 MiB; real recipes are a few KB)."""

MAX_DEPTH: Final = 64
"""The deepest nesting of mappings and lists (real recipes nest about 6 deep)."""

MAX_NODES: Final = 100_000
"""The most values a document may stand for once every alias is expanded."""

_TAG = "tag:yaml.org,2002:"
_PLAIN_TAGS: Final = frozenset(
    _TAG + name for name in ("map", "seq", "str", "int", "float", "bool", "null", "merge")
)


class YamlRefused(Exception):
    """YAML that is not a readable recipe: ``where`` (a line, or ``""``) and ``message``."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}" if where else message)
        self.where = where
        self.message = message


def read_file(path: Path) -> str:
    """The text of the recipe file ``path``, read within :data:`MAX_BYTES` as UTF-8.

    Raises:
        YamlRefused: too large, or not UTF-8.
        OSError: the file cannot be read (missing, a folder, no permission).
    """
    with path.open("rb") as handle:
        data = handle.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise YamlRefused(
            "",
            f"the file is larger than {MAX_BYTES:,} bytes, which no recipe needs. To fix, "
            "pass a recipe file (a few KB of YAML).",
        )
    return _decode(data)


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise YamlRefused(
            f"line {line}",
            f"byte {data[error.start]:#04x} at offset {error.start} is not UTF-8. To fix, "
            "save the recipe as UTF-8 text.",
        ) from None


def load(text: str) -> Any:
    """The plain data of one YAML document, checked against every bound above.

    Raises:
        YamlRefused: what is wrong and where.
        yaml.YAMLError: malformed YAML (``yaml.MarkedYAMLError`` carries the position).
    """
    if len(text) > MAX_BYTES:  # characters: at least as many bytes
        raise YamlRefused(
            "", f"the text is longer than {MAX_BYTES:,} characters, which no recipe needs."
        )
    _check_depth(text)
    loader = _RecipeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_depth(text: str) -> None:
    """Refuse nesting deeper than :data:`MAX_DEPTH`, reading events (nothing recursive)."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                line = event.start_mark.line + 1 if event.start_mark else 0
                raise YamlRefused(
                    f"line {line}",
                    f"mappings and lists nest more than {MAX_DEPTH} deep. To fix, flatten "
                    "the recipe (real recipes nest about 6 deep).",
                )
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _line(node: yaml.Node) -> str:
    return f"line {node.start_mark.line + 1}" if node.start_mark else ""


def _check_nodes(root: yaml.Node) -> None:
    """Refuse recursive aliases, alias bombs, tags beyond plain data and non-string keys.

    Each node is visited once (aliases share nodes); ``sizes`` memoizes how many
    values a node stands for once expanded.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    # An explicit stack: (node, children pending?) so that no check recurses.
    stack: list[tuple[yaml.Node, bool]] = [(root, True)]
    while stack:
        node, entering = stack.pop()
        key = id(node)
        if entering:
            if key in sizes:
                continue
            if key in open_nodes:
                raise YamlRefused(
                    _line(node),
                    "an alias refers to the mapping or list that contains it, so it never "
                    "ends. To fix, remove the recursive alias.",
                )
            _check_tag(node)
            open_nodes.add(key)
            stack.append((node, False))
            stack.extend((child, True) for child in reversed(_children(node)))
            continue
        open_nodes.discard(key)
        sizes[key] = 1 + sum(sizes[id(child)] for child in _children(node))
        if sizes[key] > MAX_NODES:
            raise YamlRefused(
                _line(node),
                f"its aliases expand to more than {MAX_NODES:,} values (an alias bomb). To "
                "fix, write the recipe out without nested aliases.",
            )


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_tag(node: yaml.Node) -> None:
    if node.tag not in _PLAIN_TAGS:
        shown = node.tag.replace(_TAG, "!!")
        raise YamlRefused(
            _line(node),
            f"the tag {shown} is not plain data. To fix, write a mapping, a list, a "
            "string, a number, true/false or null.",
        )
    if isinstance(node, yaml.MappingNode):
        for key, _ in node.value:
            if key.tag == _TAG + "merge":
                continue
            if not (isinstance(key, yaml.ScalarNode) and key.tag == _TAG + "str"):
                shown = key.value if isinstance(key, yaml.ScalarNode) else type(key).__name__
                raise YamlRefused(
                    _line(key),
                    f"the key {shown!r} is not a string (it reads as "
                    f"{key.tag.replace(_TAG, '!!')}). To fix, use names as keys; quote "
                    "them if they look like numbers.",
                )


class _RecipeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys (plain safe_load keeps the last).

    Merge keys (``<<: *anchor``) work as in ``safe_load``: the merged keys come
    first and the mapping's own keys override them. Only a key written twice
    among a mapping's own keys is a duplicate.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._checked: set[yaml.MappingNode] = set()

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        # SafeConstructor flattens every mapping (and each one merged into it) before
        # building it, and flattening rewrites the node: check each one first.
        if node not in self._checked:
            self._checked.add(node)
            self._refuse_duplicates(node)
        super().flatten_mapping(node)

    def _refuse_duplicates(self, node: yaml.MappingNode) -> None:
        seen: dict[str, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _TAG + "merge":
                continue
            key = key_node.value  # a string: _check_nodes refused every other key
            line = key_node.start_mark.line + 1
            if key in seen:
                raise YamlRefused(
                    f"line {line}",
                    f"the key {key!r} appears twice in one mapping (first on line "
                    f"{seen[key]}); YAML would silently keep only the last. To fix, rename or "
                    "merge them.",
                )
            seen[key] = line
