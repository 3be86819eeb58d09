"""Stage: train the next model with TRL — DPO on the iteration's pairs, or SFT for stage 0.

Both trainers start from a model folder (TRL builds the frozen DPO reference from the same
folder), run on CPU or GPU, optionally with LoRA adapters that are merged into the weights
before saving, and save a plain Hugging Face folder (safetensors, tokenizer, chat template)
that transformers and vLLM load. Training curves are saved as JSON.

Two execution features never change what is trained:

- **Checkpoints.** With ``checkpoint_dir`` set, the trainer saves a checkpoint every
  ``checkpoint_steps`` optimiser steps there; a job killed mid-training and started again
  resumes from the last one (optimiser, scheduler, RNG states and data position included).
  The folder carries a fingerprint of the inputs and settings: checkpoints of other inputs are
  discarded, never resumed. It is removed once the model is saved.
- **Several GPUs.** With a ``distributed`` strategy other than ``none`` the stage re-runs itself
  under ``accelerate launch`` (configs/accelerate/<strategy>.yaml: DDP, DeepSpeed ZeRO-3 or
  FSDP2) with one process per GPU; the calling process only waits, then moves the saved model
  into place. Without a strategy the single-process path is the only one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from .records import read_jsonl, write_json
from .templates import JUDGE_FIELDS, judge_prompt, load_template

log = logging.getLogger(__name__)

ACCELERATE_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "accelerate"
STRATEGIES = ("none", "ddp", "deepspeed_zero3", "fsdp")
FINGERPRINT = "metarewarding-fingerprint.json"


def lora_config(settings: dict):
    """A peft LoraConfig from the ``lora`` settings, or None when LoRA is off."""
    if not settings["enabled"]:
        return None
    from peft import LoraConfig

    return LoraConfig(r=settings["r"], lora_alpha=settings["alpha"], lora_dropout=settings["dropout"],
                      target_modules=settings["target_modules"], task_type="CAUSAL_LM")


PRECISIONS = ("auto", "float32", "bfloat16")


def native_bf16(device: str) -> bool:
    """Whether ``device`` ("cuda" or "cpu") multiplies bfloat16 matrices natively, and so
    trains faster in bfloat16 mixed precision (on CPUs: AVX512-BF16 or AMX, through oneDNN)."""
    if device == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: str) -> str:
    """``precision`` with "auto" resolved: bfloat16 mixed precision where the hardware runs
    it natively, else float32. Weights and optimiser states stay float32 either way."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bfloat16" if native_bf16(device) else "float32"
    return precision


def score_completion_tokens_only() -> bool:
    """Make TRL's fused LM head project only the positions that carry a label (the completion
    tokens) on every device, not just on Triton devices.

    TRL 1.x scores every position, prompt and padding included, when Triton is absent (for
    the sake of fixed tile shapes on compilers like Neuron's); on a CPU that triples the cost
    of the vocabulary projection of a DPO step for nothing, since the other positions are
    masked out afterwards. The log-probabilities are the same either way
    (tests/unit/test_training.py). Returns False, changing nothing, on a TRL without the hook."""
    try:
        from trl.trainer import utils as trl_utils
    except ImportError:
        return False
    current = getattr(trl_utils, "_use_triton", None)
    if current is None or getattr(current, "metarewarding_compact", False):
        return current is not None

    def compact(device: torch.device) -> bool:
        return device.type == "cpu" or current(device)

    compact.metarewarding_compact = True
    compact.wrapped = current
    trl_utils._use_triton = compact
    return True


def training_precision(settings: dict) -> str:
    """The precision training with ``settings`` runs in on this machine's device."""
    return resolve_precision(settings.get("precision", "auto"), "cuda" if torch.cuda.is_available() else "cpu")


