"""specs/ stays true to the code: tables equal the declaration, named tests exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from engine import LIFECYCLE
from engine.lifecycle import FINALIZED_STATES

ROOT = Path(__file__).resolve().parents[2]
SPEC = (ROOT / "specs" / "lifecycle.md").read_text(encoding="utf-8")


def table(marker: str) -> list[list[str]]:
    """The rows of the markdown table that follows ``<!-- {marker}: ... -->``."""
    lines = SPEC[SPEC.index(f"<!-- {marker}") :].splitlines()[1:]
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows[2:]  # header and separator


def listed(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)  # type: ignore[arg-type]


def test_the_state_table_is_the_declared_states_and_flags() -> None:
    documented = [(r[0], tuple(c == "yes" for c in r[1:5])) for r in table("states-table")]
    declared = [(s.name, tuple(s.flags[f] for f in LIFECYCLE.flags)) for s in LIFECYCLE.states]
    assert documented == declared
    assert LIFECYCLE.flags == ("initialized", "started", "ended", "finalized")


def test_the_transition_table_is_the_declared_rows() -> None:
    documented = set()
    for state, trigger, shown_guard, hooks, dest in table("transitions-table"):
        documented.add(
            (
                state,
                trigger,
                None if shown_guard == "—" else shown_guard,
                () if hooks == "—" else tuple(h.strip() for h in hooks.split(",")),
                None if dest == "(stays)" else dest,
            )
        )
    declared = set()
    for row in LIFECYCLE.transitions:
        guard: str | None = None
        if "conditions" in row:
            guard = listed(row["conditions"])[0]
        if "unless" in row:
            guard = "not " + listed(row["unless"])[0]
        for source in listed(row["source"]):
            declared.add((source, row["trigger"], guard, listed(row.get("before")), row["dest"]))
    assert documented == declared
    assert len(table("transitions-table")) == len(declared)


def test_the_rules_table_is_the_declared_rejections() -> None:
    documented = {}
    for rule, call, states, reason in table("rules-table"):
        match = re.fullmatch(r"update_event \((.*)\)", call)
        triggers = tuple(t.strip() for t in match.group(1).split(",")) if match else (call,)
        where = (
            FINALIZED_STATES
            if states == "every finalized state"
            else tuple(s.strip() for s in states.split(","))
        )
        documented[rule] = (set(where), set(triggers), reason)
    declared = {r.rule: (set(r.states), set(r.triggers), r.reason) for r in LIFECYCLE.rejections}
    assert documented == declared


def test_every_test_the_catalog_names_exists() -> None:
    references = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", SPEC)
    assert len(references) >= 20
    for path, name in references:
        tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
        defined = {
            node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.ClassDef)
        } | {
            target.id
            for node in tree.body
            if isinstance(node, ast.Assign)
            for target in node.targets
            if isinstance(target, ast.Name)
        }
        assert name in defined, f"specs/lifecycle.md names {path}::{name}, which does not exist"


def test_every_property_names_at_least_one_test() -> None:
    catalog = SPEC[SPEC.index("## 7. Property catalog") :]
    blocks = re.split(r"\n- \*\*(P\d+) ", catalog)[1:]
    properties = dict(zip(blocks[::2], blocks[1::2], strict=True))
    assert list(properties) == [f"P{n}" for n in range(1, len(properties) + 1)]
    for name, text in properties.items():
        assert "::" in text, f"{name} names no test"


def test_the_reference_model_never_imports_the_engine() -> None:
    tree = ast.parse((ROOT / "specs" / "reference.py").read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    assert imported, "the scan found no imports at all"
    assert not any(name == "engine" or name.startswith("engine.") for name in imported), imported
