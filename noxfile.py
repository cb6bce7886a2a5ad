"""The checks beyond one interpreter and one checkout: `make test-all` (and so CI) runs them all.

- ``tests-3.X``: the default suite from the source tree on each supported CPython this machine
  has other than the oldest and the newest (the wheel sessions run it on those) and the one
  `make test-all` has just used; with none left, the session says so and passes. ruff and mypy
  are not run again: their verdict does not depend on the interpreter (ruff targets 3.10, and
  mypy checks against 3.10 whatever runs it), and `make lint` gives it.
- ``wheel-3.X``: builds the sdist and the wheel, checks their metadata and contents, installs the
  wheel into a fresh environment and, from a directory outside the checkout, runs the command
  (``pangocdp --version``, the sandbox ingest of the shipped sample) and the default suite
  against the installed package.
- ``docs``: the reference site, built by Sphinx with warnings as errors (a broken reference, a
  public name without a docstring or left out of the reference fail it).

nox is used rather than tox because its sessions are Python: the interpreter search, the wheel
checks and the copying of the suite out of the checkout need no plugin.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
SUPPORTED = ["3.10", "3.11", "3.12", "3.13"]
OLDEST, NEWEST = SUPPORTED[0], SUPPORTED[-1]

nox.options.error_on_missing_interpreters = True
# Never fetch an interpreter (uv would): a supported version missing here must fail the run.
nox.options.download_python = "never"
nox.options.default_venv_backend = "uv|venv"  # uv when installed (dev extra): much quicker
nox.options.sessions = ["tests", "wheel", "docs"]
#: `make test-all` has just run everything on its own interpreter from the source tree: it names
#: that version here so the matrix does not run it again (the wheel sessions still do).
ALREADY_RUN = os.environ.get("PANGOCDP_NOX_SOURCE_TESTED", "")


def _add_pyenv_interpreters() -> None:
    """pyenv keeps every installed version under its root, but its shims answer only for the
    global ones: put each supported version's own bin directory on PATH."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    dirs = []
    for version in SUPPORTED:
        found = sorted(root.glob(f"{version}.*/bin"), key=lambda p: p.parent.name)
        if found:
            dirs.append(str(found[-1]))
    os.environ["PATH"] = os.pathsep.join([*dirs, os.environ.get("PATH", "")])


def _present(version: str) -> bool:
    return shutil.which(f"python{version}") is not None


_add_pyenv_interpreters()
for _required in (OLDEST, NEWEST):
    if not _present(_required):
        sys.stderr.write(f"noxfile: python{_required} not found: pangocdp-async supports Python "
                         f"{OLDEST} to {NEWEST}, and the oldest and the newest must be tested "
                         f"(install it, e.g. `pyenv install {_required}`, or put "
                         f"python{_required} on PATH)\n")
#: The oldest and the newest always (nox fails if either is missing); the others when present.
PYTHONS = [v for v in SUPPORTED if v in (OLDEST, NEWEST) or _present(v)]


#: The wheel sessions run the default suite on these, from the installed wheel.
WHEEL_PYTHONS = [OLDEST, NEWEST]
#: The others present, but the one `make test-all` has used: possibly none.
SOURCE_PYTHONS = [v for v in PYTHONS if v != ALREADY_RUN and v not in WHEEL_PYTHONS]


@nox.session(python=SOURCE_PYTHONS or False)
def tests(session: nox.Session) -> None:
    """The default suite, from the source tree."""
    if not SOURCE_PYTHONS:
        session.log("no supported Python left to run the suite on from the source tree "
                    f"(the wheel sessions run {' and '.join(WHEEL_PYTHONS)}; "
                    f"`make test-all` ran {ALREADY_RUN or 'none'})")
        return
    session.install("-e", ".[test,bench]")
    session.run("pytest", "-m", "not slow", "-p", "no:cacheprovider")


@nox.session(python=WHEEL_PYTHONS)
def wheel(session: nox.Session) -> None:
    """The wheel users install: built, checked, installed, and run from outside the checkout."""
    session.install("build>=1.2", "twine>=5")
    work = Path(tempfile.mkdtemp(prefix="pangocdp-wheel-"))
    try:
        _check_the_wheel(session, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _check_the_wheel(session: nox.Session, work: Path) -> None:
    # Built from a clean copy: an editable install's egg-info in the checkout would make
    # setuptools ship files the configuration no longer names.
    src, dist, outside = work / "src", work / "dist", work / "run"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".nox", "mutants", "*.egg-info", "build", "dist", "_build",
        "__pycache__", ".*_cache"))
    session.run("python", "-m", "build", "--outdir", str(dist), str(src))
    session.run("twine", "check", "--strict", *map(str, sorted(dist.iterdir())))
    wheels = sorted(dist.glob("*.whl"))
    if len(wheels) != 1:
        session.error(f"expected one wheel in {dist}, found {[w.name for w in wheels]}")
    session.run("python", str(ROOT / "tests" / "wheel_check.py"), str(wheels[0]))
    session.install(f"{wheels[0]}[test,bench]")

    outside.mkdir()
    for name in ("tests", "benchmarks"):
        shutil.copytree(ROOT / name, outside / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("README.md", "CHANGELOG.md", "pyproject.toml", "Makefile"):
        shutil.copy(ROOT / name, outside / name)
    session.chdir(outside)
    shown = session.run("pangocdp", "--version", silent=True)
    version = session.run("python", "-c",
                          "import pangocdp_async; print(pangocdp_async.__version__)", silent=True)
    if not isinstance(shown, str) or not isinstance(version, str) \
            or not shown.strip().endswith(version.strip()):
        session.error(f"pangocdp --version says {shown!r}; the package is {version!r}")
    session.log(shown.strip())
    checkout = str(ROOT / "pangocdp_async")
    session.run("python", "-c", "import pangocdp_async, sys; print(pangocdp_async.__file__); "
                f"sys.exit('imported from the checkout' if pangocdp_async.__file__.startswith("
                f"{checkout!r}) else 0)")
    sample = session.run("python", "-c", "from importlib.resources import files; "
                         "print(files('pangocdp_async') / 'examples' / 'orders.jsonl')",
                         silent=True)
    assert isinstance(sample, str)
    session.run("pangocdp", "ingest", sample.strip(), "--object-type", "order", "--source", "POS",
                "--sandbox", "--job", str(outside / "job.sqlite"), "--quiet")
    session.run("pytest", "-m", "not slow", "-p", "no:cacheprovider", "--rootdir", str(outside))


@nox.session(python=NEWEST)
def docs(session: nox.Session) -> None:
    """The reference site, warnings as errors."""
    session.install("-e", ".[docs]")
    out = Path(session.create_tmp()) / "html"
    session.run("sphinx-build", "-E", "-W", "--keep-going", "-n", "-q", "-b", "html",
                str(ROOT / "docs"), str(out))
    session.log(f"docs built in {out}")
