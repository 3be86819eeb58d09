"""The transformers backend on a tiny real model: shapes, order, seeds, stop reasons, choices."""

from __future__ import annotations

import pytest
import torch

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


HEADER = "Grade the response below with the additive five point rubric, one point per criterion met. " * 2
SHARED = [user_prompt(f"{HEADER}\nQuestion: {q}\nResponse: {r}")
          for q, responses in [("why is the sky blue when the sun is high", ["light scatters", "no idea at all"]),
                               ("name a prime number", ["seven", "nine, which is odd"])]
          for r in responses] + [user_prompt("an unrelated short prompt")]


def test_prefix_levels_cut_sequences_into_shared_segments():
    from metarewarding.backends.hf import PrefixNode, prefix_levels

    ids = [[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 7], [1, 2, 9], [1, 2, 3, 4, 5, 6, 8], [5]]
    levels, rows = prefix_levels(ids, 2)
    # [1, 2, ...] share 2 tokens, then [3, 4] is shared by three of them; [5, 6] is not cut off
    # row 0 because it would leave no token of its own; [5] shares nothing
    assert levels == [
        [PrefixNode(0, [1, 2]), PrefixNode(0, [5])],
        [PrefixNode(0, [3, 4]), PrefixNode(0, [9]), PrefixNode(1, [])],
        [PrefixNode(0, [5, 6]), PrefixNode(0, [5, 6, 8]), PrefixNode(0, [7]), PrefixNode(1, []), PrefixNode(2, [])],
    ]
    assert rows == [0, 2, 3, 1, 4]
    for r, sequence in enumerate(ids):  # the segments along each path give the sequence back
        position, segments = rows[r], []
        for level in reversed(levels):
            segments.insert(0, level[position].tokens)
            position = level[position].parent
        assert sum(segments, []) == sequence
    # identical sequences share all but their last token
    assert prefix_levels([[3, 4], [3, 4]], 1) == ([[PrefixNode(0, [3])], [PrefixNode(0, [4]), PrefixNode(0, [4])]],
                                                   [0, 1])
    with pytest.raises(ValueError, match="at least one token"):
        prefix_levels([[1], []], 2)


def test_shared_prefixes_give_the_logits_of_separate_prompts(backend, monkeypatch):
    from metarewarding.backends.hf import prefix_levels

    encoded = backend._encode_all(SHARED)
    levels, _ = prefix_levels(encoded, backend.min_shared_prefix)
    assert len(levels) >= 3 and len(levels[0]) == 2  # header+question shared, then the response
    _, shared, _, next_pos = backend._prefill(encoded, repeat=2)
    monkeypatch.setattr(backend, "min_shared_prefix", 10**9)  # no sharing: one left-padded batch
    _, plain, _, plain_pos = backend._prefill(encoded, repeat=2)
    assert next_pos.tolist() == plain_pos.tolist()
    assert next_pos[::2, 0].tolist() == [len(t) for t in encoded]
    assert (shared - plain).abs().max().item() < 1e-4


def test_greedy_decoding_with_shared_prefixes_matches_transformers_generate(backend):
    out = backend.generate(SHARED, n=2, sampling=Sampling(10, 0.0), seed=0)
    for prompt, completions in zip(SHARED, out):
        ids = backend.tokenizer(backend.render(prompt), add_special_tokens=False, return_tensors="pt")
        reference = backend.model.generate(**ids, max_new_tokens=10, do_sample=False,
                                           eos_token_id=backend.eos_ids, pad_token_id=backend.tokenizer.pad_token_id)
        expected = backend._completion(ids["input_ids"].shape[1], reference[0, ids["input_ids"].shape[1]:].tolist())
        assert completions == [expected, expected]


def test_choose_with_shared_prefixes_matches_one_prompt_at_a_time(backend):
    options = score_options(0, 5)
    together = backend.choose(SHARED, options)
    alone = [backend.choose([p], options)[0] for p in SHARED]
    for a, b in zip(together, alone):
        assert a.option == b.option
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


