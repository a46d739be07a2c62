"""Mutation scores per module from a `mutmut run` (tests/MUTATION.md).

    python -m tests.support.mutation [--survivors]

reads mutmut's results under `mutants/` and prints, per mutated module, how many mutants
the fast tests killed (a timeout counts as killed: the mutant hung the code) and the score,
killed / checked; with `--survivors`, the name of every mutant that lived.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

KILLED = {1: "killed", 3: "killed", 24: "timeout", -24: "timeout", 36: "timeout", 152: "timeout",
          255: "timeout"}
SURVIVED = {0: "survived", 5: "no tests", 33: "no tests"}


def outcomes(mutants: Path) -> dict[str, dict[str, str]]:
    """Per module (`sshreg/x.py`), each mutant's outcome; mutants not run are left out."""
    found: dict[str, dict[str, str]] = {}
    for meta in sorted(mutants.glob("sshreg/**/*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        module = str(meta.relative_to(mutants)).removesuffix(".meta")
        found[module] = {name: KILLED.get(code) or SURVIVED.get(code) or f"exit {code}"
                         for name, code in codes.items() if code is not None}
    return found


def table(found: dict[str, dict[str, str]]) -> str:
    rows = ["| module | mutants | killed | timeouts | survived | no tests | score |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    total: Counter[str] = Counter()
    for module, results in found.items():
        counts = Counter(results.values())
        total.update(counts)
        rows.append(_row(f"`{module}`", counts))
    rows.append(_row("**all**", total))
    return "\n".join(rows)


def _row(label: str, counts: Counter[str]) -> str:
    checked = sum(counts.values())
    caught = counts["killed"] + counts["timeout"]
    score = f"{100 * caught / checked:.1f} %" if checked else "-"
    return (f"| {label} | {checked} | {counts['killed']} | {counts['timeout']} | "
            f"{counts['survived']} | {counts['no tests']} | {score} |")


def main(argv: list[str]) -> None:
    found = outcomes(Path("mutants"))
    print(table(found))
    if "--survivors" in argv:
        for results in found.values():
            for name, outcome in results.items():
                if outcome not in ("killed", "timeout"):
                    print(f"{outcome}: {name}")


if __name__ == "__main__":
    main(sys.argv[1:])
