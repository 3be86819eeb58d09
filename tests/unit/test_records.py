"""JSONL reading errors name file, line and problem; writes are atomic."""

from __future__ import annotations

import pytest

from metarewarding.records import RecordError, read_jsonl, write_jsonl


def test_round_trip(tmp_path):
    path = tmp_path / "r.jsonl"
    assert write_jsonl(path, [{"id": "a", "x": "é"}, {"id": "b", "x": 2}]) == 2
    assert read_jsonl(path, required=("id",), id_field="id") == [{"id": "a", "x": "é"}, {"id": "b", "x": 2}]


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"id": "a"}\n{"id": \n', "r.jsonl:2: malformed JSON"),
        ('{"id": "a"}\n[1, 2]\n', "r.jsonl:2: expected a JSON object, got list"),
        ('{"id": "a"}\n{"other": 1}\n', "r.jsonl:2: missing field(s) id"),
        ('{"id": "a"}\n{"id": "b"}\n{"id": "a"}\n', "r.jsonl:3: duplicate id 'a' (first seen on line 1)"),
        ("\n\n", "r.jsonl: no records"),
    ],
)
def test_bad_files_name_the_line_and_problem(tmp_path, content, message):
    path = tmp_path / "r.jsonl"
    path.write_text(content)
    with pytest.raises(RecordError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        read_jsonl(path, required=("id",), id_field="id")


def test_non_utf8_and_missing_files(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"id": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(RecordError, match="latin1.jsonl: not valid UTF-8"):
        read_jsonl(path)
    with pytest.raises(RecordError, match="nope.jsonl: file not found"):
        read_jsonl(tmp_path / "nope.jsonl")


def test_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "r.jsonl"
    write_jsonl(path, [{"id": "old"}])

    def records():
        yield {"id": "new"}
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_jsonl(path, records())
    assert read_jsonl(path) == [{"id": "old"}]
    assert [p.name for p in tmp_path.iterdir()] == ["r.jsonl"]
