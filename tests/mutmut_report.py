"""Summarise a ``make mutation`` run: counts per module and the kill rate.

Reads mutmut's results (``mutants/src/modfsm/engine/<layer>/<module>.py.meta``) and the mutants
argued equivalent in ``specs/verification.md`` (the ids in backticks in the
"Equivalent mutants" table), and prints, per module: mutants, killed, timeouts,
survivors, equivalent survivors, mutants no selected test reaches, and those
not yet run. The kill rate counts timeouts as detected and leaves equivalent
mutants out::

    kill rate = (killed + timeout) / (mutants run - equivalent)

Exit status: 0 when every mutant was run and every survivor is argued
equivalent; 1 otherwise (with the survivors listed).

Run: ``python -m tests.mutmut_report`` (from the repository root).
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

import attrs

#: mutmut's exit code -> our category (mutmut's ``status_by_exit_code``, grouped).
_CATEGORY = {
    1: "killed",
    3: "killed",
    0: "survived",
    5: "no tests",
    33: "no tests",
    36: "timeout",
    -24: "timeout",
    24: "timeout",
    152: "timeout",
    255: "timeout",
}

_EQUIVALENT_HEADING = "### Equivalent mutants"
MUTATED = Path("src") / "modfsm" / "engine"
"""Where mutmut's copy of engine/ is, under mutants/ (see ``make mutation``)."""
_MUTANT_ID = re.compile(r"`(modfsm\.engine\.[\w.ǁ]+__mutmut_\d+)`")


@attrs.frozen
class ModuleCounts:
    """The results for one mutated module."""

    module: str
    categories: dict[str, int]
    survivors: tuple[str, ...]
    equivalent: tuple[str, ...]

    @property
    def total(self) -> int:
        return sum(self.categories.values())

    @property
    def detected(self) -> int:
        return self.categories["killed"] + self.categories["timeout"]


def equivalent_ids(verification: Path) -> frozenset[str]:
    """The mutant ids listed under "Equivalent mutants" in ``specs/verification.md``."""
    if not verification.exists():
        return frozenset()
    text = verification.read_text(encoding="utf-8")
    _, found, rest = text.partition(_EQUIVALENT_HEADING)
    if not found:
        return frozenset()
    section = re.split(r"\n#{1,3} ", rest, maxsplit=1)[0]
    return frozenset(_MUTANT_ID.findall(section))


def _category(code: int | None) -> str:
    if code is None:
        return "not run"
    return _CATEGORY.get(code, "suspicious")


def module_counts(meta: Path, equivalent: frozenset[str]) -> ModuleCounts:
    """Count one module's results (``meta`` is mutmut's ``<module>.py.meta``)."""
    codes: dict[str, int | None] = json.loads(meta.read_text(encoding="utf-8"))[
        "exit_code_by_key"
    ]
    categories = Counter(
        dict.fromkeys(("killed", "timeout", "survived", "no tests", "suspicious", "not run"), 0)
    )
    survivors: list[str] = []
    argued: list[str] = []
    for mutant, code in sorted(codes.items()):
        category = _category(code)
        if category in ("survived", "no tests") and mutant in equivalent:
            argued.append(mutant)
            continue
        categories[category] += 1
        if category in ("survived", "no tests", "suspicious"):
            survivors.append(mutant)
    module = meta.name.removesuffix(".py.meta")
    return ModuleCounts(module, dict(categories), tuple(survivors), tuple(argued))


def main(root: Path = Path()) -> int:
    """Print the summary; return 0 if nothing is left unexplained."""
    metas = sorted((root / "mutants" / MUTATED).rglob("*.py.meta"))
    if not metas:
        print("no mutmut results under mutants/: run `make mutation` first")
        return 1
    equivalent = equivalent_ids(root / "specs" / "verification.md")
    rows = [module_counts(meta, equivalent) for meta in metas]
    header = ("module", "mutants", "killed", "timeout", "survived", "equivalent", "no tests",
              "not run", "kill rate")  # fmt: skip
    print("  ".join(f"{h:>10}" if i else f"{h:<16}" for i, h in enumerate(header)))
    totals: Counter[str] = Counter()
    for row in rows:
        c = row.categories
        relevant = row.total - c["not run"]
        rate = f"{row.detected / relevant:.1%}" if relevant else "-"
        cells = (row.module, row.total + len(row.equivalent), c["killed"], c["timeout"],
                 c["survived"] + c["suspicious"], len(row.equivalent), c["no tests"],
                 c["not run"], rate)  # fmt: skip
        print("  ".join(f"{v:>10}" if i else f"{v:<16}" for i, v in enumerate(cells)))
        totals.update(c)
        totals["equivalent"] += len(row.equivalent)
    relevant = sum(row.total for row in rows) - totals["not run"]
    detected = totals["killed"] + totals["timeout"]
    print(
        f"\n{sum(row.total for row in rows) + totals['equivalent']} mutants, "
        f"{totals['not run']} not run, {totals['equivalent']} argued equivalent; "
        f"kill rate of the rest: {detected}/{relevant} = "
        f"{detected / relevant if relevant else 1:.1%}"
    )
    unexplained = [m for row in rows for m in row.survivors]
    if unexplained:
        print(f"\n{len(unexplained)} surviving mutants not argued equivalent (mutmut show <id>):")
        for mutant in unexplained:
            print(f"  {mutant}")
    if totals["not run"]:
        print(f"\n{totals['not run']} mutants not run yet: run `make mutation` again to finish.")
    return 1 if unexplained or totals["not run"] else 0


if __name__ == "__main__":
    sys.exit(main())
