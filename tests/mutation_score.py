"""The mutation score per module, from the last `mutmut run` (`make mutation` prints it).

A mutant is *detected* when a test failed on it (killed), it hung past mutmut's timeout, or it
did not type-check. Mutants listed in ``tests/mutation_equivalent.txt`` are left out of the
score; every other survivor counts against it. ``--fail-under 90`` exits 1 if a module scores
less. Each line of that file is a mutant's name, the hash mutmut keeps of the function it
mutates, and why no behaviour can tell the mutant from the original. A mutant's number names a
different change once its function is edited, so a line whose hash no longer matches (or whose
mutant is gone) fails the report until the mutant is judged again.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENT = ROOT / "tests" / "mutation_equivalent.txt"
DETECTED = {1: "killed", 3: "killed", -24: "timeout", 24: "timeout", 152: "timeout",
            255: "timeout", 36: "timeout", 37: "type check"}
SURVIVED = {0: "survived", 5: "no tests", 33: "no tests"}


def equivalent() -> dict[str, tuple[str, str]]:
    """Mutant name -> (its function's hash, why it is equivalent)."""
    found: dict[str, tuple[str, str]] = {}
    if EQUIVALENT.exists():
        for line in EQUIVALENT.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                name, _, rest = line.partition(" ")
                digest, _, why = rest.strip().partition(" ")
                found[name] = (digest, why.strip())
    return found


def _metas(mutants: Path) -> list[tuple[str, dict[str, Any]]]:
    """(module path, meta) for every mutated module, in order."""
    return [(str(meta.relative_to(mutants))[: -len(".meta")], json.loads(meta.read_text()))
            for meta in sorted(mutants.rglob("*.py.meta"))]


def function_hash(module: str, meta: dict[str, Any], name: str) -> str | None:
    """The hash mutmut keeps of the function mutant ``name`` (of ``module``) changes."""
    prefix = module[: -len(".py")].replace("/", ".") + "."
    function = name.rsplit("__mutmut_", 1)[0].removeprefix(prefix)
    digest: str | None = meta.get("hash_by_function_name", {}).get(function)
    return digest


def stale(mutants: Path) -> list[str]:
    """Equivalents listed for a mutant that is gone or whose function has changed."""
    listed = equivalent()
    current: dict[str, str | None] = {}
    for module, meta in _metas(mutants):
        for name in meta["exit_code_by_key"]:
            if name in listed:
                current[name] = function_hash(module, meta, name)
    return sorted(name for name, (digest, _) in listed.items() if current.get(name) != digest)


def scores(mutants: Path) -> tuple[dict[str, Counter[str]], list[str]]:
    """Counts per module (``detected``, ``survived``, ``equivalent``, ``not run``), and the
    survivors' names. A listed equivalent that a test detects counts as detected."""
    same = equivalent()
    table: dict[str, Counter[str]] = {}
    survivors: list[str] = []
    for module, meta in _metas(mutants):
        counts = table.setdefault(module, Counter())
        for name, code in meta["exit_code_by_key"].items():
            if code in DETECTED:
                counts["detected"] += 1
            elif name in same:
                counts["equivalent"] += 1
            elif code in SURVIVED:
                counts["survived"] += 1
                survivors.append(name)
            else:
                counts["not run"] += 1
    return table, survivors


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
    changed = stale(args.mutants)
    if changed:
        print(f"{EQUIVALENT.name} lists mutants whose function changed or that are gone "
              f"(judge them again): {', '.join(changed)}", file=sys.stderr)
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