@pytest.fixture(params=["pytorch", "kernel"])
def logits_as(request):
    """The sampler's two paths: float32 logits (PyTorch's softmax and top-k) and bfloat16
    logits on a CPU (``cpu_kernels.nucleus_candidates``)."""
    import os

    import torch

    from metarewarding.backends import cpu_kernels

    if request.param == "kernel":
        if cpu_kernels.kernel() is None and not os.environ.get("CI"):
            pytest.skip("no C compiler for the CPU kernels")
        return lambda logits: logits.bfloat16()
    return lambda logits: logits.to(torch.float32)


@pytest.mark.parametrize("candidates", [(2,), (3,), (1, 2), (2, 4), (256,), ()])
def test_nucleus_sampling_keeps_the_tokens_whose_preceding_mass_is_within_top_p(candidates, logits_as, monkeypatch):
    """probs 0.5, 0.3, 0.12, 0.08 at top_p 0.85: the mass before each token is 0, 0.5, 0.8, 0.92,
    so tokens 0-2 are kept. Two or three candidates do not show it (those above the least
    likely hold 0.5 and 0.8 <= 0.85), so the row goes on to the next search or the full sort;
    four or 256 hold it; all agree."""
    import torch

    from metarewarding.backends import hf

    logits = logits_as(torch.tensor([0.5, 0.3, 0.12, 0.08]).log().repeat(400, 1))
    reference = hf._sample(logits, Sampling(1, 1.0, 0.85), [hf._generator("cpu", 7, i, 0) for i in range(400)])
    monkeypatch.setattr(hf, "NUCLEUS_CANDIDATES", candidates)
    generators = [hf._generator("cpu", 7, i, 0) for i in range(400)]
    drawn = hf._sample(logits, Sampling(1, 1.0, 0.85), generators).tolist()
    assert drawn == reference.tolist()  # the same draws, whichever path found the nucleus
    counts = [drawn.count(t) for t in range(4)]
    assert counts[3] == 0 and all(c > 0 for c in counts[:3])
    assert counts[0] / 400 == pytest.approx(0.5 / 0.92, abs=0.08)  # renormalised over the nucleus
    greedy = hf._sample(logits[:2], Sampling(1, 0.0), generators[:2]).tolist()
    assert greedy == [0, 0]


def test_nucleus_search_in_stages_draws_what_a_full_sort_draws(logits_as, monkeypatch):
    """Rows from peaked to flat over 1,000 tokens: their nuclei are found among the first 8
    candidates, among 64, or only by the full sort; every row draws the token that sorting all
    rows in full gives it, with the same random numbers, ties included."""
    import torch

    from metarewarding.backends import hf

    torch.manual_seed(0)
    # rounded to bfloat16 and back, as the model's logits come: many tokens tie
    logits = logits_as((torch.randn(60, 1000) * torch.linspace(12.0, 0.2, 60)[:, None]).bfloat16())
    probs = torch.softmax(logits.float(), dim=-1).sort(dim=-1, descending=True).values
    nucleus = ((probs.cumsum(dim=-1) - probs) <= 0.9).sum(dim=-1)
    assert (nucleus <= 8).sum() >= 5 and ((nucleus > 8) & (nucleus <= 64)).sum() >= 5 and (nucleus > 64).sum() >= 5
    sampling = Sampling(1, 1.0, 0.9)
    for seed in range(3):
        monkeypatch.setattr(hf, "NUCLEUS_CANDIDATES", ())
        full = hf._sample(logits, sampling, [hf._generator("cpu", seed, i, 0) for i in range(60)])
        monkeypatch.setattr(hf, "NUCLEUS_CANDIDATES", (8, 64))
        staged = hf._sample(logits, sampling, [hf._generator("cpu", seed, i, 0) for i in range(60)])
        assert staged.tolist() == full.tolist()


