"""Stage: the judge (model of iteration t-1) grades every response N times.

In ``free`` mode the judgment is generated text and the score is its last ``Score: x``. In
``forced`` mode the justification is generated freely, the pipeline appends ``Score:`` and the
model's own most likely allowed value completes the line; the free-text parse of the
justification is kept too (``free_score``), so the stats show whether the model has learned to
write the score line itself.
"""

from __future__ import annotations

import logging
import math
import random
import statistics
import time
from collections import Counter
from typing import Sequence

from .backends import Backend, ChatPrompt, Completion, Sampling, generate_forced, load_backend
from .checkpoint import StageCheckpoint, backend_batches, stage_fingerprint
from .records import read_jsonl, write_json, write_jsonl
from .scoring import parse_score
from .shards import gather, select_shard
from .templates import JUDGE_FIELDS, judge_prompt, load_template

log = logging.getLogger(__name__)

SCORE_LABEL = "\nScore:"


def score_options(low: float, high: float) -> list[str]:
    """The allowed forced-score continuations: every integer of the rubric's range."""
    if low != int(low) or high != int(high):
        raise ValueError(f"forced scores need integer bounds, got score_min={low}, score_max={high}")
    return [f" {v}" for v in range(int(low), int(high) + 1)]


def sample_option(logprobs: dict[str, float], temperature: float, rng: random.Random) -> str:
    """Draw one option with probability proportional to exp(logprob / temperature), the
    distribution free-text sampling would use for that token restricted to the allowed
    options; temperature 0 takes the most likely option."""
    options = list(logprobs)
    if temperature == 0:
        return max(options, key=logprobs.__getitem__)
    top = max(logprobs.values())
    weights = [math.exp((logprobs[o] - top) / temperature) for o in options]
    return rng.choices(options, weights=weights)[0]


def option_rng(seed: int, index: int, sample: int) -> random.Random:
    """The random stream of one forced option: prompt ``index`` of the stage, sample
    ``sample``; independent of the call, chunk or batch the prompt is in."""
    return random.Random(f"{seed}/{index}/{sample}")


def sample_lines(
    backend: Backend, prompts: Sequence[ChatPrompt], n: int, sampling: Sampling, seed: int,
    forced: tuple[str, Sequence[str]] | None, indices: Sequence[int] | None = None,
) -> list[list[tuple[Completion, str, dict | None]]]:
    """n generations per prompt as ``(completion, final text, option log-probabilities)``.

    With ``forced = (label, options)`` every text is the generated body, then ``label``, then
    an option sampled from the model's next-token distribution over ``options`` at the
    sampling temperature (seeded per prompt and sample); otherwise the text is the generation
    itself. ``indices[i]`` is prompt i's index in the stage (default: its position here); it
    seeds the prompt's samples and options, so a stage run chunk by chunk draws the same."""
    keys = list(range(len(prompts))) if indices is None else list(indices)
    if forced is None:
        return [[(c, c.text, None) for c in cs] for cs in backend.generate(prompts, n, sampling, seed, indices=keys)]
    label, options = forced
    rows = generate_forced(backend, prompts, n, sampling, seed, label, options, indices=keys)
    return [[(c, c.text.rstrip() + label + sample_option(lp, sampling.temperature, option_rng(seed, key, k)),
              {o.strip(): round(v, 4) for o, v in lp.items()}) for k, (c, lp) in enumerate(row)]
            for key, row in zip(keys, rows)]