def common_args(settings: dict, seed: int, output_dir: str, checkpoint_steps: int | None = None,
                strategy: str = "none") -> dict:
    """TrainingArguments shared by DPO and SFT; ``settings["precision"]`` picks the precision."""
    cuda = torch.cuda.is_available()
    precision = training_precision(settings)
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
        bf16=precision == "bfloat16",
        # FSDP checkpoints activations itself (configs/accelerate/fsdp.yaml).
        gradient_checkpointing=cuda and strategy != "fsdp",
        logging_steps=1,
        save_strategy="steps" if checkpoint_steps else "no",
        save_steps=checkpoint_steps or 500,
        save_total_limit=1 if checkpoint_steps else None,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished folder ``tmp`` to ``out`` (replacing an older one)."""
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def save_model(trainer, tokenizer, out_dir: str) -> None:
    """Merge LoRA adapters if any and save weights, tokenizer and chat template to ``out_dir``."""
    model = trainer.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    out = Path(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    _replace_dir(tmp, out)


def save_model_distributed(trainer, tokenizer, base_model_dir: str, staging: str) -> None:
    """Save from every process (ZeRO-3 and FSDP gather their shards collectively) into
    ``staging``; the main process then merges LoRA adapters into the base weights."""
    trainer.save_model(staging)
    if trainer.accelerator.is_main_process:
        staged = Path(staging)
        if (staged / "adapter_config.json").exists():
            from peft import PeftModel
            from transformers import AutoModelForCausalLM

            base = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype="auto")
            merged = PeftModel.from_pretrained(base, staged).merge_and_unload()
            for f in staged.iterdir():
                shutil.rmtree(f) if f.is_dir() else f.unlink()
            merged.save_pretrained(staged)
        tokenizer.save_pretrained(staged)
    trainer.accelerator.wait_for_everyone()


def curves(log_history: list[dict]) -> dict:
    """Training-step records and the final summary from the trainer's log history."""
    steps = [h for h in log_history if "loss" in h]
    summary = next((h for h in reversed(log_history) if "train_runtime" in h), {})
    return {"steps": steps, "summary": summary}


# --- checkpoints ------------------------------------------------------------------------------

def _file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def training_fingerprint(kind: str, data_paths: list[str], model_dir: str, settings: dict, seed: int) -> dict:
    """What a checkpoint must have been trained from to be resumed: data, start model, settings."""
    model = Path(model_dir)
    weights = sorted(model.glob("*.safetensors")) + sorted(model.glob("config.json"))
    return {
        "stage": kind,
        "data": {str(p): _file_digest(p) for p in data_paths},
        "model": {f.name: _file_digest(f) for f in weights},
        "settings": settings,
        "seed": seed,
    }


