"""The lean decoding step for Llama models on a CPU: the same tokens, scores and logits as
transformers' forward, and a probe that turns it off when they differ."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from metarewarding.backends import Sampling, load_backend, user_prompt
from metarewarding.judging import score_options

PROMPTS = [user_prompt("grade this answer: the sky is blue"), user_prompt("a second, longer prompt to grade now"),
           user_prompt("short")]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_lean_step_decodes_what_transformers_forward_decodes(tiny_model, dtype, monkeypatch):
    """Sampled completions and forced scores, with every level of the prompts shared or none,
    are bit for bit those of transformers' forward on the same cache."""
    import metarewarding.backends.hf as hf

    backend = load_backend({"name": "transformers", "batch_size": 6, "dtype": dtype, "device": "cpu"},
                           str(tiny_model))
    assert backend.lean_step is not None and backend.describe()["decoding_step"] == "lean"
    lean, calls = backend.lean_step, []
    for min_keys in (0, 10**9):
        monkeypatch.setattr(hf, "SHARED_KEYS_MIN", min_keys)
        backend.lean_step = lambda *args: calls.append(1) or lean(*args)
        got = backend.generate_forced(PROMPTS, 2, Sampling(12, 0.9, 0.95), 3, "\nScore:", score_options(0, 5))
        backend.lean_step = None
        want = backend.generate_forced(PROMPTS, 2, Sampling(12, 0.9, 0.95), 3, "\nScore:", score_options(0, 5))
        assert got == want
    assert calls  # the lean step decoded


def test_lean_step_logits_equal_transformers_over_a_growing_cache(tiny_model):
    """Eight steps, rows of different lengths (padding in the mask): identical logits."""
    backend = load_backend({"name": "transformers", "batch_size": 4, "device": "cpu"}, str(tiny_model))
    ids = [[5, 9, 12, 7, 3, 8, 4], [6, 2, 11], [10, 4, 4, 4, 9]]
    runs = []
    with torch.inference_mode():
        for step in (backend._forward, backend.lean_step):
            cache, logits, mask, positions = backend._prefill(ids, repeat=2)
            out = []
            for k in range(8):
                token = torch.full((6, 1), 3 + k)
                mask = torch.cat([mask, torch.ones_like(token)], dim=1)
                logits = step(cache, token, mask, positions)
                positions = positions + 1
                out.append(logits)
            runs.append(torch.stack(out))
    assert runs[0].shape == (8, 6, backend.model.config.vocab_size)
    assert torch.equal(runs[0], runs[1])


def test_lean_step_is_not_used_when_its_probe_differs(tiny_model, monkeypatch):
    """A lean step whose logits differ from transformers' (here: attention scaled 1% off) is
    turned down by the probe, and the backend decodes with transformers' forward."""
    from metarewarding.backends import lean

    built = lean.LeanLlamaStep.__init__

    def off_scale(self, *args):
        built(self, *args)
        self.scale *= 1.01

    monkeypatch.setattr(lean.LeanLlamaStep, "__init__", off_scale)
    backend = load_backend({"name": "transformers", "batch_size": 4, "device": "cpu"}, str(tiny_model))
    assert backend.lean_step is None and backend.describe()["decoding_step"] == "transformers"
    assert backend.generate(PROMPTS[:1], 1, Sampling(4, 0.0), 0)[0][0].completion_tokens > 0


def test_lean_step_only_for_llama_layers():
    """Another architecture (Mistral's classes, sliding window) gets no lean step."""
    from transformers import MistralConfig, MistralForCausalLM

    from metarewarding.backends.lean import lean_step

    config = MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=1)
    assert lean_step(SimpleNamespace(model=MistralForCausalLM(config))) is None
