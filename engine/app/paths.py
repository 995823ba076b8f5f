"""Paths a command will write, checked before it does any work (nothing is created here)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["file_problem", "folder_problem"]


def _nearest_existing(path: Path) -> Path:
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing


def folder_problem(folder: Path) -> str:
    """Why ``folder`` (made if missing) cannot be written; empty when it can."""
    if folder.exists() and not folder.is_dir():
        return f"{str(folder)!r} is a file, not a folder"
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        return f"{str(existing)!r} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"there is no permission to write in {str(existing)!r}"
    return ""


def file_problem(file: Path) -> str:
    """Why ``file`` cannot be written (its folder is made if missing); empty when it can."""
    if file.is_dir():
        return f"{str(file)!r} is a folder, not a file"
    if file.exists() and not os.access(file, os.W_OK):
        return f"there is no permission to write {str(file)!r}"
    return folder_problem(file.parent)