def test_nucleus_search_leaves_a_tie_at_the_candidates_edge_to_the_next_search(logits_as, monkeypatch):
    """probs 0.1, 0.1, 0.1, 0.3, 0.4 (tokens 0-4) at top_p 0.75: sorted, 0.4, 0.3, then the
    tie at 0.1 in token order; the mass before the first of the tie is 0.7, so the nucleus is
    tokens 4, 3 and 0. Three candidates hold 4, 3 and one of the tie (PyTorch's top-k takes
    token 2 here): those above the smallest hold 0.7 <= 0.75, so the row goes on to the full
    sort and never draws token 1 or 2, as the full sort alone does."""
    import torch

    from metarewarding.backends import hf

    logits = logits_as(torch.tensor([0.1, 0.1, 0.1, 0.3, 0.4]).log().repeat(300, 1))
    generators = [hf._generator("cpu", 3, i, 0) for i in range(300)]
    monkeypatch.setattr(hf, "NUCLEUS_CANDIDATES", (3,))
    drawn = hf._sample(logits, Sampling(1, 1.0, 0.75), generators).tolist()
    assert set(drawn) == {0, 3, 4}
    monkeypatch.setattr(hf, "NUCLEUS_CANDIDATES", ())
    generators = [hf._generator("cpu", 3, i, 0) for i in range(300)]
    assert hf._sample(logits, Sampling(1, 1.0, 0.75), generators).tolist() == drawn


def test_nucleus_draw_by_inverse_cdf_hand_worked():
    """probs 0.5, 0.3, 0.12, 0.08 at top_p 0.85 keep tokens 0-2 (kept mass 0.92, cumulative
    0.5, 0.8, 0.92). A uniform u picks the first token whose cumulative mass exceeds 0.92 u:
    u 0 -> 0; 0.5 (0.46) -> 0; 0.6 (0.552) -> 1; 0.9 (0.828) -> 2; 0.99999 -> 2, never token 3.
    Token ids come from ``index``, here the probabilities' order reversed."""
    import torch

    from metarewarding.backends.hf import _nucleus_draw

    probs = torch.tensor([0.5, 0.3, 0.12, 0.08]).repeat(5, 1)
    index = torch.tensor([13, 12, 11, 10]).repeat(5, 1)
    uniforms = torch.tensor([0.0, 0.5, 0.6, 0.9, 0.99999])
    assert _nucleus_draw(probs, index, 0.85, uniforms).tolist() == [13, 13, 12, 11, 11]
    # top_p 1 keeps every token (cumulative 0.5, 0.8, 0.92, 1): token k takes the uniforms in
    # [cumulative k-1, cumulative k), so 0.5 -> 1 and 0.99999 -> 3; top_p 0 keeps the first alone
    assert _nucleus_draw(probs, index, 1.0, uniforms).tolist() == [13, 12, 12, 11, 10]
    assert _nucleus_draw(probs, index, 0.0, uniforms).tolist() == [13] * 5


class _GqaModule(torch.nn.Module):
    num_key_value_groups = 3
    is_causal = True


def _cache_views(batch, kv_heads, length, capacity, dim, dtype):
    """Keys and values as ``GrowingLayer`` returns them: the first ``length`` positions of
    zero-initialised [batch, kv_heads, capacity, dim] buffers."""
    out = []
    for _ in range(2):
        buffer = torch.zeros(batch, kv_heads, capacity, dim, dtype=dtype)
        buffer[:, :, :length] = torch.randn(batch, kv_heads, length, dim, dtype=dtype)
        out.append(buffer[:, :, :length])
    return out


