"""The transformers backend on a tiny real model: shapes, order, seeds, stop reasons, choices."""

from __future__ import annotations

import pytest

from metarewarding.backends import ChatPrompt, Sampling, load_backend, user_prompt
from metarewarding.judging import sample_option, score_options


@pytest.fixture(scope="module")
def backend(tiny_model):
    return load_backend({"name": "transformers", "batch_size": 4}, str(tiny_model))


PROMPTS = [user_prompt("short"), user_prompt("a much longer prompt than the first one " * 3), user_prompt("mid size prompt")]


def test_n_samples_per_prompt_in_prompt_order(backend):
    out = backend.generate(PROMPTS, n=3, sampling=Sampling(8, 0.8, 0.95), seed=1)
    assert [len(c) for c in out] == [3, 3, 3]
    lengths = [len(backend.tokenizer(backend.render(p), add_special_tokens=False)["input_ids"]) for p in PROMPTS]
    assert [c[0].prompt_tokens for c in out] == lengths
    for completions in out:
        for c in completions:
            assert c.finish_reason in ("stop", "length")
            assert c.completion_tokens <= 8
            if c.finish_reason == "length":
                assert c.completion_tokens == 8


def test_same_seed_same_samples_other_seed_other_samples(backend):
    sampling = Sampling(10, 1.0, 1.0)
    a = backend.generate(PROMPTS, n=2, sampling=sampling, seed=5)
    b = backend.generate(PROMPTS, n=2, sampling=sampling, seed=5)
    c = backend.generate(PROMPTS, n=2, sampling=sampling, seed=6)
    assert a == b
    assert a != c


def test_greedy_samples_are_identical(backend):
    out = backend.generate(PROMPTS[:1], n=2, sampling=Sampling(6, 0.0), seed=0)
    assert out[0][0].text == out[0][1].text


def test_choose_scores_every_option(backend):
    prompt = ChatPrompt(user_prompt("grade").messages, continuation="fine\nScore:")
    choice = backend.choose([prompt, prompt], score_options(0, 5))[0]
    assert set(choice.logprobs) == {" 0", " 1", " 2", " 3", " 4", " 5"}
    assert choice.option == max(choice.logprobs, key=choice.logprobs.get)


def test_sample_option_follows_temperature():
    import random

    logprobs = {"a": -0.1, "b": -2.5}
    assert sample_option(logprobs, 0, random.Random(0)) == "a"
    draws = [sample_option(logprobs, 1.0, random.Random(i)) for i in range(400)]
    # p(b) = e^-2.5 / (e^-0.1 + e^-2.5) = 0.083
    assert 0.04 < draws.count("b") / 400 < 0.13


def test_score_options_need_integer_bounds():
    assert score_options(1, 3) == [" 1", " 2", " 3"]
    with pytest.raises(ValueError, match="integer bounds"):
        score_options(0, 4.5)


def test_greedy_decoding_matches_transformers_generate(backend):
    """The hand-written decode loop (left padding, cache, stopped rows masked) gives the same
    greedy tokens as transformers' own generate, prompt by prompt."""
    out = backend.generate(PROMPTS, n=1, sampling=Sampling(12, 0.0), seed=0)
    for prompt, (completion,) in zip(PROMPTS, out):
        ids = backend.tokenizer(backend.render(prompt), add_special_tokens=False, return_tensors="pt")
        reference = backend.model.generate(**ids, max_new_tokens=12, do_sample=False,
                                           eos_token_id=backend.eos_ids, pad_token_id=backend.tokenizer.pad_token_id)
        new = reference[0, ids["input_ids"].shape[1]:].tolist()
        expected = backend._completion(ids["input_ids"].shape[1], new)
        assert completion == expected


def test_fused_forced_line_matches_generate_then_choose(backend):
    """Scoring the options from the generation's own cache equals a fresh pass over the text."""
    from metarewarding.backends.base import generate_then_choose

    options = score_options(0, 5)
    fused = backend.generate_forced(PROMPTS, 2, Sampling(10, 0.8, 0.95), 3, "\nScore:", options)
    plain = generate_then_choose(backend, PROMPTS, 2, Sampling(10, 0.8, 0.95), 3, "\nScore:", options)
    compared = 0
    for row_fused, row_plain in zip(fused, plain):
        for (c1, lp1), (c2, lp2) in zip(row_fused, row_plain):
            assert c1 == c2
            if c1.text == c1.text.rstrip():  # same token boundary in both paths
                compared += 1
                assert lp1 == pytest.approx(lp2, abs=2e-3)
    assert compared > 0
