"""Bad input, through `pangocdp validate` (the dry run) and the reader beneath it: every case is
reported as file:line: reason (a JSON array's item as file:item N), the rest is read, and the
exit code says whether anything was wrong."""

from __future__ import annotations

import gzip
import pathlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from pangocdp_async._bulk import KeyQueue
from pangocdp_async.cli import cli
from pangocdp_async.cli._inputs import BadRecord, InputFile, KeySet, Reader, key_of

GOOD = b'{"orderId": "A-1"}\n'


def validate(*args: str, fmt: list[str] | None = None) -> Any:
    result = CliRunner().invoke(
        cli, ["validate", *args, "--object-type", "order", "--source", "POS", *(fmt or [])])
    return result


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


BAD_CASES = [
    # file name, content, expected line in the output
    ("malformed.jsonl", GOOD + b'{"orderId": "A-2",\n' + GOOD,
     "malformed.jsonl:2: not valid JSON"),
    ("array.jsonl", GOOD + GOOD + b"[1, 2]\n", "array.jsonl:3: a record must be a JSON object, "
                                                "got an array"),
    ("scalar.jsonl", b'"just a string"\n', "scalar.jsonl:1: a record must be a JSON object, "
                                            "got a string"),
    ("latin1.jsonl", GOOD + b'{"name": "Fran\xe7ois"}\n', "latin1.jsonl:2: bytes that are not "
                                                          "UTF-8 (at byte 15)"),
    ("nan.jsonl", b'{"total": NaN}\n' + GOOD, "nan.jsonl:1: not valid JSON: NaN is not a JSON "
                                               "number"),
    ("inf.jsonl", GOOD + b'{"total": Infinity}\n', "inf.jsonl:2: not valid JSON: Infinity is "
                                                    "not a JSON number"),
    ("columns.csv", b"orderId,status\nA-1,NEW\nA-2,NEW,extra\n",
     "columns.csv:3: expected 2 columns (as in the header row), got 3"),
    ("short.csv", b"orderId,status\nA-1\n", "short.csv:2: expected 2 columns (as in the header "
                                            "row), got 1"),
    ("latin1.csv", b"orderId,name\nA-1,Fran\xe7ois\nA-2,Ann\n",
     "latin1.csv:2: bytes that are not UTF-8"),
    ("items.json", b'[{"orderId": "A-1"}, 7, {"orderId": "A-3"}]',
     "items.json:item 2: a record must be a JSON object, got a number"),
    ("broken.json", b'[{"orderId": "A-1"}, {"orderId": ',
     "broken.json:item 2: not a valid JSON array after item 1"),
    ("object.json", b'{"orderId": "A-1"}', "object.json:item 1: a JSON input must be an array "
                                           "of objects, got an object"),
    ("empty.jsonl", b"", "empty.jsonl: empty file, no records"),
    ("blank.jsonl", b"\n\n  \n", "blank.jsonl: empty file, no records"),
    ("empty.csv", b"", "empty.csv: empty file, no records"),
]


@pytest.mark.parametrize(("name", "content", "expected"), BAD_CASES,
                         ids=[c[0] for c in BAD_CASES])
def test_each_bad_input_is_named_and_exits_1(tmp_path: Path, name: str, content: bytes,
                                             expected: str) -> None:
    path = write(tmp_path / name, content)
    result = validate(path)
    assert result.exit_code == 1, result.output
    assert any(line.startswith(str(tmp_path / expected)) for line in result.output.splitlines()), \
        result.output


def test_the_rest_of_a_file_with_bad_lines_is_read(tmp_path: Path) -> None:
    lines = [GOOD] * 5 + [b"{oops\n"] + [GOOD] * 4 + [b"[]\n"]
    path = write(tmp_path / "mixed.jsonl", b"".join(lines))
    result = validate(path, "--json")
    assert result.exit_code == 1
    data = orjson.loads(result.output)
    assert data["records"] == 9
    assert data["bad"] == 2
    assert [p.split(": ")[0] for p in data["problems"]] == [f"{path}:6", f"{path}:11"]


def test_a_truncated_gzip_is_reported_at_the_line_it_stops(tmp_path: Path) -> None:
    body = b"".join(orjson.dumps({"orderId": f"A-{i}", "pad": "x" * 200}) + b"\n"
                    for i in range(2_000))
    packed = gzip.compress(body)
    path = write(tmp_path / "cut.jsonl.gz", packed[: len(packed) - 40])
    result = validate(path)
    assert result.exit_code == 1
    bad = [line for line in result.output.splitlines() if "truncated" in line]
    assert len(bad) == 1
    where, _, reason = bad[0].partition(": ")
    line = int(where.rsplit(":", 1)[1])
    assert 1_900 < line <= 2_001  # everything before the cut was read
    assert "compressed file is truncated" in reason


def test_a_good_gzip_and_a_good_csv_pass(tmp_path: Path) -> None:
    jsonl = write(tmp_path / "a.jsonl.gz", gzip.compress(GOOD * 120))
    csv = write(tmp_path / "b.csv", b"orderId,n\n" + b"".join(b"B-%d,%d\n" % (i, i)
                                                               for i in range(30)))
    array = write(tmp_path / "c.json", orjson.dumps([{"orderId": f"C-{i}"} for i in range(7)]))
    result = validate(jsonl, csv, array)
    assert result.exit_code == 0, result.output
    assert "157 records in 4 batches" in result.output


