"""What users install: the wheel's contents (tests/wheel_check.py, which the ``wheel`` nox
session runs on the real build) and the version written in one place."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import pangocdp_async

from .wheel_check import REQUIRED, problems

ROOT = Path(__file__).resolve().parent.parent
DIST_INFO = "pangocdp_async-0.1.0.dist-info"


def _wheel(path: Path, names: list[str], *, metadata: str = "Requires-Python: >=3.10\n",
           entry_points: str = "[console_scripts]\npangocdp = pangocdp_async.cli:main\n") -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name in names:
            zf.writestr(name, "")
        zf.writestr(f"{DIST_INFO}/METADATA", metadata)
        zf.writestr(f"{DIST_INFO}/entry_points.txt", entry_points)
    return path


def test_a_complete_wheel_passes(tmp_path: Path) -> None:
    assert problems(_wheel(tmp_path / "ok.whl", [*REQUIRED, "pangocdp_async/__init__.py"])) == []


@pytest.mark.parametrize("missing", REQUIRED)
def test_each_file_left_out_is_named(tmp_path: Path, missing: str) -> None:
    names = [n for n in REQUIRED if n != missing]
    assert problems(_wheel(tmp_path / "w.whl", names)) == [f"{missing} is missing"]


def test_metadata_script_and_stray_files_are_checked(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path / "w.whl", [*REQUIRED, "tests/test_x.py"], metadata="Name: x\n",
                   entry_points="")
    assert problems(wheel) == ["METADATA lacks Requires-Python: >=3.10",
                               "the pangocdp console script is not declared",
                               "the wheel carries tests or benchmarks"]


def test_the_version_is_written_once() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r"^dynamic = \[\"version\"\]", pyproject, re.M)
    assert not re.search(r'^version = "', pyproject, re.M)
    assert 'version = {attr = "pangocdp_async.__version__"}' in pyproject
    assert re.fullmatch(r"\d+\.\d+\.\d+", pangocdp_async.__version__)
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## [{pangocdp_async.__version__}] - " in changelog


@pytest.mark.slow
def test_a_wheel_built_without_the_package_data_fails_the_check(tmp_path: Path) -> None:
    """The real build, with the package-data line taken out of pyproject.toml (the sample is
    left out) and py.typed deleted: the check names both (the same check passes on the real
    wheel in the ``wheel`` nox session)."""
    pytest.importorskip("build", reason="needs the build package (the dev extra)")
    src = tmp_path / "src"
    shutil.copytree(ROOT / "pangocdp_async", src / "pangocdp_async",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "README.md", src / "README.md")
    pyproject = (ROOT / "pyproject.toml").read_text()
    line = next(n for n in pyproject.splitlines() if n.startswith("pangocdp_async = [\"py.typed\""))
    (src / "pyproject.toml").write_text(pyproject.replace(line + "\n", ""))
    (src / "pangocdp_async" / "py.typed").unlink()
    out = tmp_path / "dist"
    subprocess.run(  # noqa: S603 -- our own interpreter building our own copy
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(src)],
        check=True, capture_output=True)
    (wheel,) = out.glob("*.whl")
    found = problems(wheel)
    assert "pangocdp_async/py.typed is missing" in found
    assert "pangocdp_async/examples/orders.jsonl is missing" in found
