"""JSONL reading errors name file, line and problem; writes are atomic."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess

import pytest

from metarewarding import records
from metarewarding.records import RecordError, read_jsonl, write_json, write_jsonl


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


BIG = [{"id": str(i), "text": "x" * 1000} for i in range(200)]  # ~200 kB


def check_disk_full(folder, err):
    """The error names the file; the previous file is intact; no temporary file is left."""
    assert err.value.errno == errno.ENOSPC
    assert str(folder / "r.jsonl") in str(err.value) or str(folder / "s.json") in str(err.value)
    assert read_jsonl(folder / "r.jsonl") == [{"id": "old"}]
    assert json.loads((folder / "s.json").read_text()) == {"old": True}
    assert sorted(p.name for p in folder.iterdir()) == ["r.jsonl", "s.json"]


@pytest.fixture
def small_filesystem(tmp_path):
    """A real 64 kB tmpfs (needs root and permission to mount, e.g. not in most containers)."""
    mount = shutil.which("mount")
    folder = tmp_path / "small"
    folder.mkdir()
    if mount is None:
        pytest.skip("no mount command: cannot make a small file system for a real disk-full test")
    result = subprocess.run([mount, "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a 64 kB tmpfs here ({result.stderr.strip() or result.returncode}); "
                    "test_disk_full_simulated covers the same code")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.parametrize("writer", ["jsonl", "json"])
def test_disk_full_on_a_real_small_filesystem(small_filesystem, writer):
    folder = small_filesystem
    write_jsonl(folder / "r.jsonl", [{"id": "old"}])
    write_json(folder / "s.json", {"old": True})
    with pytest.raises(OSError) as err:
        if writer == "jsonl":
            write_jsonl(folder / "r.jsonl", BIG)
        else:
            write_json(folder / "s.json", BIG)
    check_disk_full(folder, err)


@pytest.mark.parametrize("where", ["write", "fsync"])
def test_disk_full_simulated(tmp_path, monkeypatch, where):
    """ENOSPC from a write partway through, or only from fsync (as on NFS or with delayed
    allocation): the same guarantees as on a real full disk."""
    import jsonlines

    write_jsonl(tmp_path / "r.jsonl", [{"id": "old"}])
    write_json(tmp_path / "s.json", {"old": True})
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if where == "write":
        real_write = jsonlines.Writer.write

        def write(self, obj):
            if obj["id"] == "100":
                raise full
            return real_write(self, obj)

        monkeypatch.setattr(jsonlines.Writer, "write", write)
    else:
        def fsync(fd):
            raise full

        monkeypatch.setattr(records.os, "fsync", fsync)
    with pytest.raises(OSError) as err:
        write_jsonl(tmp_path / "r.jsonl", BIG)
    check_disk_full(tmp_path, err)
    assert "could not write" in str(err.value) and "r.jsonl" in str(err.value)
