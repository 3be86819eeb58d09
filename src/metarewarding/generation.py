"""Stage: the actor (model of iteration t-1) samples K responses per prompt."""

from __future__ import annotations

import logging
import time
from typing import Sequence

from .backends import Backend, Sampling, load_backend, user_prompt
from .checkpoint import StageCheckpoint, backend_batches, stage_fingerprint
from .records import read_jsonl, write_json, write_jsonl
from .shards import gather, select_shard

log = logging.getLogger(__name__)


def response_records(
    prompts: list[dict], backend: Backend, settings: dict, seed: int, indices: Sequence[int] | None = None
) -> list[dict]:
    """K sampled responses per prompt, with token counts and whether they were truncated;
    ``indices``: the prompts' positions in the stage, which seed their samples."""
    sampling = Sampling(settings["max_new_tokens"], settings["temperature"], settings["top_p"])
    chat = [user_prompt(p["prompt"]) for p in prompts]
    outputs = backend.generate(chat, n=settings["samples"], sampling=sampling, seed=seed, indices=indices)
    records = []
    for prompt, completions in zip(prompts, outputs):
        for k, c in enumerate(completions):
            records.append({
                "response_id": f"{prompt['prompt_id']}-r{k}",
                "prompt_id": prompt["prompt_id"],
                "prompt": prompt["prompt"],
                "response": c.text,
                "prompt_tokens": c.prompt_tokens,
                "completion_tokens": c.completion_tokens,
                "finish_reason": c.finish_reason,
            })
    return records


def generation_summary(records: list[dict]) -> dict:
    """Counts of one generation run (or of gathered shards)."""
    return {
        "prompts": len({r["prompt_id"] for r in records}),
        "responses": len(records),
        "truncated": sum(r["finish_reason"] == "length" for r in records),
        "empty": sum(not r["response"].strip() for r in records),
        "completion_tokens": sum(r["completion_tokens"] for r in records),
        "mean_chars": round(sum(len(r["response"]) for r in records) / max(len(records), 1), 1),
    }


def generate_responses(
    prompts_path: str,
    model_dir: str,
    backend_settings: dict,
    settings: dict,
    seed: int,
    out_path: str,
    stats_path: str,
    threads: int | None = None,
    shard: int = 0,
    shards: int = 1,
    checkpoint_every: int | None = None,
) -> dict:
    """Sample responses for shard ``shard`` of ``shards`` of the prompts, checkpointing every
    ``checkpoint_every`` prompts (or more: whole batches) beside ``out_path``."""
    start = time.perf_counter()
    prompts = read_jsonl(prompts_path, required=("prompt_id", "prompt"), id_field="prompt_id")
    prompts = select_shard(prompts, shard, shards)
    backend = load_backend(backend_settings, model_dir, threads=threads)
    loaded = time.perf_counter()
    chat = [user_prompt(p["prompt"]) for p in prompts]
    n = settings["samples"]
    key = stage_fingerprint("generate_responses", model_dir, backend, inputs=prompts, prompts=chat,
                            settings=settings, seed=seed)
    checkpoint = StageCheckpoint(out_path, key, checkpoint_every, unit="prompts")
    records = checkpoint.run(
        backend_batches(backend, chat, n),
        lambda positions: response_records([prompts[i] for i in positions], backend, settings, seed,
                                           indices=positions),
        per_item=n,
    )
    write_jsonl(out_path, records)
    summary = generation_summary(records)
    tokens = summary["completion_tokens"]
    seconds = time.perf_counter() - loaded
    stats = {
        "stage": "generate_responses",
        "shard": shard,
        **summary,
        "seed": seed,
        "settings": settings,
        "backend": backend.describe(),
        "resumed_from_checkpoint": checkpoint.resumed,
        "load_seconds": round(loaded - start, 3),
        "seconds": round(seconds, 3),
        "tokens_per_second": round(tokens / seconds, 1) if seconds else None,
    }
    write_json(stats_path, stats)
    checkpoint.remove()
    log.info("%d responses, %d truncated, %.1f tokens/s", len(records), summary["truncated"],
             stats["tokens_per_second"] or 0)
    return stats


def gather_responses(shard_paths: list[str], stats_paths: list[str], out_path: str, stats_out: str) -> dict:
    """Concatenate the shards' records in order and combine their stats."""
    return gather(shard_paths, stats_paths, "response_id", generation_summary, out_path, stats_out)