@pytest.mark.parametrize("heads,kv_heads", [(9, 3), (3, 3)])
def test_grouped_attention_matches_sdpa_on_cache_views(heads, kv_heads, monkeypatch):
    """9 query heads on 3 key/value heads (and 3 on 3), padding masked, keys and values as
    views into larger cache buffers, one query token (decoding) or several (prefill): the same
    output as transformers' sdpa function (float64, so that only the order of the sums differs),
    computed without it where the grouped paths apply."""
    import transformers.integrations.sdpa_attention as sdpa_module

    from metarewarding.backends.hf import grouped_attention

    sdpa_attention_forward = sdpa_module.sdpa_attention_forward
    fallbacks = []
    monkeypatch.setattr(sdpa_module, "sdpa_attention_forward",
                        lambda *args, **kwargs: fallbacks.append(args[1].shape) or sdpa_attention_forward(*args, **kwargs))
    torch.manual_seed(0)
    module = _GqaModule()
    module.num_key_value_groups = heads // kv_heads
    key, value = _cache_views(4, kv_heads, 11, 20, 8, torch.float64)
    query = torch.randn(4, 1, heads, 8, dtype=torch.float64).transpose(1, 2)  # as the model makes it
    mask = torch.ones(4, 1, 1, 11, dtype=torch.bool)
    mask[0, ..., :3] = False  # left padding
    mask[2, ..., 7] = False   # a stopped row's position
    for attention_mask in (mask, None):
        got, _ = grouped_attention(module, query, key, value, attention_mask, scaling=0.3)
        want, _ = sdpa_attention_forward(module, query, key, value, attention_mask, scaling=0.3)
        assert got.shape == want.shape == (4, 1, heads, 8)
        assert torch.allclose(got, want, atol=1e-12)
    # several query tokens (a prefill level continuing the cache): stacked queries, same result
    query = torch.randn(4, 5, heads, 8, dtype=torch.float64).transpose(1, 2)
    prefill_mask = torch.ones(4, 1, 5, 11, dtype=torch.bool).tril(diagonal=6)
    prefill_mask[0, ..., :3] = False
    got, _ = grouped_attention(module, query, key, value, prefill_mask)
    want, _ = sdpa_attention_forward(module, query, key, value, prefill_mask)
    assert got.shape == want.shape == (4, 5, heads, 8)
    assert torch.allclose(got, want, atol=1e-12)
    # decoding always took the grouped path; a prefill did where heads are grouped
    assert fallbacks == ([] if heads > kv_heads else [query.shape])
    # without a mask, transformers' own function decides (causal, or a cropped key)
    got, _ = grouped_attention(module, query, key[:, :, :5], value[:, :, :5], None)
    assert torch.equal(got, sdpa_attention_forward(module, query, key[:, :, :5], value[:, :, :5], None)[0])
    assert fallbacks[-1] == query.shape


def test_whole_buffer_of_a_cache_view():
    from metarewarding.backends.hf import _whole_buffer

    buffer = torch.arange(2 * 3 * 5 * 4.0).reshape(2, 3, 5, 4)
    assert _whole_buffer(buffer[:, :, :2]).shape == (2, 3, 5, 4)
    assert torch.equal(_whole_buffer(buffer[:, :, :2]), buffer)
    assert torch.equal(_whole_buffer(buffer[1:, :, :3]), buffer[1:])  # a later row's buffer
    assert _whole_buffer(buffer) is buffer                      # already whole
    for other in (buffer[:, 1:, :2], buffer[:, :, 1:3], buffer[:1, :, 1:3], buffer[..., :2], buffer.transpose(1, 2)):
        assert _whole_buffer(other) is other                     # not a leading slice of one buffer