def prepare_checkpoints(checkpoint_dir: str | None, fingerprint: dict) -> str | None:
    """Make ``checkpoint_dir`` ready and return the checkpoint to resume from, if any.

    A folder written for other inputs or settings (its fingerprint differs) is emptied first,
    with a log line, so a stale checkpoint is never resumed."""
    if not checkpoint_dir:
        return None
    from transformers.trainer_utils import get_last_checkpoint

    folder = Path(checkpoint_dir)
    stamp = folder / FINGERPRINT
    if folder.exists():
        try:
            old = json.loads(stamp.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        if old != fingerprint:
            log.warning("%s: checkpoints were made from other inputs or settings; discarding them", folder)
            shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not stamp.exists():
        write_json(stamp, fingerprint)
    last = get_last_checkpoint(str(folder))
    if last:
        log.info("resuming from checkpoint %s", last)
    return last


# --- the two trainers -------------------------------------------------------------------------

def _tokenizer(model_dir: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def dpo_trainer(pairs_path: str, model_dir: str, settings: dict, seed: int, output_dir: str,
                checkpoint_steps: int | None = None, strategy: str = "none"):
    """TRL's DPOTrainer on the pairs, reference = the starting model; returns (trainer, pairs)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    records = read_jsonl(pairs_path, required=("prompt", "chosen", "rejected"))
    dataset = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in records])
    tokenizer = _tokenizer(model_dir)
    args = DPOConfig(beta=settings["beta"], warmup_steps=settings["warmup_ratio"],
                     **common_args(settings, seed, output_dir, checkpoint_steps, strategy))
    trainer = DPOTrainer(model=str(model_dir), args=args, train_dataset=dataset,
                         processing_class=tokenizer, peft_config=lora_config(settings["lora"]))
    return trainer, tokenizer, {"pairs": len(records)}


def demonstration_dataset(demos_path: str, template_path: str):
    """Judge demonstrations as TRL prompt-completion conversations (judge prompt -> judgment)."""
    from datasets import Dataset

    template = load_template(template_path, JUDGE_FIELDS)
    demos = read_jsonl(demos_path, required=("demo_id", "question", "response", "judgment"), id_field="demo_id")
    rows = [{"prompt": list(judge_prompt(template, d["question"], d["response"]).messages),
             "completion": [{"role": "assistant", "content": d["judgment"]}]} for d in demos]
    return Dataset.from_list(rows)


def eft_trainer(demos_path: str, template_path: str, model_dir: str, settings: dict, seed: int,
                output_dir: str, checkpoint_steps: int | None = None, strategy: str = "none"):
    """TRL's SFTTrainer on judge demonstrations, loss on the judgments only."""
    from trl import SFTConfig, SFTTrainer

    dataset = demonstration_dataset(demos_path, template_path)
    tokenizer = _tokenizer(model_dir)
    args = SFTConfig(completion_only_loss=True,
                     **common_args(settings, seed, output_dir, checkpoint_steps, strategy))
    trainer = SFTTrainer(model=str(model_dir), args=args, train_dataset=dataset,
                         processing_class=tokenizer, peft_config=lora_config(settings["lora"]))
    return trainer, tokenizer, {"demonstrations": len(dataset)}


def _build(kind: str, job: dict, output_dir: str, checkpoint_steps, strategy: str):
    score_completion_tokens_only()
    if kind == "train_dpo":
        return dpo_trainer(job["pairs_path"], job["model_dir"], job["settings"], job["seed"], output_dir,
                           checkpoint_steps, strategy)
    return eft_trainer(job["demos_path"], job["template_path"], job["model_dir"], job["settings"],
                       job["seed"], output_dir, checkpoint_steps, strategy)


def _data_paths(kind: str, job: dict) -> list[str]:
    if kind == "train_dpo":
        return [job["pairs_path"]]
    return [job["demos_path"], job["template_path"]]


def run_training(kind: str, job: dict, out_dir: str, metrics_path: str, threads: int | None = None,
                 checkpoint_dir: str | None = None, checkpoint_steps: int | None = None,
                 distributed: dict | None = None, gpus: int = 0) -> dict:
    """Train (``kind`` is "train_dpo" or "train_eft"), save the model to ``out_dir`` and the
    curves to ``metrics_path``; see the module docstring for checkpoints and several GPUs."""
    distributed = {"strategy": "none", "processes": None, "accelerate_config": None, **(distributed or {})}
    if distributed["strategy"] not in STRATEGIES:
        raise ValueError(f"distributed.strategy: expected one of {STRATEGIES}, got {distributed['strategy']!r}")
    processes = distributed["processes"] or max(int(gpus or 0), 1)
    if distributed["strategy"] != "none":
        check_gpus_for(processes, distributed)  # before checkpoints are looked at or anything loads
    start = time.perf_counter()
    resume = None
    if checkpoint_dir:  # hashing an 8B model's weights takes a minute: only when checkpoints are on
        fingerprint = training_fingerprint(kind, _data_paths(kind, job), job["model_dir"], job["settings"],
                                           job["seed"])
        resume = prepare_checkpoints(checkpoint_dir, fingerprint)
    if distributed["strategy"] != "none":
        counts = launch_distributed(kind, job, out_dir, distributed, processes, threads, checkpoint_dir,
                                    checkpoint_steps, resume)
    else:
        if gpus and int(gpus) > 1:
            log.warning("the job has %s GPUs but training.distributed.strategy is 'none': training on one", gpus)
        if threads:
            torch.set_num_threads(threads)
        with contextlib.ExitStack() as stack:
            output_dir = checkpoint_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix=f"{kind}-"))
            trainer, tokenizer, sizes = _build(kind, job, output_dir, checkpoint_steps if checkpoint_dir else None,
                                               "none")
            trainer.train(resume_from_checkpoint=resume)
            save_model(trainer, tokenizer, out_dir)
        counts = {**sizes, "processes": 1, **curves(trainer.state.log_history)}
    if checkpoint_dir:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    metrics = {"stage": kind, **{k: v for k, v in counts.items() if k not in ("steps", "summary")},
               "settings": job["settings"], "seed": job["seed"], "distributed": distributed,
               "precision": training_precision(job["settings"]),
               "resumed_from": Path(resume).name if resume else None,
               "steps": counts.get("steps", []), "summary": counts.get("summary", {}),
               "seconds": round(time.perf_counter() - start, 3)}
    write_json(metrics_path, metrics)
    log.info("%s done in %.1f s (%d process(es))", kind, metrics["seconds"], counts.get("processes", 1))
    return metrics


def train_dpo(pairs_path: str, model_dir: str, settings: dict, seed: int, out_dir: str, metrics_path: str,
              threads: int | None = None, **execution) -> dict:
    """DPO of the model in ``model_dir`` on the pairs, the same model as frozen reference."""
    job = {"pairs_path": pairs_path, "model_dir": model_dir, "settings": settings, "seed": seed}
    return run_training("train_dpo", job, out_dir, metrics_path, threads, **execution)


