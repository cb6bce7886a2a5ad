"""What `make test-all` runs through nox (noxfile.py), as the README says: the default suite on
every supported Python the machine has, 3.10 and 3.13 from the installed wheel, the others from
the source tree unless `make test-all` itself just ran on it; ruff and mypy are not run again;
a tests session with no interpreter left passes, saying so. The interpreters are made up here
(a pyenv root of empty executables), so nothing is installed or run."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
nox_registry = pytest.importorskip("nox.registry", reason="needs nox (the dev extra)")
pytestmark = pytest.mark.skipif(not (ROOT / "noxfile.py").exists(),
                                reason="the noxfile stays in the checkout (the wheel's run)")


def _noxfile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, present: list[str],
             already_run: str) -> ModuleType:
    """noxfile.py loaded on a machine whose only Pythons are ``present`` (found through
    pyenv), after `make test-all` ran on ``already_run``."""
    for version in present:
        bin_dir = tmp_path / "pyenv" / "versions" / f"{version}.0" / "bin"
        bin_dir.mkdir(parents=True)
        exe = bin_dir / f"python{version}"
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "pyenv"))
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-else"))
    monkeypatch.setenv("PANGOCDP_NOX_SOURCE_TESTED", already_run)
    spec = importlib.util.spec_from_file_location("noxfile_under_test", ROOT / "noxfile.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    nox_registry.reset()  # (each load registers its sessions anew)
    spec.loader.exec_module(module)
    nox_registry.reset()
    return module


class _Session:
    """What a session was asked to do."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def install(self, *args: Any) -> None:
        self.calls.append(("install", args))

    def run(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append(("run", args))

    def log(self, *args: Any) -> None:
        self.calls.append(("log", args))


@pytest.mark.parametrize(("present", "already_run", "from_source"), [
    (["3.10", "3.11", "3.12", "3.13"], "3.11", ["3.12"]),
    (["3.10", "3.11", "3.12", "3.13"], "3.13", ["3.11", "3.12"]),
    (["3.10", "3.12", "3.13"], "", ["3.12"]),
])
def test_each_python_runs_the_suite_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         present: list[str], already_run: str,
                                         from_source: list[str]) -> None:
    noxfile = _noxfile(tmp_path, monkeypatch, present, already_run)
    assert noxfile.WHEEL_PYTHONS == ["3.10", "3.13"]
    assert from_source == noxfile.SOURCE_PYTHONS
    session = _Session()
    noxfile.tests(session)
    assert session.calls == [("install", ("-e", ".[test,bench]")),
                             ("run", ("pytest", "-m", "not slow", "-p", "no:cacheprovider"))]


def test_with_no_python_left_the_tests_session_says_so_and_passes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    noxfile = _noxfile(tmp_path, monkeypatch, ["3.10", "3.13"], "3.13")
    assert noxfile.SOURCE_PYTHONS == []
    session = _Session()
    noxfile.tests(session)
    assert session.calls == [("log", (
        "no supported Python left to run the suite on from the source tree (the wheel "
        "sessions run 3.10 and 3.13; `make test-all` ran 3.13)",))]
