"""specs/ stays true to the code: tables equal the declaration, named tests exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from modfsm.engine import CALIBRATION_LIFECYCLE, LIFECYCLE
from modfsm.engine.model.lifecycle import FINALIZED_STATES
from modfsm.engine.model.session_grammar import SESSION_GRAMMAR
from modfsm.engine.model.stage_lifecycle import STAGE_LIFECYCLE
from modfsm.engine.tools.verify.properties import machine_named

ROOT = Path(__file__).resolve().parents[2]
SPECS = {path.stem: path.read_text(encoding="utf-8") for path in (ROOT / "specs").glob("*.md")}
SPEC = SPECS["lifecycle"]
CATALOG_PREFIX = {
    "lifecycle": "P",
    "calibration": "CA",
    "stage": "ST",
    "recipe": "RC",
    "session": "SE",
    "modifiers": "M",
    "testing": "K",
    "verification": "V",
    "distributed": "D",
}
#: the "Temporal properties" catalogs, model-checked by engine/tools/verify
#: (spec -> machine, prefix)
TEMPORAL = {
    "lifecycle": ("lifecycle", "LT"),
    "calibration": ("calibration", "CAT"),
    "stage": ("stage", "STT"),
    "session": ("session", "SET"),
}


def table(marker: str, doc: str = "lifecycle") -> list[list[str]]:
    """The rows of the markdown table that follows ``<!-- {marker}: ... -->`` in ``doc``."""
    text = SPECS[doc]
    lines = text[text.index(f"<!-- {marker}") :].splitlines()[1:]
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows[2:]  # header and separator


def listed(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)  # type: ignore[arg-type]  # a list of names


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


def test_the_calibration_table_is_the_declared_calibration_rows() -> None:
    documented = {
        (state, trigger, tuple(h.strip() for h in hooks.split(",")),
         None if dest == "(stays)" else dest)
        for state, trigger, hooks, dest in table("calibration-table", "calibration")
    }  # fmt: skip
    declared = {
        (source, row["trigger"], listed(row.get("before")), row["dest"])
        for row in CALIBRATION_LIFECYCLE.transitions[len(LIFECYCLE.transitions) :]
        for source in listed(row["source"])
    }
    assert documented == declared
    assert len(table("calibration-table", "calibration")) == len(declared)
    assert not any(
        "conditions" in row or "unless" in row
        for row in CALIBRATION_LIFECYCLE.transitions[len(LIFECYCLE.transitions) :]
    )


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


def test_the_stage_tables_are_the_declared_stage_lifecycle() -> None:
    states = [(r[0], r[1] == "yes") for r in table("stage-states-table", "stage")]
    assert states == [(s.name, s.flags["applied"]) for s in STAGE_LIFECYCLE.states]
    preludes = {t.name: t.prelude for t in STAGE_LIFECYCLE.triggers}
    documented = set()
    for state, trigger, prelude, hooks, dest in table("stage-transitions-table", "stage"):
        assert (preludes[trigger] or "—") == prelude, (state, trigger)
        documented.add((state, trigger, () if hooks == "—" else tuple(hooks.split(", ")),
                        None if dest == "(stays)" else dest))  # fmt: skip
    declared = {
        (source, row["trigger"], listed(row.get("before")), row["dest"])
        for row in STAGE_LIFECYCLE.transitions
        for source in listed(row["source"])
    }
    assert documented == declared
    rules = {
        rule: (set(states.split(", ")), trigger, reason)
        for rule, trigger, states, reason in table("stage-rules-table", "stage")
    }
    assert rules == {
        r.rule: (set(r.states), r.triggers[0], r.reason) for r in STAGE_LIFECYCLE.rejections
    }
    assert all(len(r.triggers) == 1 for r in STAGE_LIFECYCLE.rejections)


OPEN_BATCH = {"accumulating", "accumulating_loss", "step_due", "step_due_loss", "stepping",
              "stepped"}  # fmt: skip
PHRASES = {
    "every position": set(SESSION_GRAMMAR.state_names()) - set(),
    "every live position": OPEN_BATCH | {"idle", "calibrating"},
    "open batch positions": OPEN_BATCH,
    "idle and open batch positions": OPEN_BATCH | {"idle"},
}


def positions(text: str) -> set[str]:
    found: set[str] = set()
    for part in text.split(", "):
        found |= PHRASES.get(part, {part})
    return found


def test_the_session_tables_are_the_declared_grammar() -> None:
    names = [row[0] for row in table("session-states-table", "session")]
    assert names == list(SESSION_GRAMMAR.state_names())
    assert [row[1] for row in table("session-states-table", "session")] == [
        s.doc for s in SESSION_GRAMMAR.states
    ]
    preludes = {t.name: t.prelude for t in SESSION_GRAMMAR.triggers}
    documented = set()
    for sources, trigger, shown, hooks, dest in table("session-transitions-table", "session"):
        if hooks.startswith("(gate: "):
            assert preludes[trigger] == hooks.removeprefix("(gate: ").removesuffix(")")
            hooks = "—"
        for source in sources.split(", "):
            documented.add((source, trigger, None if shown == "—" else shown,
                            () if hooks == "—" else tuple(hooks.split(", ")),
                            None if dest == "(stays)" else dest))  # fmt: skip
    declared = set()
    for row in SESSION_GRAMMAR.transitions:
        guard: str | None = None
        if "conditions" in row:
            guard = listed(row["conditions"])[0]
        if "unless" in row:
            guard = "not " + listed(row["unless"])[0]
        for source in listed(row["source"]):
            declared.add((source, row["trigger"], guard, listed(row.get("before")), row["dest"]))
    assert documented == declared
    rules = {}
    for rule, refused, where, reason in table("session-rules-table", "session"):
        if refused == "every call but initialize and load_state_dict":
            triggers = set(SESSION_GRAMMAR.trigger_names()) - {
                "initialize",
                "load_state_dict",
                "lifecycle_event",
            }
        elif refused == "every call":
            triggers = set(SESSION_GRAMMAR.trigger_names()) - {"lifecycle_event"}
        else:
            triggers = set(refused.split(", "))
        rules[rule] = (positions(where), triggers, reason)
    assert rules == {
        r.rule: (set(r.states), set(r.triggers), r.reason) for r in SESSION_GRAMMAR.rejections
    }


@pytest.mark.parametrize("doc", sorted(CATALOG_PREFIX))
def test_every_test_a_catalog_names_exists(doc: str) -> None:
    references = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", SPECS[doc])
    assert len(references) >= 8
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
        assert name in defined, f"specs/{doc}.md names {path}::{name}, which does not exist"


@pytest.mark.parametrize("doc", sorted(CATALOG_PREFIX))
def test_every_property_names_at_least_one_test(doc: str) -> None:
    text = SPECS[doc]
    prefix = CATALOG_PREFIX[doc]
    catalog = text[text.index("Property catalog") :]
    blocks = re.split(rf"\n- \*\*({prefix}\d+) ", catalog)[1:]
    properties = dict(zip(blocks[::2], blocks[1::2], strict=True))
    assert len(properties) >= 5
    assert list(properties) == [f"{prefix}{n}" for n in range(1, len(properties) + 1)]
    for name, text in properties.items():
        assert "::" in text, f"{name} names no test"


@pytest.mark.parametrize("doc", sorted(TEMPORAL))
def test_the_temporal_catalog_is_what_the_model_checker_checks(doc: str) -> None:
    machine_name, prefix = TEMPORAL[doc]
    text = SPECS[doc]
    section = text[text.index("Temporal properties") :]
    entries = re.split(rf"\n- \*\*(?={prefix}\d+ )", section)[1:]
    documented = []
    for entry in entries:
        match = re.match(rf"({prefix}\d+) — (.+?)\.\*\* `([^`]+)`", entry)
        assert match, f"specs/{doc}.md: {entry[:60]!r} is not '**ID — Title.** `formula`'"
        documented.append(match.groups())
        assert "::" in entry, f"{match.group(1)} names no test"
    declared = [
        (p.id, p.title[0].upper() + p.title[1:], p.formula)
        for p in machine_named(machine_name).temporal
    ]
    assert documented == declared
    assert [d[0] for d in documented] == [f"{prefix}{n}" for n in range(1, len(declared) + 1)]


def test_the_reference_model_never_imports_the_engine() -> None:
    tree = ast.parse((ROOT / "specs" / "reference.py").read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    assert imported, "the scan found no imports at all"
    assert not any(name == "modfsm" or name.startswith("modfsm.") for name in imported), imported