def test_bfloat16_on_cpu_prepacks_linear_layers_with_identical_products(tiny_model):
    """bfloat16 on a CPU: every linear layer runs on a prepacked copy of its weight, and the
    logits are bit for bit those of the unchanged layers."""
    from transformers import AutoModelForCausalLM

    packed = load_backend({"name": "transformers", "batch_size": 4, "dtype": "bfloat16", "device": "cpu"},
                          str(tiny_model))
    if not packed.packed_linear_layers:
        pytest.skip("this PyTorch build has no oneDNN bfloat16 linear kernels")
    plain = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.bfloat16).eval()
    assert packed.packed_linear_layers == sum(isinstance(m, torch.nn.Linear) for m in plain.modules())
    assert packed.describe()["packed_linear_layers"] == packed.packed_linear_layers
    ids = torch.tensor([packed.tokenizer(packed.render(p), add_special_tokens=False)["input_ids"][:6] for p in PROMPTS])
    with torch.inference_mode():
        assert torch.equal(packed.model(input_ids=ids).logits, plain(input_ids=ids).logits)


def test_row_layout_hand_worked():
    """Rows 0..4 continue nodes [1, 0, 1, 2, 0]: node 0 has rows 1 and 4, node 1 rows 0 and 2,
    node 2 row 3 and an empty slot."""
    from metarewarding.backends.hf import RowLayout

    layout = RowLayout([1, 0, 1, 2, 0], 3, "cpu")
    assert (layout.per_node, layout.in_order, layout.full) == (2, False, False)
    assert layout.slots.tolist() == [1, 4, 0, 2, 3, 5] and layout.flat.tolist() == [2, 0, 3, 4, 1]
    rows = torch.arange(1.0, 6.0).reshape(5, 1, 1, 1)  # row r holds r + 1
    nodes = layout.to_nodes(rows)
    assert nodes.shape == (3, 1, 2, 1) and nodes.flatten().tolist() == [2, 5, 1, 3, 4, 0]
    back = torch.zeros(5, 1, 1, 1)
    layout.to_rows(back, nodes)
    assert torch.equal(back, rows)
    layout.to_rows(back, nodes, add=True)
    assert torch.equal(back, 2 * rows)
    grouped = RowLayout([0, 0, 1, 1], 2, "cpu")
    assert (grouped.per_node, grouped.in_order, grouped.full) == (2, True, True)
    assert grouped.to_nodes(torch.arange(4.0).reshape(4, 1, 1, 1)).flatten().tolist() == [0, 1, 2, 3]


def test_shared_prefix_attention_matches_attention_over_every_rows_keys(monkeypatch):
    """Keys shared by several rows (one segment for all 5 rows, one with 3 nodes whose rows
    are not in order), then each row's own keys in a cache buffer: the same output as sdpa over
    every row's whole keys (float64), for one new token and for two, with and without masks.
    A mask per head falls back to sdpa on the materialized keys."""
    import transformers.integrations.sdpa_attention as sdpa_module

    from metarewarding.backends.hf import RowLayout, SharedSegment, grouped_attention

    sdpa_attention_forward = sdpa_module.sdpa_attention_forward
    fallbacks = []
    monkeypatch.setattr(sdpa_module, "sdpa_attention_forward",
                        lambda *args, **kwargs: fallbacks.append(args[1].shape) or sdpa_attention_forward(*args, **kwargs))
    torch.manual_seed(1)
    rows, heads, kv_heads, dim = 5, 6, 2, 8
    module = _GqaModule()
    module.num_key_value_groups = heads // kv_heads
    row_nodes = [[0] * rows, [1, 0, 1, 2, 0]]
    segments = tuple(SharedSegment(torch.randn(nodes, kv_heads, width, dim, dtype=torch.float64),
                                   torch.randn(nodes, kv_heads, width, dim, dtype=torch.float64),
                                   RowLayout(row_node, nodes, "cpu"))
                     for nodes, width, row_node in [(1, 6, row_nodes[0]), (3, 4, row_nodes[1])])
    for q_len in (1, 2):
        own_key, own_value = _cache_views(rows, kv_heads, 3, 7, dim, torch.float64)
        whole_key = torch.cat([s.keys[row_node] for s, row_node in zip(segments, row_nodes)] + [own_key], dim=2)
        whole_value = torch.cat([s.values[row_node] for s, row_node in zip(segments, row_nodes)] + [own_value], dim=2)
        own_key = own_key.view_as(own_key)
        own_key.shared_prefix = segments
        query = torch.randn(rows, q_len, heads, dim, dtype=torch.float64).transpose(1, 2)
        mask = torch.ones(rows, 1, q_len, 13, dtype=torch.bool).tril(diagonal=13 - q_len)
        mask[0, ..., :2] = False   # padding in the first segment
        mask[3, ..., 7] = False    # and in the second
        mask[1, ..., 11] = False   # a stopped row's own position
        for attention_mask in (mask, torch.zeros(mask.shape, dtype=torch.float64).masked_fill_(~mask, -1e9), None):
            if attention_mask is None and q_len > 1:
                continue  # without a mask, several new tokens would see each other's future
            got, _ = grouped_attention(module, query, own_key, own_value, attention_mask, scaling=0.3)
            want, _ = sdpa_attention_forward(module, query, whole_key, whole_value, attention_mask, scaling=0.3)
            assert got.shape == want.shape == (rows, q_len, heads, dim)
            assert torch.allclose(got, want, atol=1e-12)
        assert fallbacks == []
        per_head = mask.expand(rows, heads, q_len, 13)
        got, _ = grouped_attention(module, query, own_key, own_value, per_head, scaling=0.3)
        assert fallbacks.pop() == query.shape
        assert torch.allclose(got, sdpa_attention_forward(module, query, whole_key, whole_value, per_head, scaling=0.3)[0],
                              atol=1e-12)


