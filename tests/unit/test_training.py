"""Training on the tiny model: DPO with LoRA merged before saving, and stage-0 SFT."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from metarewarding.records import write_jsonl
from metarewarding.training import train_dpo, train_eft

DPO = {"beta": 0.1, "learning_rate": 1e-3, "epochs": 1, "batch_size": 2, "gradient_accumulation_steps": 1,
       "warmup_ratio": 0.0, "max_length": 256,
       "lora": {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}}


def pair(i):
    return {"prompt": [{"role": "user", "content": f"question {i}"}],
            "chosen": [{"role": "assistant", "content": "a good answer"}],
            "rejected": [{"role": "assistant", "content": "a bad one"}]}


def test_dpo_with_lora_saves_merged_plain_weights(tmp_path, tiny_model):
    write_jsonl(tmp_path / "pairs.jsonl", [pair(i) for i in range(4)])
    metrics = train_dpo(str(tmp_path / "pairs.jsonl"), str(tiny_model), DPO, 0, str(tmp_path / "out"),
                        str(tmp_path / "metrics.json"))
    out = tmp_path / "out"
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    before, after = load_file(tiny_model / "model.safetensors"), load_file(out / "model.safetensors")
    assert set(before) == set(after)  # no lora_A/lora_B keys left: adapters were merged
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert metrics["steps"] and json.loads((tmp_path / "metrics.json").read_text())["pairs"] == 4
    assert (out / "chat_template.jinja").is_file() or "chat_template" in (out / "tokenizer_config.json").read_text()


def test_eft_trains_on_judge_demonstrations(tmp_path, tiny_model):
    write_jsonl(tmp_path / "demos.jsonl", [
        {"demo_id": f"d{i}", "question": f"q{i}", "response": "r", "judgment": f"fine.\nScore: {i % 6}"}
        for i in range(4)])
    (tmp_path / "judge.txt").write_text("Q: {question}\nR: {response}")
    settings = {**{k: v for k, v in DPO.items() if k not in ("beta", "warmup_ratio")},
                "lora": {**DPO["lora"], "enabled": False}}
    metrics = train_eft(str(tmp_path / "demos.jsonl"), str(tmp_path / "judge.txt"), str(tiny_model), settings, 0,
                        str(tmp_path / "out"), str(tmp_path / "metrics.json"))
    assert metrics["demonstrations"] == 4 and metrics["steps"]
    before, after = load_file(tiny_model / "model.safetensors"), load_file(tmp_path / "out/model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)
