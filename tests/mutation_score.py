"""The mutation score per module, from the last `mutmut run` (`make mutation` prints it).

A mutant is *detected* when a test failed on it (killed), it hung past mutmut's timeout, or it
did not type-check. Mutants listed in ``tests/mutation_equivalent.txt`` (one per line: the
mutant's name, then why no behaviour can tell it from the original) are left out of the score;
every other survivor counts against it. ``--fail-under 90`` exits 1 if a module scores less.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENT = ROOT / "tests" / "mutation_equivalent.txt"
DETECTED = {1: "killed", 3: "killed", -24: "timeout", 24: "timeout", 152: "timeout",
            255: "timeout", 36: "timeout", 37: "type check"}
SURVIVED = {0: "survived", 5: "no tests", 33: "no tests"}


def equivalent() -> dict[str, str]:
    """Mutant name -> why it is equivalent."""
    found: dict[str, str] = {}
    if EQUIVALENT.exists():
        for line in EQUIVALENT.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                name, _, why = line.partition(" ")
                found[name] = why.strip()
    return found


def scores(mutants: Path) -> tuple[dict[str, Counter[str]], list[str]]:
    """Counts per module (``detected``, ``survived``, ``equivalent``, ``not run``), and the
    survivors' names."""
    same = equivalent()
    table: dict[str, Counter[str]] = {}
    survivors: list[str] = []
    for meta in sorted(mutants.rglob("*.py.meta")):
        module = str(meta.relative_to(mutants))[: -len(".meta")]
        counts = table.setdefault(module, Counter())
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            if name in same:
                counts["equivalent"] += 1
            elif code in DETECTED:
                counts["detected"] += 1
            elif code in SURVIVED:
                counts["survived"] += 1
                survivors.append(name)
            else:
                counts["not run"] += 1
    return table, survivors


def known(mutants: Path) -> set[str]:
    """Every mutant's name in the result tree."""
    return {name for meta in mutants.rglob("*.py.meta")
            for name in json.loads(meta.read_text())["exit_code_by_key"]}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mutants", type=Path, default=ROOT / "mutants")
    parser.add_argument("--fail-under", type=float, default=0.0)
    parser.add_argument("--survivors", action="store_true", help="list the survivors' names")
    parser.add_argument("--names", action="store_true",
                        help="print only the survivors' names, one a line (to re-test them)")
    args = parser.parse_args(argv)
    table, survivors = scores(args.mutants)
    if args.names:
        print("\n".join(survivors))
        return 0
    if not table:
        print(f"no mutmut results under {args.mutants}: run `make mutation`", file=sys.stderr)
        return 2
    unknown = sorted(set(equivalent()) - known(args.mutants))
    if unknown:
        print(f"{EQUIVALENT.name} names mutants that no longer exist (the code changed; "
              f"judge them again): {', '.join(unknown)}", file=sys.stderr)
        return 1
    print("| module | mutants | detected | survived | equivalent | not run | score |")
    print("|---|---|---|---|---|---|---|")
    low = []
    total: Counter[str] = Counter()
    for module, c in sorted(table.items()):
        total.update(c)
        judged = c["detected"] + c["survived"]
        score = 100.0 * c["detected"] / judged if judged else 0.0
        if (score < args.fail_under or c["not run"]) and sum(c.values()):
            low.append(module)  # (mutants not run yet: the score is not known)
        shown = f"{score:.1f}%" if judged else "-"
        print(f"| {module} | {sum(c.values())} | {c['detected']} | {c['survived']} | "
              f"{c['equivalent']} | {c['not run']} | {shown} |")
    judged = total["detected"] + total["survived"]
    shown = f"{100.0 * total['detected'] / judged:.1f}%" if judged else "-"
    print(f"| all | {sum(total.values())} | {total['detected']} | {total['survived']} | "
          f"{total['equivalent']} | {total['not run']} | {shown} |")
    if args.survivors:
        print("\n".join(survivors))
    if low:
        print(f"under {args.fail_under:g}% or not fully run: {', '.join(low)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