@pytest.mark.parametrize("min_keys", [0, 200, 500])
def test_decoding_over_shared_prompts_matches_a_copy_per_row(tiny_model, min_keys, monkeypatch):
    """The shared-prefix decoding cache (levels kept: all of them, the first two, the first
    only; the rest copied below) samples the same completions and scores the same forced line
    as a cache with a copy of every key per row, and takes the shared path."""
    import metarewarding.backends.hf as hf

    backend = load_backend({"name": "transformers", "batch_size": 10}, str(tiny_model))
    options = score_options(0, 5)
    calls = []
    shared_attention = hf._shared_prefix_attention
    monkeypatch.setattr(hf, "_shared_prefix_attention",  # decoding with a cache per row passes no segments
                        lambda *a: (a[-1] and calls.append(len(a[-1]))) or shared_attention(*a))
    monkeypatch.setattr(hf, "SHARED_KEYS_MIN", 10**9)
    want = backend.generate_forced(SHARED, 2, Sampling(10, 0.8, 0.95), 5, "\nScore:", options)
    assert calls == []
    monkeypatch.setattr(hf, "SHARED_KEYS_MIN", min_keys)
    got = backend.generate_forced(SHARED, 2, Sampling(10, 0.8, 0.95), 5, "\nScore:", options)
    assert set(calls) == {{0: 3, 200: 2, 500: 1}[min_keys]}  # segments kept in the one batch
    for row_got, row_want in zip(got, want):
        for (completion, scores), (completion_want, scores_want) in zip(row_got, row_want):
            assert completion == completion_want
            assert scores == pytest.approx(scores_want, abs=1e-5)


def test_freed_memory_is_kept_for_the_next_tensors():
    """With freed memory kept (glibc), allocating and filling a 16 MiB tensor sixteen times
    over faults in at most four tensors' pages (the heap settles after a few reuses; after
    other tests it re-lays a chunk now and then). glibc's default, which hands such memory back,
    faulted in 24,573 pages (six tensors') in a fresh process on this project's machine."""
    import resource

    from metarewarding.backends.hf import _keep_freed_memory

    if not _keep_freed_memory():
        pytest.skip("not glibc's malloc")
    numel = 4 * 2**20  # 16 MiB of float32
    torch.empty(numel).fill_(1.0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(16):
        torch.empty(numel).fill_(1.0)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before <= 4 * 4096 + 100
