"""Training on the tiny model: DPO with LoRA merged before saving, and stage-0 SFT."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
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


FULL = {**DPO, "lora": {**DPO["lora"], "enabled": False}, "learning_rate": 1e-4}


class Crash(RuntimeError):
    pass


def crash_after(step: int):
    """A trainer callback that raises once the trainer has finished ``step`` optimiser steps:
    a job dying mid-training, after the checkpoint of step ``step - 1`` was written."""
    from transformers import TrainerCallback

    class _Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= step:
                raise Crash(f"killed at step {state.global_step}")

    return _Crash()


def test_killed_dpo_resumes_from_its_checkpoint_and_matches_an_uninterrupted_run(tmp_path, tiny_model, monkeypatch):
    import metarewarding.training as training

    write_jsonl(tmp_path / "pairs.jsonl", [pair(i) for i in range(8)])  # 4 steps of 2 pairs
    args = (str(tmp_path / "pairs.jsonl"), str(tiny_model), FULL, 0)
    whole = train_dpo(*args, str(tmp_path / "whole"), str(tmp_path / "whole.json"))

    ckpt = tmp_path / "checkpoints"
    build = training.dpo_trainer

    def crashing(*a, **k):
        trainer, tokenizer, sizes = build(*a, **k)
        trainer.add_callback(crash_after(3))
        return trainer, tokenizer, sizes

    monkeypatch.setattr(training, "dpo_trainer", crashing)
    with pytest.raises(Crash):
        train_dpo(*args, str(tmp_path / "out"), str(tmp_path / "out.json"), checkpoint_dir=str(ckpt),
                  checkpoint_steps=1)
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in ckpt.glob("checkpoint-*")) == ["checkpoint-2"]  # save_total_limit=1
    monkeypatch.setattr(training, "dpo_trainer", build)

    resumed = train_dpo(*args, str(tmp_path / "out"), str(tmp_path / "out.json"), checkpoint_dir=str(ckpt),
                        checkpoint_steps=1)
    assert resumed["resumed_from"] == "checkpoint-2" and not ckpt.exists()
    assert [s["step"] for s in resumed["steps"]] == [1, 2, 3, 4]
    for a, b in zip(whole["steps"], resumed["steps"]):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
    w, r = load_file(tmp_path / "whole/model.safetensors"), load_file(tmp_path / "out/model.safetensors")
    # The resumed run restores optimiser, scheduler and RNG states and skips the batches already
    # seen; on CPU the weights come out bit for bit the same (in bfloat16 mixed precision where
    # the CPU has it, precision "auto", as in float32).
    assert all(torch.equal(w[k], r[k]) for k in w)


def test_checkpoints_of_other_inputs_are_discarded_not_resumed(tmp_path, tiny_model, caplog):
    from metarewarding.training import prepare_checkpoints, training_fingerprint

    write_jsonl(tmp_path / "pairs.jsonl", [pair(i) for i in range(2)])
    ckpt = tmp_path / "ckpt"
    first = training_fingerprint("train_dpo", [str(tmp_path / "pairs.jsonl")], str(tiny_model), FULL, 0)
    assert prepare_checkpoints(str(ckpt), first) is None
    (ckpt / "checkpoint-7").mkdir()
    (ckpt / "checkpoint-7" / "trainer_state.json").write_text("{}")
    assert prepare_checkpoints(str(ckpt), first).endswith("checkpoint-7")
    write_jsonl(tmp_path / "pairs.jsonl", [pair(i) for i in range(3)])  # the pairs changed
    second = training_fingerprint("train_dpo", [str(tmp_path / "pairs.jsonl")], str(tiny_model), FULL, 0)
    assert prepare_checkpoints(str(ckpt), second) is None
    assert not (ckpt / "checkpoint-7").exists() and "other inputs" in caplog.text


def test_ddp_runs_two_processes_through_accelerate_launch(tmp_path, tiny_model, monkeypatch):
    """The multi-GPU path on CPU: configs/accelerate/ddp.yaml under `accelerate launch` with two
    processes (torch.distributed with gloo when there is no CUDA); LoRA adapters are merged by
    the main process and the calling process moves the model into place. On a machine with a
    GPU the GPUs are hidden, from the workers and from this process, so that it stays the CPU
    path (two processes cannot share one GPU)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    write_jsonl(tmp_path / "pairs.jsonl", [pair(i) for i in range(8)])
    metrics = train_dpo(str(tmp_path / "pairs.jsonl"), str(tiny_model), DPO, 0, str(tmp_path / "out"),
                        str(tmp_path / "metrics.json"), threads=2,
                        distributed={"strategy": "ddp", "processes": None, "accelerate_config": None}, gpus=2)
    assert metrics["processes"] == 2 and metrics["distributed"]["strategy"] == "ddp"
    # 8 pairs, 2 per process and step, 2 processes: 2 optimiser steps.
    assert [s["step"] for s in metrics["steps"]] == [1, 2]
    out = tmp_path / "out"
    assert not (out / "adapter_config.json").exists()
    before, after = load_file(tiny_model / "model.safetensors"), load_file(out / "model.safetensors")
    assert set(before) == set(after) and any(not torch.equal(before[k], after[k]) for k in before)
    assert not list(tmp_path.glob(".out.*")), "no staging folder left behind"


