"""Checkpoints inside a model stage: resume after a kill, stale and broken partial files, and
records that do not depend on the chunking or on where a job was killed."""

from __future__ import annotations

import json
import logging

import pytest

from metarewarding import checkpoint as ckpt
from metarewarding.checkpoint import StageCheckpoint, chunk_groups, partial_path
from metarewarding.records import read_jsonl, write_jsonl

GROUPS = [[0, 1], [2, 3], [4, 5], [6]]  # a backend's batches (positions), in decoding order


class Killed(BaseException):
    """What a kill looks like to the code after it: nothing more runs."""


class Work:
    """Two records per prompt; remembers the chunks it was given; optionally dies on a call."""

    def __init__(self, die_on_call: int | None = None):
        self.calls: list[list[int]] = []
        self.die_on_call = die_on_call

    def __call__(self, positions):
        if len(self.calls) + 1 == self.die_on_call:
            raise Killed
        self.calls.append(list(positions))
        return [{"id": f"p{i}-{k}", "x": i / 3} for i in positions for k in range(2)]


EXPECTED = [{"id": f"p{i}-{k}", "x": i / 3} for i in range(7) for k in range(2)]


def killed_after(tmp_path, chunks: int, key: str = "key-a") -> StageCheckpoint:
    """A stage job that finished ``chunks`` chunks of one batch each, then was killed."""
    with pytest.raises(Killed):
        StageCheckpoint(tmp_path / "out.jsonl", key, 1).run(GROUPS, Work(die_on_call=chunks + 1), 2)
    return StageCheckpoint(tmp_path / "out.jsonl", key, 1)


def test_chunks_are_whole_batches_of_at_least_checkpoint_every():
    assert chunk_groups(GROUPS, 1) == [[0, 1], [2, 3], [4, 5], [6]]
    assert chunk_groups(GROUPS, 3) == [[0, 1, 2, 3], [4, 5, 6]]
    assert chunk_groups(GROUPS, 100) == [[0, 1, 2, 3, 4, 5, 6]]


def test_resume_skips_the_completed_chunks(tmp_path, caplog):
    resumed = killed_after(tmp_path, 2)
    assert partial_path(tmp_path / "out.jsonl").read_text().count("\n") == 3  # header + 2 chunks
    work = Work()
    with caplog.at_level(logging.INFO):
        records = resumed.run(GROUPS, work, 2)
    assert work.calls == [[4, 5], [6]]
    assert records == EXPECTED and resumed.resumed == 4
    assert "resumed from" in caplog.text and "4 of 7 prompts already completed, 3 to go" in caplog.text
    resumed.remove()
    assert not partial_path(tmp_path / "out.jsonl").exists()


def test_records_do_not_depend_on_checkpoint_every_or_on_a_kill(tmp_path):
    whole = StageCheckpoint(tmp_path / "a.jsonl", "k", None).run(GROUPS, Work(), 2)
    assert not partial_path(tmp_path / "a.jsonl").exists()  # no checkpoints: no file
    chunked = StageCheckpoint(tmp_path / "b.jsonl", "k", 3).run(GROUPS, Work(), 2)
    resumed = killed_after(tmp_path, 1).run(GROUPS, Work(), 2)
    assert whole == chunked == resumed == EXPECTED


def test_a_partial_from_other_inputs_is_discarded(tmp_path, caplog):
    killed_after(tmp_path, 2, key="key-a")
    other = StageCheckpoint(tmp_path / "out.jsonl", "key-b", 1)
    work = Work()
    with caplog.at_level(logging.INFO):
        assert other.run(GROUPS, work, 2) == EXPECTED
    assert work.calls == GROUPS and other.resumed == 0
    assert "discarding" in caplog.text and "fingerprint differs" in caplog.text
    header = json.loads(partial_path(tmp_path / "out.jsonl").read_text().splitlines()[0])
    assert header["fingerprint"] == "key-b"


def test_a_half_written_last_line_is_dropped_and_its_chunk_redone(tmp_path, caplog):
    resumed = killed_after(tmp_path, 2)
    path = partial_path(tmp_path / "out.jsonl")
    with open(path, "ab") as handle:  # the kill came while the third chunk was being written
        handle.write(b'{"positions":[4,5],"records":[[{"id":"p4-0"')
    work = Work()
    with caplog.at_level(logging.INFO):
        assert resumed.run(GROUPS, work, 2) == EXPECTED
    assert work.calls == [[4, 5], [6]]
    assert "dropping 43 bytes" in caplog.text
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(json.loads(line) for line in lines[:-1])  # clean lines only
    assert len(lines) - 1 == 5  # header + 4 chunks


