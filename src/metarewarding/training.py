"""Stage: train the next model with TRL — DPO on the iteration's pairs, or SFT for stage 0.

Both trainers start from a model folder (TRL builds the frozen DPO reference from the same
folder), run on CPU or GPU, optionally with LoRA adapters that are merged into the weights
before saving, and save a plain Hugging Face folder (safetensors, tokenizer, chat template)
that transformers and vLLM load. Training curves are saved as JSON.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

import torch

from .records import read_jsonl, write_json
from .templates import JUDGE_FIELDS, judge_prompt, load_template

log = logging.getLogger(__name__)


def lora_config(settings: dict):
    """A peft LoraConfig from the ``lora`` settings, or None when LoRA is off."""
    if not settings["enabled"]:
        return None
    from peft import LoraConfig

    return LoraConfig(r=settings["r"], lora_alpha=settings["alpha"], lora_dropout=settings["dropout"],
                      target_modules=settings["target_modules"], task_type="CAUSAL_LM")


def common_args(settings: dict, seed: int, output_dir: str) -> dict:
    """TrainingArguments shared by DPO and SFT; precision follows the model's saved dtype."""
    cuda = torch.cuda.is_available()
    return dict(
        output_dir=output_dir,
        learning_rate=settings["learning_rate"],
        num_train_epochs=settings["epochs"],
        per_device_train_batch_size=settings["batch_size"],
        gradient_accumulation_steps=settings["gradient_accumulation_steps"],
        max_length=settings["max_length"],
        seed=seed,
        data_seed=seed,
        use_cpu=not cuda,
        bf16=cuda and torch.cuda.is_bf16_supported(),
        gradient_checkpointing=cuda,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def save_model(trainer, tokenizer, out_dir: str) -> None:
    """Merge LoRA adapters if any and save weights, tokenizer and chat template to ``out_dir``."""
    model = trainer.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    out = Path(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def curves(log_history: list[dict]) -> dict:
    """Training-step records and the final summary from the trainer's log history."""
    steps = [h for h in log_history if "loss" in h]
    summary = next((h for h in reversed(log_history) if "train_runtime" in h), {})
    return {"steps": steps, "summary": summary}


def train_dpo(
    pairs_path: str, model_dir: str, settings: dict, seed: int, out_dir: str, metrics_path: str,
    threads: int | None = None,
) -> dict:
    """DPO of the model in ``model_dir`` on the pairs, the same model as frozen reference."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    records = read_jsonl(pairs_path, required=("prompt", "chosen", "rejected"))
    dataset = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in records])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    with tempfile.TemporaryDirectory(prefix="dpo-") as scratch:
        args = DPOConfig(beta=settings["beta"], warmup_steps=settings["warmup_ratio"],
                         **common_args(settings, seed, scratch))
        trainer = DPOTrainer(model=str(model_dir), args=args, train_dataset=dataset,
                             processing_class=tokenizer, peft_config=lora_config(settings["lora"]))
        trainer.train()
    save_model(trainer, tokenizer, out_dir)
    metrics = {"stage": "train_dpo", "pairs": len(records), "settings": settings, "seed": seed,
               **curves(trainer.state.log_history), "seconds": round(time.perf_counter() - start, 3)}
    write_json(metrics_path, metrics)
    log.info("DPO on %d pairs done in %.1f s", len(records), metrics["seconds"])
    return metrics


def demonstration_dataset(demos_path: str, template_path: str):
    """Judge demonstrations as TRL prompt-completion conversations (judge prompt -> judgment)."""
    from datasets import Dataset

    template = load_template(template_path, JUDGE_FIELDS)
    demos = read_jsonl(demos_path, required=("demo_id", "question", "response", "judgment"), id_field="demo_id")
    rows = [{"prompt": list(judge_prompt(template, d["question"], d["response"]).messages),
             "completion": [{"role": "assistant", "content": d["judgment"]}]} for d in demos]
    return Dataset.from_list(rows)


def train_eft(
    demos_path: str, template_path: str, model_dir: str, settings: dict, seed: int, out_dir: str,
    metrics_path: str, threads: int | None = None,
) -> dict:
    """Stage 0: supervised fine-tuning of the seed on judge demonstrations (loss on judgments only)."""
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    dataset = demonstration_dataset(demos_path, template_path)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    with tempfile.TemporaryDirectory(prefix="eft-") as scratch:
        args = SFTConfig(completion_only_loss=True, **common_args(settings, seed, scratch))
        trainer = SFTTrainer(model=str(model_dir), args=args, train_dataset=dataset,
                             processing_class=tokenizer, peft_config=lora_config(settings["lora"]))
        trainer.train()
    save_model(trainer, tokenizer, out_dir)
    metrics = {"stage": "train_eft", "demonstrations": len(dataset), "settings": settings, "seed": seed,
               **curves(trainer.state.log_history), "seconds": round(time.perf_counter() - start, 3)}
    write_json(metrics_path, metrics)
    return metrics
