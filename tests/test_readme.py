"""The README's examples are runnable as written: every Python block compiles, names nothing
it does not import or define, and the complete FakePangoCDP example runs and passes."""

from __future__ import annotations

import ast
import asyncio
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
#: The docs' own pages (what they include from the README is checked above). Not in an
#: installed wheel's test run, which copies only the README.
DOCS = README.parent / "docs"
DOC_BLOCKS = [block for page in sorted(DOCS.rglob("*.md")) if DOCS.is_dir()
              for block in re.findall(r"```python\n(.*?)```", page.read_text(), re.S)]


def test_there_are_examples() -> None:
    """(So that the tests below cannot pass by finding none.)"""
    assert len(BLOCKS) >= 6


@pytest.mark.parametrize("block", BLOCKS + DOC_BLOCKS,
                         ids=[f"block{i}" for i in range(len(BLOCKS))]
                         + [f"docs{i}" for i in range(len(DOC_BLOCKS))])
def test_each_example_compiles_and_defines_what_it_uses(block: str, tmp_path: Path) -> None:
    """Valid Python (top-level await allowed, as in a notebook or asyncio's REPL), with no
    undefined name (ruff F821 on the block wrapped in a coroutine)."""
    compile(block, "README", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    source = tmp_path / "example.py"
    source.write_text("async def _example() -> None:\n" + textwrap.indent(block, "    "))
    lint = subprocess.run(  # noqa: S603 -- our own interpreter on a file we just wrote
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--select", "F821", "--isolated",
         str(source)], capture_output=True, text=True, check=False)
    assert lint.returncode == 0, lint.stdout


@pytest.mark.slow
def test_the_complete_fake_server_example_runs() -> None:
    """The FakePangoCDP example, executed as written."""
    block = next(b for b in BLOCKS if "async with FakePangoCDP(" in b)
    code = compile(block, "README", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    namespace: dict[str, Any] = {}

    async def main() -> None:
        result = eval(code, namespace)  # noqa: S307 -- our own README's example
        if asyncio.iscoroutine(result):
            await result
    asyncio.run(main())
    assert namespace["report"].records_accepted == 500