def train_eft(demos_path: str, template_path: str, model_dir: str, settings: dict, seed: int, out_dir: str,
              metrics_path: str, threads: int | None = None, **execution) -> dict:
    """Stage 0: supervised fine-tuning of the seed on judge demonstrations (loss on judgments only)."""
    job = {"demos_path": demos_path, "template_path": template_path, "model_dir": model_dir,
           "settings": settings, "seed": seed}
    return run_training("train_eft", job, out_dir, metrics_path, threads, **execution)


def training_execution(config: dict, out_dir: str, stage: str, gpus) -> dict:
    """The execution keywords of ``run_training`` from the experiment config's ``training``
    block (read by the workflow scripts from the config, so they are not rerun triggers):
    checkpoints next to the model folder, the distributed strategy, the job's GPU count."""
    from .config import workflow_config

    training = workflow_config(config)["training"]
    steps = training["checkpoint_steps"]
    return {
        "checkpoint_dir": str(Path(out_dir).parent / "checkpoints" / stage) if steps else None,
        "checkpoint_steps": steps,
        "distributed": training["distributed"],
        "gpus": int(gpus or 0),
    }


# --- several processes ------------------------------------------------------------------------

def check_gpus_for(processes: int, distributed: dict) -> None:
    """Refuse, before anything starts, to put several processes on one GPU (NCCL fails then
    with an obscure error after the model has loaded): one process per visible GPU."""
    if not torch.cuda.is_available():
        return  # processes on the CPU (gloo): any number
    visible = torch.cuda.device_count()
    if processes > visible:
        source = ("training.distributed.processes" if distributed.get("processes")
                  else "the job's GPU request (resources gpu)")
        raise ValueError(f"{processes} training processes but {visible} visible GPU(s): {source} asks for more "
                         "processes than GPUs; request as many GPUs as processes, or set "
                         "training.distributed.processes to at most the visible GPUs")


def accelerate_command(config_file: str, processes: int, port: int, spec_path: str) -> list[str]:
    """The ``accelerate launch`` command line that runs this module's worker in ``processes``."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
            "--num_processes", str(processes), "--main_process_port", str(port),
            "--module", "metarewarding.training", spec_path]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_distributed(kind: str, job: dict, out_dir: str, distributed: dict, processes: int,
                       threads: int | None, checkpoint_dir: str | None, checkpoint_steps: int | None,
                       resume: str | None) -> dict:
    """Run the training worker under ``accelerate launch`` and move its model to ``out_dir``."""
    strategy = distributed["strategy"]
    config_file = Path(distributed["accelerate_config"] or ACCELERATE_CONFIGS / f"{strategy}.yaml")
    if not config_file.is_file():
        raise FileNotFoundError(f"distributed.accelerate_config: {config_file} does not exist")
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    with tempfile.TemporaryDirectory(prefix=f"{kind}-launch-") as scratch:
        spec = {"kind": kind, "job": job, "staging": str(staging), "result": f"{scratch}/result.json",
                "output_dir": checkpoint_dir or f"{scratch}/trainer", "strategy": strategy,
                "checkpoint_steps": checkpoint_steps if checkpoint_dir else None, "resume": resume}
        spec_path = f"{scratch}/spec.json"
        write_json(spec_path, spec)
        env = dict(os.environ)
        src = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        env["OMP_NUM_THREADS"] = str(max((threads or processes) // processes, 1))
        command = accelerate_command(str(config_file), processes, _free_port(), spec_path)
        log.info("launching %d %s process(es): %s", processes, strategy, " ".join(command))
        try:
            done = subprocess.run(command, env=env)
            if done.returncode != 0:
                raise RuntimeError(f"{kind}: accelerate launch ({strategy}, {processes} processes) exited with "
                                   f"status {done.returncode}; see the log above")
            result = json.loads(Path(spec["result"]).read_text(encoding="utf-8"))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    _replace_dir(staging, out)
    return result


def worker(spec_path: str) -> None:
    """One process of a distributed run (started by ``accelerate launch``)."""
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    kind, job = spec["kind"], spec["job"]
    trainer, tokenizer, sizes = _build(kind, job, spec["output_dir"], spec["checkpoint_steps"], spec["strategy"])
    trainer.train(resume_from_checkpoint=spec["resume"])
    save_model_distributed(trainer, tokenizer, job["model_dir"], spec["staging"])
    if trainer.accelerator.is_main_process:
        write_json(spec["result"], {**sizes, "processes": trainer.accelerator.num_processes,
                                    **curves(trainer.state.log_history)})


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    worker(sys.argv[1])