def test_a_corrupt_line_drops_it_and_everything_after_it(tmp_path):
    killed_after(tmp_path, 3)
    path = partial_path(tmp_path / "out.jsonl")
    lines = path.read_text().splitlines()
    lines[2] = lines[2][:20] + "#" + lines[2][21:]  # a damaged second chunk
    path.write_text("\n".join(lines) + "\n")
    work = Work()
    assert StageCheckpoint(tmp_path / "out.jsonl", "key-a", 1).run(GROUPS, work, 2) == EXPECTED
    assert work.calls == [[2, 3], [4, 5], [6]]


def test_an_unreadable_header_or_chunks_that_split_a_batch_start_afresh(tmp_path, caplog):
    path = partial_path(tmp_path / "out.jsonl")
    path.write_bytes(b"\x00garbage")
    work = Work()
    assert StageCheckpoint(tmp_path / "out.jsonl", "k", 1).run(GROUPS, work, 2) == EXPECTED
    assert work.calls == GROUPS
    # a chunk that holds half of a batch (made with other batches) cannot be reused
    path.write_text(json.dumps({"format": ckpt.FORMAT, "fingerprint": "k"}) + "\n"
                    + json.dumps({"positions": [0], "records": [[{"id": "p0-0"}, {"id": "p0-1"}]]}) + "\n")
    work = Work()
    with caplog.at_level(logging.INFO):
        assert StageCheckpoint(tmp_path / "out.jsonl", "k", 1).run(GROUPS, work, 2) == EXPECTED
    assert work.calls == GROUPS and "do not match this run's batches" in caplog.text


def test_fingerprint_follows_inputs_and_model_files(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "w.bin").write_bytes(b"1234")
    a = ckpt.fingerprint(inputs=[{"p": "q"}], model=ckpt.model_identity(tmp_path / "model"))
    assert a == ckpt.fingerprint(model=ckpt.model_identity(tmp_path / "model"), inputs=[{"p": "q"}])
    assert a != ckpt.fingerprint(inputs=[{"p": "r"}], model=ckpt.model_identity(tmp_path / "model"))
    (tmp_path / "model" / "w.bin").write_bytes(b"12345")  # a replaced model
    assert a != ckpt.fingerprint(inputs=[{"p": "q"}], model=ckpt.model_identity(tmp_path / "model"))


# --- the real stages on the tiny model -----------------------------------------------------------

GENERATION = {"samples": 2, "temperature": 1.0, "top_p": 0.95, "max_new_tokens": 6}
JUDGE = {"judgments": 2, "score_mode": "forced", "temperature": 1.0, "top_p": 0.95, "max_new_tokens": 5,
         "score_min": 0, "score_max": 5}
BACKEND = {"name": "transformers", "batch_size": 4}  # 2 prompts x 2 samples a batch


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory, repo):
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    write_jsonl(path, read_jsonl(repo / "data/prompts/pool.jsonl")[:7])  # prompts of different lengths
    return path


def test_stages_give_the_same_records_chunked_unchunked_and_after_a_kill(tmp_path, tiny_model, prompts_file,
                                                                         repo, monkeypatch):
    from metarewarding.generation import generate_responses
    from metarewarding.judging import judge_responses

    def generate(name, every):
        out = tmp_path / f"{name}.jsonl"
        stats = generate_responses(str(prompts_file), str(tiny_model), BACKEND, GENERATION, 11, str(out),
                                   str(tmp_path / f"{name}.json"), threads=1, checkpoint_every=every)
        return out.read_bytes(), stats

    def judge(name, every):
        out = tmp_path / f"j-{name}.jsonl"
        stats = judge_responses(str(tmp_path / "whole.jsonl"), str(tiny_model), str(repo / "data/templates/judge.txt"),
                                BACKEND, JUDGE, 5, str(out), str(tmp_path / f"j-{name}.json"), threads=1,
                                checkpoint_every=every)
        return out.read_bytes(), stats

    whole, _ = generate("whole", None)
    assert generate("chunked", 1)[0] == whole  # 4 chunks of one batch each
    judged, _ = judge("whole", None)
    assert judge("chunked", 3)[0] == judged

    appended = ckpt.StageCheckpoint._append

    def append_then_die(self, positions, rows):  # the job is killed right after its first checkpoint
        appended(self, positions, rows)
        raise Killed

    monkeypatch.setattr(ckpt.StageCheckpoint, "_append", append_then_die)
    with pytest.raises(Killed):
        judge("killed", 1)
    assert not (tmp_path / "j-killed.jsonl").exists() and partial_path(tmp_path / "j-killed.jsonl").exists()
    monkeypatch.undo()
    again, stats = judge("killed", 1)
    assert again == judged and stats["resumed_from_checkpoint"] == 2
    assert not partial_path(tmp_path / "j-killed.jsonl").exists()


def test_checkpoint_every_is_read_from_the_config_with_its_default():
    assert ckpt.checkpoint_every({"iterations": [{}]}) == 512
    assert ckpt.checkpoint_every({"iterations": [{}], "inference": {"checkpoint_every": None}}) is None