def judgment_records(
    responses: list[dict], backend: Backend, template: str, settings: dict, seed: int,
    indices: Sequence[int] | None = None,
) -> list[dict]:
    """N judgments per response, each with its parsed score or the reason it failed to parse;
    ``indices``: the responses' positions in the stage (seeds; see ``sample_lines``)."""
    low, high = settings["score_min"], settings["score_max"]
    prompts = [judge_prompt(template, r["prompt"], r["response"]) for r in responses]
    sampling = Sampling(settings["max_new_tokens"], settings["temperature"], settings["top_p"])
    forced = (SCORE_LABEL, score_options(low, high)) if settings["score_mode"] == "forced" else None
    rows = sample_lines(backend, prompts, settings["judgments"], sampling, seed, forced, indices)
    records = []
    for response, row in zip(responses, rows):
        for k, (c, text, logprobs) in enumerate(row):
            parsed = parse_score(text, low, high)
            record = {
                "judgment_id": f"{response['response_id']}-j{k}",
                "response_id": response["response_id"],
                "prompt_id": response["prompt_id"],
                "judgment": text,
                "score": parsed.value,
                "parse_error": parsed.error,
                "free_score": parse_score(c.text, low, high).value,
                "completion_tokens": c.completion_tokens,
                "finish_reason": c.finish_reason,
            }
            if logprobs is not None:
                record["score_logprobs"] = logprobs
            records.append(record)
    return records


def judging_stats(records: list[dict], low: float, high: float) -> dict:
    """Parse rates, failure kinds and the score distribution of one judging run."""
    scores = [r["score"] for r in records if r["score"] is not None]
    n = len(records)
    return {
        "judgments": n,
        "parsed": len(scores),
        "parse_rate": round(len(scores) / n, 4) if n else None,
        "parse_failures": dict(Counter(r["parse_error"] for r in records if r["parse_error"])),
        "free_text_parse_rate": round(sum(r["free_score"] is not None for r in records) / n, 4) if n else None,
        "score_mean": round(statistics.fmean(scores), 4) if scores else None,
        "score_stdev": round(statistics.pstdev(scores), 4) if scores else None,
        "score_counts": {str(k): v for k, v in sorted(Counter(scores).items())},
        "truncated": sum(r["finish_reason"] == "length" for r in records),
        "score_range": [low, high],
    }


def judge_responses(
    responses_path: str,
    model_dir: str,
    template_path: str,
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
    """Judge the responses of shard ``shard`` of ``shards`` of the prompts, checkpointing every
    ``checkpoint_every`` responses (or more: whole batches) beside ``out_path``."""
    start = time.perf_counter()
    template = load_template(template_path, JUDGE_FIELDS)
    responses = read_jsonl(
        responses_path, required=("response_id", "prompt_id", "prompt", "response"), id_field="response_id"
    )
    responses = select_shard(responses, shard, shards)
    backend = load_backend(backend_settings, model_dir, threads=threads)
    loaded = time.perf_counter()
    prompts = [judge_prompt(template, r["prompt"], r["response"]) for r in responses]
    n = settings["judgments"]
    key = stage_fingerprint("judge_responses", model_dir, backend, inputs=responses, prompts=prompts,
                            settings=settings, seed=seed)
    checkpoint = StageCheckpoint(out_path, key, checkpoint_every, unit="responses")
    records = checkpoint.run(
        backend_batches(backend, prompts, n),
        lambda positions: judgment_records([responses[i] for i in positions], backend, template, settings, seed,
                                           indices=positions),
        per_item=n,
    )
    write_jsonl(out_path, records)
    stats = {
        "stage": "judge_responses",
        "shard": shard,
        "responses": len(responses),
        **judging_stats(records, settings["score_min"], settings["score_max"]),
        "seed": seed,
        "settings": settings,
        "backend": backend.describe(),
        "resumed_from_checkpoint": checkpoint.resumed,
        "load_seconds": round(loaded - start, 3),
        "seconds": round(time.perf_counter() - loaded, 3),
    }
    write_json(stats_path, stats)
    checkpoint.remove()
    log.info("%d judgments, parse rate %s, mean score %s", stats["judgments"], stats["parse_rate"], stats["score_mean"])
    return stats


def gather_judgments(
    shard_paths: list[str], stats_paths: list[str], low: float, high: float, out_path: str, stats_out: str
) -> dict:
    """Concatenate the shards' judgments in order; recompute parse rates and score counts."""
    return gather(shard_paths, stats_paths, "judgment_id", lambda r: judging_stats(r, low, high),
                  out_path, stats_out)
