"""Templates check their placeholders; prompt draws are seeded, disjoint and exclude eval prompts."""

from __future__ import annotations

import pytest

from metarewarding.prompts import check_pool_size, sample_prompts
from metarewarding.records import read_jsonl, write_jsonl
from metarewarding.templates import JUDGE_FIELDS, TemplateError, load_template, render


def test_template_missing_placeholder_is_named(tmp_path):
    path = tmp_path / "judge.txt"
    path.write_text("Grade this: {response}")
    with pytest.raises(TemplateError, match=r"judge.txt: missing placeholder\(s\) \{question\}"):
        load_template(path, JUDGE_FIELDS)


def test_render_fills_in_one_pass_and_leaves_other_braces():
    out = render("Q: {question}\nA: {response} {other}", question="say {response}", response="x = {1}")
    assert out == "Q: say {response}\nA: x = {1} {other}"


def make_pool(tmp_path, n, evals=()):
    write_jsonl(tmp_path / "pool.jsonl", [{"prompt_id": f"p{i}", "prompt": f"Prompt number {i}"} for i in range(n)])
    write_jsonl(tmp_path / "eval.jsonl", [{"prompt_id": f"e{i}", "prompt": p} for i, p in enumerate(evals)] or [{"prompt_id": "e", "prompt": "none"}])
    return str(tmp_path / "pool.jsonl"), [str(tmp_path / "eval.jsonl")]


def draw(tmp_path, pool, exclude, counts, t, seed=3):
    out = tmp_path / f"iter{t}.jsonl"
    sample_prompts(pool, exclude, counts, t, seed, str(out), str(tmp_path / f"stats{t}.json"))
    return [r["prompt_id"] for r in read_jsonl(out)]


def test_draws_are_disjoint_seeded_and_exclude_eval_prompts(tmp_path):
    pool, exclude = make_pool(tmp_path, 20, evals=["  PROMPT number 3 ", "prompt number 4"])
    first = draw(tmp_path, pool, exclude, [6, 6], 1)
    second = draw(tmp_path, pool, exclude, [6, 6], 2)
    assert len(first) == len(second) == 6 and not set(first) & set(second)
    assert not {"p3", "p4"} & set(first + second)
    assert draw(tmp_path, pool, exclude, [6, 6], 1) == first
    assert draw(tmp_path, pool, exclude, [6, 6], 1, seed=4) != first


def test_pool_too_small_is_an_error_naming_the_file(tmp_path):
    pool, exclude = make_pool(tmp_path, 10, evals=["Prompt number 1"])
    with pytest.raises(ValueError, match=r"pool.jsonl: 9 usable prompts \(1 removed as evaluation prompts\), but the iterations need 12"):
        check_pool_size(pool, exclude, [6, 6])