def test_more_processes_than_visible_gpus_is_refused_before_launch(tmp_path, tiny_model, monkeypatch):
    """Two DDP processes on a machine that shows one GPU: a clear error naming the setting,
    before accelerate starts (NCCL would fail later, after loading the model)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("accelerate launch started"))
    write_jsonl(tmp_path / "pairs.jsonl", [pair(i) for i in range(4)])
    for distributed, gpus, named in [({"processes": 2}, 0, "training.distributed.processes"),
                                     ({"processes": None}, 2, "resources gpu")]:
        with pytest.raises(ValueError, match=re.escape(named)):
            train_dpo(str(tmp_path / "pairs.jsonl"), str(tiny_model), DPO, 0, str(tmp_path / "out"),
                      str(tmp_path / "metrics.json"),
                      distributed={"strategy": "ddp", "accelerate_config": None, **distributed}, gpus=gpus)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_a_failing_distributed_run_leaves_no_model(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the CPU path, also on a one-GPU machine
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    write_jsonl(tmp_path / "pairs.jsonl", [pair(i) for i in range(4)])
    broken = tmp_path / "broken"  # a model folder without weights or tokenizer: the workers fail
    broken.mkdir()
    (broken / "config.json").write_text((tiny_model / "config.json").read_text())
    with pytest.raises(RuntimeError, match="accelerate launch"):
        train_dpo(str(tmp_path / "pairs.jsonl"), str(broken), DPO, 0, str(tmp_path / "out"),
                  str(tmp_path / "metrics.json"),
                  distributed={"strategy": "ddp", "processes": 2, "accelerate_config": None})
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_accelerate_configs_load_and_name_their_strategy(repo):
    from accelerate.commands.config.config_args import load_config_from_file

    expected = {"ddp": "MULTI_GPU", "deepspeed_zero3": "DEEPSPEED", "fsdp": "FSDP"}
    for strategy, kind in expected.items():
        config = load_config_from_file(str(repo / "configs/accelerate" / f"{strategy}.yaml"))
        assert config.distributed_type.value == kind
    assert load_config_from_file(str(repo / "configs/accelerate/deepspeed_zero3.yaml")).deepspeed_config["zero_stage"] == 3
    assert load_config_from_file(str(repo / "configs/accelerate/fsdp.yaml")).fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"


def test_precision_resolves_auto_to_what_the_hardware_runs_natively():
    from metarewarding.training import native_bf16, resolve_precision

    assert resolve_precision("float32", "cpu") == "float32"
    assert resolve_precision("bfloat16", "cpu") == "bfloat16"
    assert resolve_precision("auto", "cpu") == ("bfloat16" if native_bf16("cpu") else "float32")
    with pytest.raises(ValueError, match="precision: expected one of"):
        resolve_precision("fp8", "cpu")


def test_dpo_records_the_precision_it_ran_in(tmp_path, tiny_model):
    write_jsonl(tmp_path / "pairs.jsonl", [pair(i) for i in range(2)])
    metrics = train_dpo(str(tmp_path / "pairs.jsonl"), str(tiny_model), {**FULL, "precision": "float32"}, 0,
                        str(tmp_path / "out"), str(tmp_path / "metrics.json"))
    assert metrics["precision"] == "float32"


def test_scoring_completion_tokens_only_gives_the_same_log_probs(tmp_path, tiny_model, monkeypatch):
    """On a CPU, TRL's fused LM head projects every position unless told to compact; both
    paths must give the same per-token log-probabilities on the completion tokens."""
    from trl.trainer import utils as trl_utils

    from metarewarding.training import dpo_trainer, score_completion_tokens_only

    original = getattr(trl_utils._use_triton, "wrapped", trl_utils._use_triton)  # unpatched by an earlier test
    write_jsonl(tmp_path / "pairs.jsonl", [pair(i) for i in range(4)])
    trainer, _, _ = dpo_trainer(str(tmp_path / "pairs.jsonl"), str(tiny_model), {**FULL, "precision": "float32"}, 0,
                                str(tmp_path / "run"))
    batch = next(iter(trainer.get_train_dataloader()))
    inputs = {k: v for k, v in batch.items() if k not in ("completion_mask", "ref_chosen_logps", "ref_rejected_logps")}
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    model = trainer.model.eval()

    def log_probs():
        with torch.no_grad():
            return model(**inputs, labels=labels, fused_lm_head=True).log_probs

    monkeypatch.setattr(trl_utils, "_use_triton", original)
    assert not original(torch.device("cpu"))  # TRL's own choice on a CPU: score every position
    every_position = log_probs()
    assert score_completion_tokens_only()
    assert trl_utils._use_triton(torch.device("cpu"))
    compact = log_probs()
    scored = labels[:, 1:] != -100
    assert scored.sum() > 0 and (~scored).sum() > 0
    torch.testing.assert_close(compact[scored], every_position[scored], rtol=1e-5, atol=1e-5)
    assert torch.all(compact[~scored] == 0)
