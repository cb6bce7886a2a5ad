"""`make mutation`'s report (tests/mutation_score.py) on a mutmut result tree made up here."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from . import mutation_score


def _meta(root: Path, module: str, codes: dict[str, int | None],
          hashes: dict[str, str] | None = None) -> None:
    path = root / f"{module}.meta"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"exit_code_by_key": codes,
                                "hash_by_function_name": hashes or {}}))


@pytest.fixture
def listed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The equivalents file the report reads (empty until a test writes it)."""
    path = tmp_path / "equivalent.txt"
    path.write_text("")
    monkeypatch.setattr(mutation_score, "EQUIVALENT", path)
    return path


def test_the_score_counts_kills_and_timeouts_against_survivors(
        tmp_path: Path, listed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _meta(tmp_path, "pkg/a.py", {"pkg.a.x_f__mutmut_1": 1, "pkg.a.x_f__mutmut_2": -24,
                                 "pkg.a.x_f__mutmut_3": 0, "pkg.a.x_f__mutmut_4": 37,
                                 "pkg.a.x_f__mutmut_5": 0}, {"x_f": "h1"})
    _meta(tmp_path, "pkg/b.py", {"pkg.b.x_g__mutmut_1": 1, "pkg.b.x_g__mutmut_2": None})
    listed.write_text("# comment\npkg.a.x_f__mutmut_5 h1 prints the same text\n")
    code = mutation_score.main(["--mutants", str(tmp_path), "--fail-under", "70",
                                "--survivors"])
    out, err = capsys.readouterr()
    assert "| pkg/a.py | 5 | 3 | 1 | 1 | 0 | 75.0% |" in out  # (3 detected of 4 judged)
    assert "| pkg/b.py | 2 | 1 | 0 | 0 | 1 | 100.0% |" in out
    assert "| all | 7 | 4 | 1 | 1 | 1 | 80.0% |" in out
    assert "pkg.a.x_f__mutmut_3" in out.splitlines()
    assert code == 1  # b has a mutant not run yet: its score is not known
    assert "pkg/b.py" in err
    assert "pkg/a.py" not in err


def test_a_module_under_the_threshold_fails(
        tmp_path: Path, listed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _meta(tmp_path, "pkg/a.py", {"pkg.a.x_f__mutmut_1": 1, "pkg.a.x_f__mutmut_2": 0})
    _meta(tmp_path, "pkg/b.py", {"pkg.b.x_g__mutmut_1": 1})
    assert mutation_score.main(["--mutants", str(tmp_path), "--fail-under", "50"]) == 0
    assert mutation_score.main(["--mutants", str(tmp_path), "--fail-under", "51"]) == 1
    assert capsys.readouterr().err.strip().endswith(": pkg/a.py")


def test_no_results_is_said(tmp_path: Path, listed: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    assert mutation_score.main(["--mutants", str(tmp_path)]) == 2
    assert "make mutation" in capsys.readouterr().err


def test_names_lists_the_survivors_to_test_again(
        tmp_path: Path, listed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _meta(tmp_path, "pkg/a.py", {"pkg.a.x_f__mutmut_1": 1, "pkg.a.x_f__mutmut_2": 0,
                                 "pkg.a.x_f__mutmut_3": 33, "pkg.a.x_f__mutmut_4": 0},
          {"x_f": "h1"})
    listed.write_text("pkg.a.x_f__mutmut_4 h1 same\n")
    assert mutation_score.main(["--mutants", str(tmp_path), "--names"]) == 0
    assert capsys.readouterr().out.split() == ["pkg.a.x_f__mutmut_2", "pkg.a.x_f__mutmut_3"]


@pytest.mark.parametrize("line", [
    "pkg.a.x_f__mutmut_9 h1 the mutant is gone",
    "pkg.a.x_f__mutmut_2 h0 the function changed since it was judged",
])
def test_an_equivalent_that_may_no_longer_be_the_same_mutant_fails(
        tmp_path: Path, listed: Path, capsys: pytest.CaptureFixture[str], line: str) -> None:
    _meta(tmp_path, "pkg/a.py", {"pkg.a.x_f__mutmut_1": 1, "pkg.a.x_f__mutmut_2": 0},
          {"x_f": "h1"})
    listed.write_text(line + "\n")
    assert mutation_score.main(["--mutants", str(tmp_path)]) == 1
    assert line.split()[0] in capsys.readouterr().err


def test_a_listed_equivalent_that_a_test_detects_counts_as_detected(
        tmp_path: Path, listed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _meta(tmp_path, "pkg/a.py", {"pkg.a.x_f__mutmut_1": 1, "pkg.a.x_f__mutmut_2": 0},
          {"x_f": "h1"})
    listed.write_text("pkg.a.x_f__mutmut_1 h1 thought the same\n")
    assert mutation_score.main(["--mutants", str(tmp_path)]) == 0
    assert "| pkg/a.py | 2 | 1 | 1 | 0 | 0 | 50.0% |" in capsys.readouterr().out


def test_the_mutation_run_leaves_out_what_make_test_leaves_out() -> None:
    """The README says the mutation run skips the slow tests as `make test` does: the same
    marker expression in both, and no test picked out by name."""
    root = Path(__file__).resolve().parent.parent
    found = re.search(r"^pytest_add_cli_args = \[(.*?)\]$", (root / "pyproject.toml").read_text(),
                      re.M | re.S)
    assert found is not None
    args = re.findall(r'"([^"]*)"', found.group(1))
    assert args[args.index("-m") + 1] == "not slow"
    assert not any(a.startswith("--deselect") or a == "-k" for a in args)
    make_test = re.search(r"^test: .*\n\t(.*)$", (root / "Makefile").read_text(), re.M)
    assert make_test is not None
    assert make_test.group(1).endswith('pytest -m "not slow"')
    assert "The tests marked slow are left out of the run, as they are of `make test`" in \
        " ".join((root / "README.md").read_text().split())


def test_survivors_are_tried_after_every_test_is_traced_again() -> None:
    """The README says survivors are tried after a full trace: `make mutation` drops mutmut's
    test-to-function map (kept only for new tests otherwise) between the run and the retry."""
    root = Path(__file__).resolve().parent.parent
    recipe = (root / "Makefile").read_text().split("\nmutation: $(VENV)/.installed-test\n")[1]
    steps = [line.strip() for line in recipe.split("\n\n")[0].splitlines()
             if line.startswith("\t") and not line.strip().startswith("#")]
    assert steps[0] == "$(BIN)/mutmut run --max-children 2"
    assert steps[1] == "rm -f mutants/mutmut-stats.json"
    assert steps[2].startswith('survivors="$$($(BIN)/python tests/mutation_score.py --names)"')
    assert "the trace is made again from every test" in " ".join(
        (root / "README.md").read_text().split())
