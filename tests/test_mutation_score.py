"""`make mutation`'s report (tests/mutation_score.py) on a mutmut result tree made up here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from . import mutation_score


def _meta(root: Path, module: str, codes: dict[str, int | None]) -> None:
    path = root / f"{module}.meta"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"exit_code_by_key": codes}))


def test_the_score_counts_kills_and_timeouts_against_survivors(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    _meta(tmp_path, "pkg/a.py", {"a.x_f__mutmut_1": 1, "a.x_f__mutmut_2": -24,
                                 "a.x_f__mutmut_3": 0, "a.x_f__mutmut_4": 37,
                                 "a.x_f__mutmut_5": 0})
    _meta(tmp_path, "pkg/b.py", {"b.x_g__mutmut_1": 1, "b.x_g__mutmut_2": None})
    equivalent = tmp_path / "equivalent.txt"
    equivalent.write_text("# comment\na.x_f__mutmut_5 prints the same text\n")
    monkeypatch.setattr(mutation_score, "EQUIVALENT", equivalent)
    code = mutation_score.main(["--mutants", str(tmp_path), "--fail-under", "70",
                                "--survivors"])
    out, err = capsys.readouterr()
    assert "| pkg/a.py | 5 | 3 | 1 | 1 | 0 | 75.0% |" in out  # (3 detected of 4 judged)
    assert "| pkg/b.py | 2 | 1 | 0 | 0 | 1 | 100.0% |" in out
    assert "a.x_f__mutmut_3" in out.splitlines()
    assert code == 1  # b has a mutant not run yet: its score is not known
    assert "pkg/b.py" in err
    assert "pkg/a.py" not in err


def test_no_results_is_said(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert mutation_score.main(["--mutants", str(tmp_path)]) == 2
    assert "make mutation" in capsys.readouterr().err


def test_names_lists_the_survivors_to_test_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    _meta(tmp_path, "pkg/a.py", {"a.x_f__mutmut_1": 1, "a.x_f__mutmut_2": 0,
                                 "a.x_f__mutmut_3": 33, "a.x_f__mutmut_4": 0})
    equivalent = tmp_path / "equivalent.txt"
    equivalent.write_text("a.x_f__mutmut_4 same\n")
    monkeypatch.setattr(mutation_score, "EQUIVALENT", equivalent)
    assert mutation_score.main(["--mutants", str(tmp_path), "--names"]) == 0
    assert capsys.readouterr().out.split() == ["a.x_f__mutmut_2", "a.x_f__mutmut_3"]


def test_an_equivalent_listed_for_a_mutant_that_is_gone_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    _meta(tmp_path, "pkg/a.py", {"a.x_f__mutmut_1": 1})
    equivalent = tmp_path / "equivalent.txt"
    equivalent.write_text("a.x_f__mutmut_9 it was the same once\n")
    monkeypatch.setattr(mutation_score, "EQUIVALENT", equivalent)
    assert mutation_score.main(["--mutants", str(tmp_path)]) == 1
    assert "a.x_f__mutmut_9" in capsys.readouterr().err
