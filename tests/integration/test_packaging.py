"""What installing modfsm puts in a project: one import name, a pytest plugin under it, and
modifiers of other packages found through the ``modfsm.modifiers`` entry-point group.

Each test builds or installs real packages with pip (no build isolation, no
downloads) into a temporary folder and runs Python in a subprocess there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "setup.py", "README.md", "engine", "modifiers")

pytestmark = pytest.mark.slow


def pip(*args: str | Path) -> None:
    """Run pip quietly, offline and without build isolation (the venv has setuptools)."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "PIP_NO_INDEX": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr


def python(code: str, *, cwd: Path, path: list[Path]) -> subprocess.CompletedProcess[str]:
    """Run ``code`` with ``path`` first on sys.path, in ``cwd``."""
    return run([sys.executable, "-c", code], cwd=cwd, path=path)


def run(argv: list[str], *, cwd: Path, path: list[Path]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "HYPOTHESIS_"))}
    env["PYTHONPATH"] = os.pathsep.join(map(str, path))
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """modfsm's wheel, built from a copy of the sources (the checkout stays clean)."""
    copy = tmp_path_factory.mktemp("source")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, copy / name, ignore=ignore)
        else:
            shutil.copy2(source, copy / name)
    out = tmp_path_factory.mktemp("wheel")
    pip("wheel", "--no-deps", "--no-build-isolation", "-w", out, copy)
    (built,) = out.glob("modfsm-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder the wheel is installed into (put it first on PYTHONPATH to use it)."""
    target = tmp_path_factory.mktemp("site")
    pip("install", "--no-deps", "--target", target, wheel)
    return target


def test_the_wheel_installs_nothing_at_top_level_but_modfsm(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"modfsm", "modfsm-0.1.0.dist-info"}
    assert "modfsm/__init__.py" not in names  # a namespace package
    assert {"modfsm/engine/__init__.py", "modfsm/modifiers/__init__.py"} <= set(names)
    assert "modfsm/engine/app/data/default_recipe.yaml" in names
    assert {"modfsm/engine/py.typed", "modfsm/modifiers/py.typed"} <= set(names)
    # every folder of the checkout that holds Python is in the wheel
    for folder in ("engine", "modifiers"):
        for source in (ROOT / folder).rglob("*.py"):
            assert f"modfsm/{source.relative_to(ROOT).as_posix()}" in names, source


def test_the_wheels_entry_points_are_under_modfsm(wheel: Path) -> None:
    archive = zipfile.ZipFile(wheel)
    text = archive.read("modfsm-0.1.0.dist-info/entry_points.txt").decode()
    sections: dict[str, dict[str, str]] = {}
    current = ""
    for line in text.splitlines():
        if line.startswith("["):
            current = line.strip("[]")
        elif "=" in line:
            name, value = (part.strip() for part in line.split("=", 1))
            sections.setdefault(current, {})[name] = value
    assert sections["pytest11"] == {"modfsm": "modfsm.engine.tools.testing.plugin"}
    assert sections["console_scripts"] == {"modfsm": "modfsm.engine.app.cli:main"}
    # modfsm's own modifiers are walked as the main package, not declared a second time
    assert "modfsm.modifiers" not in sections


PROJECT_TEST = """
import importlib

from modfsm.engine import Event, EventType, Modifier, State

engine = importlib.import_module("engine")  # the project's own engine.py
modifiers = importlib.import_module("modifiers")  # and its own modifiers/ package


def test_the_projects_own_engine_and_modifiers_are_imported():
    assert engine.OWNER == "the project"
    assert modifiers.OWNER == "the project"


class Window(Modifier):
    def on_initialize(self, state, **kwargs):
        return True


def test_modfsm_fixtures_work_here(modfsm_spy, modfsm_torch_hooks):
    import modfsm.engine

    assert modfsm.engine.__file__.startswith(INSTALLED)
    modifier = Window(start=0, end=1)
    spy = modfsm_spy(modifier)
    modifier.initialize(State())
    modifier.update_event(State(), Event(EventType.BATCH_END, global_step=1))
    assert [call.call for call in spy.calls] == ["initialize", "update_event"]
    assert modifier.lifecycle_state == "ended"
    assert modfsm_torch_hooks(__import__("torch").nn.Linear(1, 1)) == {}
"""


@pytest.mark.parametrize("pythonpath_dot", [False, True], ids=["plain", "PYTHONPATH=."])
def test_a_project_with_its_own_engine_and_modifiers_runs_its_tests(
    installed: Path, tmp_path: Path, pythonpath_dot: bool
) -> None:
    project = tmp_path / "project"
    (project / "modifiers").mkdir(parents=True)
    (project / "engine.py").write_text('OWNER = "the project"\n', encoding="utf-8")
    (project / "modifiers" / "__init__.py").write_text('OWNER = "the project"\n', encoding="utf-8")
    (project / "test_mine.py").write_text(
        f"INSTALLED = {str(installed)!r}\n" + PROJECT_TEST, encoding="utf-8"
    )
    path = [installed, *([project] if pythonpath_dot else [])]
    done = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=project,
               path=path)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout


MODIFIERS = """
import attrs

from modfsm.engine import Modifier


@attrs.define(kw_only=True, eq=False)
class HelloModifier(Modifier):
    greeting: str = "hello"

    def on_initialize(self, state, **kwargs):
        return True
"""

SPECIAL = """
from modfsm.engine import Modifier


class SpecialModifier(Modifier):
    def on_initialize(self, state, **kwargs):
        return True


class NotAModifierAtAll:
    pass
"""

PLUGIN_PYPROJECT = """
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "hellomods"
version = "1.0"

[tool.setuptools]
packages = ["hellomods", "hellomods.more", "brokenmods"]

[project.entry-points."modfsm.modifiers"]
hello = "hellomods"
special = "hellomods.special:SpecialModifier"
broken = "brokenmods"
"""


@pytest.fixture(scope="module")
def plugin(installed: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A third-party package of modifiers, one of its three entry points broken, pip-installed."""
    source = tmp_path_factory.mktemp("hellomods")
    (source / "pyproject.toml").write_text(PLUGIN_PYPROJECT, encoding="utf-8")
    (source / "hellomods" / "more").mkdir(parents=True)
    (source / "hellomods" / "__init__.py").write_text("", encoding="utf-8")
    (source / "hellomods" / "greet.py").write_text(MODIFIERS, encoding="utf-8")
    (source / "hellomods" / "special.py").write_text(SPECIAL, encoding="utf-8")
    (source / "hellomods" / "more" / "__init__.py").write_text(
        "from modfsm.engine import Modifier\n\n\nclass DeeperModifier(Modifier):\n"
        "    def on_initialize(self, state, **kwargs):\n        return True\n",
        encoding="utf-8",
    )
    (source / "brokenmods").mkdir()
    (source / "brokenmods" / "__init__.py").write_text(
        'raise ImportError("a dependency is missing")\n\n\nclass LostModifier:\n    pass\n',
        encoding="utf-8",
    )
    target = tmp_path_factory.mktemp("plugin-site")
    pip("install", "--no-deps", "--no-build-isolation", "--target", target, source)
    return target


RECIPE_CODE = """
from modfsm.engine.config.recipe import Recipe
from modfsm.engine.config.factory import ModifierFactory, ModifierImportError
recipe = Recipe.load('''
greet_stage:
  hello_modifiers:
    HelloModifier: {greeting: hi, start: 0}
    SpecialModifier: {}
    DeeperModifier: {}
    ConstantPruningModifier: {targets: ["re:.*"]}
''')
stages = recipe.build()
print([type(m).__name__ for m in stages[0].modifiers], stages[0].modifiers[0].greeting)
ModifierFactory.refresh()
try:
    ModifierFactory.create("LostModifier")
except ModifierImportError as error:
    print("LostModifier:", error)
import sys
print(sorted(n for n in sys.modules if n.startswith(("hellomods", "brokenmods"))))
"""


def test_a_modifier_declared_by_an_entry_point_is_found_by_name_from_a_recipe(
    installed: Path, plugin: Path, tmp_path: Path
) -> None:
    done = python(RECIPE_CODE, cwd=tmp_path, path=[installed, plugin])
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == (
        "['HelloModifier', 'SpecialModifier', 'DeeperModifier', 'ConstantPruningModifier'] hi"
    )
    assert lines[1].startswith(
        "LostModifier: entry point 'broken' (brokenmods) of group 'modfsm.modifiers' failed to "
        "import (ImportError: a dependency is missing)."
    )
    assert lines[2] == ("['hellomods', 'hellomods.greet', 'hellomods.more', 'hellomods.special']")
    # The broken entry point is reported once, by name, though the factory loaded twice.
    warnings = [line for line in done.stderr.splitlines() if "failed to load" in line]
    assert len(warnings) == 1, done.stderr
    assert "entry point 'broken' (brokenmods)" in warnings[0]


def test_the_cli_draws_a_modifier_an_entry_point_declares(
    installed: Path, plugin: Path, tmp_path: Path
) -> None:
    done = run(
        [sys.executable, "-c", "from modfsm.engine.app.cli import main; raise SystemExit(main())",
         "diagram", "HelloModifier", "--format", "mermaid"],
        cwd=tmp_path,
        path=[installed, plugin],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith('---\ntitle: "HelloModifier lifecycle')
    assert "stateDiagram-v2" in done.stdout