def test_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    result = validate(str(tmp_path / "nope.jsonl"))
    assert result.exit_code == 2
    assert "nope.jsonl: no such file" in result.output


def test_a_directory_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "dir.jsonl").mkdir()
    result = validate(str(tmp_path / "dir.jsonl"))
    assert result.exit_code == 2
    assert "is a directory" in result.output


def test_an_unreadable_file_is_a_usage_error(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "locked.jsonl", GOOD)
    real_open = pathlib.Path.open

    def refuse(self: pathlib.Path, *args: Any, **kwargs: Any) -> Any:
        if self.name == "locked.jsonl":
            raise PermissionError(13, "Permission denied")
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "open", refuse)
    result = validate(path)
    assert result.exit_code == 2
    assert "locked.jsonl: cannot read: Permission denied" in result.output


def test_unknown_extension_asks_for_format(tmp_path: Path) -> None:
    path = write(tmp_path / "data.txt", GOOD)
    result = validate(path)
    assert result.exit_code == 2
    assert "--format" in result.output
    assert validate(path, fmt=["--format", "jsonl"]).exit_code == 0


def test_csv_column_types(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv",
                 b"orderId,qty,price,vip,tags\nA-1,2,3.5,true,\"[1,2]\"\nA-2,x,1,no,[]\n"
                 b"A-3,1,nan,yes,[]\nA-4,,,,\n")
    result = validate(path, "--column", "qty:int", "--column", "price:float",
                      "--column", "vip:bool", "--column", "tags:json")
    assert result.exit_code == 1
    out = result.output
    assert f"{path}:3: column 'qty': 'x' is not an integer" in out
    assert f"{path}:4: column 'price': 'nan': NaN and Infinity are not valid JSON" in out
    assert "2 records" in out
    # typed values reach the record; an empty cell of a typed column is null
    reader = Reader([InputFile(0, path, "csv", False)],
                    column_types={"qty": "int", "price": "float", "vip": "bool",
                                  "tags": "json"})
    records = [r for r in reader if not isinstance(r, BadRecord)]
    assert records[0] == {"orderId": "A-1", "qty": 2, "price": 3.5, "vip": True, "tags": [1, 2]}
    assert records[1] == {"orderId": "A-4", "qty": None, "price": None, "vip": None,
                          "tags": None}


def test_csv_column_type_for_a_missing_column_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", b"orderId\nA-1\n")
    result = validate(path, "--column", "qty:int")
    assert result.exit_code == 2
    assert "qty" in result.output
    assert validate(path, "--column", "qty").exit_code == 2  # no type
    assert validate(path, "--column", "qty:decimal").exit_code == 2


def test_a_bom_and_crlf_line_ends_are_accepted(tmp_path: Path) -> None:
    path = write(tmp_path / "bom.jsonl", b"\xef\xbb\xbf" + GOOD.replace(b"\n", b"\r\n") * 3)
    csv = write(tmp_path / "bom.csv", b"\xef\xbb\xbforderId\r\nA-1\r\n")
    result = validate(path, csv)
    assert result.exit_code == 0, result.output
    assert "4 records" in result.output


def test_stdin(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["validate", "-", "--object-type", "order", "--source",
                                      "POS"], input=GOOD * 3 + b"nope\n")
    assert result.exit_code == 1
    assert "<stdin>:4: not valid JSON" in result.output


def test_envelope_errors_name_the_option(tmp_path: Path) -> None:
    path = write(tmp_path / "a.jsonl", GOOD)
    result = CliRunner().invoke(cli, ["validate", path, "--object-type", "", "--source", "POS"])
    assert result.exit_code == 2
    assert "--object-type" in result.output


def test_reader_keys_and_skip(tmp_path: Path) -> None:
    """Each record's key (file, line) is pushed before it is yielded; skipped keys are passed
    over without being parsed (a settled bad line is not reported again)."""
    a = write(tmp_path / "a.jsonl", GOOD + b"\n" + b"{bad\n" + GOOD)
    b = write(tmp_path / "b.jsonl", GOOD * 2)
    files = [InputFile(0, a, "jsonl", False), InputFile(1, b, "jsonl", False)]
    keys = KeyQueue()
    out = list(Reader(files, keys=keys))
    assert keys.take(len(keys)) == [key_of(0, 1), key_of(0, 3), key_of(0, 4), key_of(1, 1),
                                    key_of(1, 2)]
    assert isinstance(out[1], BadRecord)
    reader = Reader(files, keys=keys, skip=KeySet([(key_of(0, 1), key_of(0, 3)),
                                                   (key_of(1, 2), key_of(1, 2))]))
    out = list(reader)
    assert keys.take(len(keys)) == [key_of(0, 4), key_of(1, 1)]
    assert reader.skipped == 3
    assert reader.complete


def test_keyset_merges_and_answers_in_order() -> None:
    keys = KeySet([(10, 12), (13, 15), (1, 2), (20, 20)])
    assert len(keys) == 3
    assert [k for k in range(25) if k in keys] == [1, 2, 10, 11, 12, 13, 14, 15, 20]
