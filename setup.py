"""Where the import packages come from: the folders engine/ and modifiers/ install as
``modfsm.engine`` and ``modfsm.modifiers``; ``modfsm`` itself is a namespace package.

Everything else about the distribution is in pyproject.toml. This file exists only
because the ``packages.find`` table cannot prefix the names it finds.
"""

from setuptools import find_packages, setup

FOLDERS = {"modfsm.engine": "engine", "modfsm.modifiers": "modifiers"}


def packages(name: str, folder: str) -> list[str]:
    """``name`` and every package under ``folder``, named under ``name``."""
    return [name, *(f"{name}.{sub}" for sub in find_packages(folder))]


setup(
    package_dir=FOLDERS,
    packages=[p for name, folder in FOLDERS.items() for p in packages(name, folder)],
)
