"""Checks a built wheel holds what the package needs at run time: ``python tests/wheel_check.py
dist/pangocdp_async-*.whl`` (the ``wheel`` nox session runs it; ``test_packaging.py`` shows it
failing on a wheel built without the package data)."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

#: Files outside the Python modules, without which an installed package breaks.
REQUIRED = (
    "pangocdp_async/py.typed",  # type checkers read the annotations only if it is there
    "pangocdp_async/examples/orders.jsonl",  # the sample `pangocdp ingest` and the demo use
    "pangocdp_async/_limiter/quota.lua",  # the Redis backend's script
)


def problems(wheel: Path) -> list[str]:
    """What is wrong with ``wheel`` (nothing: an empty list)."""
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        found: list[str] = []
        metadata = next((n for n in names if n.endswith(".dist-info/METADATA")), None)
        entry_points = next((n for n in names if n.endswith(".dist-info/entry_points.txt")), None)
        for required in REQUIRED:
            if required not in names:
                found.append(f"{required} is missing")
        if metadata is None:
            found.append("no METADATA")
        else:
            text = zf.read(metadata).decode()
            if "Requires-Python: >=3.10" not in text:
                found.append("METADATA lacks Requires-Python: >=3.10")
        if entry_points is None or "pangocdp = pangocdp_async.cli:main" not in zf.read(
                entry_points).decode():
            found.append("the pangocdp console script is not declared")
        if any(n.startswith(("tests/", "benchmarks/")) for n in names):
            found.append("the wheel carries tests or benchmarks")
    return found


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: wheel_check.py WHEEL", file=sys.stderr)
        return 2
    found = problems(Path(argv[0]))
    for problem in found:
        print(f"{argv[0]}: {problem}", file=sys.stderr)
    if not found:
        print(f"{argv[0]}: {', '.join(REQUIRED)} present; metadata and script declared")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
