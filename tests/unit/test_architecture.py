"""The layering of ARCHITECTURE.md holds: every import goes to the importer's own layer or one
its row allows. The rules are read from ARCHITECTURE.md's table, so it cannot go stale."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import attrs
import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("engine", "modifiers")


@attrs.frozen
class Layer:
    name: str
    folder: str  # "engine/kernel/", or "engine/__init__.py" for the face
    module: str  # the import name
    may_import: frozenset[str]


def layers() -> list[Layer]:
    """The rows of the table under ARCHITECTURE.md's "## Layers", in order."""
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    section = text.split("\n## Layers\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 5 or not cells[1].startswith("`"):
            continue
        allowed = frozenset() if cells[4] == "—" else frozenset(re.split(r",\s*", cells[4]))
        rows.append(Layer(cells[0], cells[1].strip("`"), cells[2].strip("`"), allowed))
    return rows


LAYERS = layers()
BY_NAME = {layer.name: layer for layer in LAYERS}


def layer_of_file(path: str) -> Layer | None:
    """The layer a source file (relative to the root, with '/') belongs to."""
    fitting = [
        layer for layer in LAYERS
        if path == layer.folder or (layer.folder.endswith("/") and path.startswith(layer.folder))
    ]  # fmt: skip
    return max(fitting, key=lambda layer: len(layer.folder), default=None)


def layer_of_module(name: str) -> Layer | None:
    """The layer an imported module belongs to; None for modules outside modfsm."""
    fitting = [
        layer for layer in LAYERS if name == layer.module or name.startswith(layer.module + ".")
    ]
    return max(fitting, key=lambda layer: len(layer.module), default=None)


def module_name(path: str) -> str:
    """``engine/kernel/compiler.py`` -> ``modfsm.engine.kernel.compiler``."""
    parts = path.removesuffix(".py").split("/")
    if parts[-1] == "__init__":
        parts.pop()
    return "modfsm." + ".".join(parts)


def imported(path: str, source: str) -> list[tuple[int, str]]:
    """Every module ``source`` imports, anywhere in it, as (line, absolute name).

    ``from package import name`` counts as importing ``package.name`` when that is
    a layer of its own (``from modfsm.engine import tools``), else ``package``.
    """
    package = module_name(path)
    if not path.endswith("__init__.py"):
        package = package.rsplit(".", 1)[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source, filename=path)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                whole = f"{base}.{alias.name}"
                own = layer_of_module(whole)
                found.append((node.lineno, whole if own and own.module == whole else base))
    return found


def violations(path: str, source: str) -> list[str]:
    """What in ``source`` (the file at ``path``) breaks the layering, one line each."""
    home = layer_of_file(path)
    if home is None:
        return [f"{path}: belongs to no layer of ARCHITECTURE.md"]
    problems = []
    for line, name in imported(path, source):
        target = layer_of_module(name)
        if target is None or target is home or target.name in home.may_import:
            continue
        problems.append(
            f"{path}:{line}: {home.name} imports {name} ({target.name}); "
            f"{home.name} may import only {', '.join(sorted(home.may_import)) or 'itself'}"
        )
    return problems


def sources() -> list[Path]:
    return sorted(p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py"))


def test_the_table_has_every_layer_and_each_imports_only_layers_above_its_row() -> None:
    names = [layer.name for layer in LAYERS]
    assert names == [
        "kernel", "model", "runtime", "face", "config", "loop", "tools", "integrations", "app",
        "modifiers",
    ]  # fmt: skip
    for position, layer in enumerate(LAYERS):
        assert layer.may_import <= set(names[:position]), layer
        assert layer_of_module(layer.module) is layer


def test_every_source_file_belongs_to_one_layer_and_every_layer_folder_exists() -> None:
    for layer in LAYERS:
        assert (ROOT / layer.folder).exists(), layer.folder
    homeless = [p for p in sources() if layer_of_file(p.relative_to(ROOT).as_posix()) is None]
    assert not homeless


def test_every_import_follows_the_layering() -> None:
    problems = []
    for path in sources():
        relative = path.relative_to(ROOT).as_posix()
        problems += violations(relative, path.read_text(encoding="utf-8"))
    assert not problems, "\n".join(problems)


def test_the_engine_never_imports_the_shipped_modifiers() -> None:
    assert all("modifiers" not in layer.may_import for layer in LAYERS)


@pytest.mark.parametrize(
    ("path", "source", "expected"),
    [
        (
            "engine/kernel/compiler.py",
            "from modfsm.engine.loop.session import Session\n",
            "engine/kernel/compiler.py:1: kernel imports modfsm.engine.loop.session (loop); "
            "kernel may import only itself",
        ),
        (
            "engine/runtime/stage.py",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from modfsm.engine.config import Recipe\n",
            "engine/runtime/stage.py:3: runtime imports modfsm.engine.config (config); "
            "runtime may import only kernel, model",
        ),
        (
            "engine/loop/session.py",
            "def later():\n    import modfsm.modifiers.pruning\n",
            "engine/loop/session.py:2: loop imports modfsm.modifiers.pruning (modifiers); "
            "loop may import only config, face, kernel, model, runtime",
        ),
        (
            "modifiers/pruning/base.py",
            "from modfsm.engine import tools\n",
            "modifiers/pruning/base.py:1: modifiers imports modfsm.engine.tools (tools); "
            "modifiers may import only face, kernel, model, runtime",
        ),
        (
            "engine/model/events.py",
            "from ..app import cli\n",
            "engine/model/events.py:1: model imports modfsm.engine.app (app); "
            "model may import only kernel",
        ),
        (
            "engine/stray.py",
            "import os\n",
            "engine/stray.py: belongs to no layer of ARCHITECTURE.md",
        ),
    ],
)
def test_an_import_against_the_layering_is_reported(path: str, source: str, expected: str) -> None:
    assert violations(path, source) == [expected]


@pytest.mark.parametrize(
    ("path", "source"),
    [
        ("engine/app/cli.py", "from modfsm.engine.kernel.errors import ConfigError\n"),
        ("engine/tools/replay.py", "from modfsm.engine import Event\nimport json\n"),
        ("modifiers/targets.py", "from modfsm.engine.kernel.validate import check_int\n"),
        ("engine/kernel/errors.py", "from modfsm.engine.kernel import compiler\n"),
    ],
)
def test_imports_within_the_layering_are_not_reported(path: str, source: str) -> None:
    assert violations(path, source) == []
