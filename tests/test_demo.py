"""`python -m pangocdp_async`: the demonstration run works and names bad lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from pangocdp_async.__main__ import main


def test_demo_ingests_the_sample(capsys: pytest.CaptureFixture[str]) -> None:
    """The shipped sample lands whole at the embedded fake."""
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "the fake accepted 200 (200 distinct orderIds)" in out
    assert "0 rate-limited" in out


def test_demo_names_the_bad_line(tmp_path: Path) -> None:
    """A line that is not JSON is reported with its file and line number."""
    path = tmp_path / "in.jsonl"
    path.write_text('{"orderId": "1"}\n{"orderId": 2,\n')
    with pytest.raises(SystemExit, match=r"in\.jsonl:2: not valid JSON"):
        main([str(path)])


def test_demo_refuses_a_non_object(tmp_path: Path) -> None:
    """A JSON line that is not an object is reported with its line number."""
    path = tmp_path / "in.jsonl"
    path.write_text('{"orderId": "1"}\n\n[1, 2]\n')
    with pytest.raises(SystemExit, match=r"in\.jsonl:3: a record must be a JSON object"):
        main([str(path)])
