"""Stage: the meta-judge compares judgments of the same response, in both orders.

Per prompt, the response whose valid judgment scores vary most is selected (ties broken by the
seeded RNG); every ordered pair (m, n) of its judgments is shown to the meta-judge with m as
"Judgment A" and n as "Judgment B": N·(N-1) comparisons per prompt. The outcome is +1 when m
wins, -1 when n wins and 0 when the verdict does not parse (kept and counted).
"""

from __future__ import annotations

import itertools
import logging
import random
import time
from collections import Counter, defaultdict
from typing import Sequence

from .backends import Backend, Sampling, load_backend
from .checkpoint import StageCheckpoint, backend_batches, stage_fingerprint
from .judging import sample_lines
from .records import read_jsonl, write_json, write_jsonl
from .scoring import outcome_from_winner, parse_winner
from .selection import Skipped, select_high_variance
from .shards import gather, select_shard
from .templates import META_JUDGE_FIELDS, load_template, meta_judge_prompt

log = logging.getLogger(__name__)

WINNER_LABEL = "\nWinner: Judgment"
WINNER_OPTIONS = (" A", " B")


def select_responses(judgments: list[dict], seed: int) -> tuple[dict[str, str], Counter]:
    """For every prompt, the response id chosen for meta-judging; and skip reasons by kind."""
    by_prompt: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for j in judgments:
        by_prompt[j["prompt_id"]][j["response_id"]].append(j["score"])
    rng = random.Random(seed)
    selected, skipped = {}, Counter()
    for prompt_id in sorted(by_prompt):
        result = select_high_variance(by_prompt[prompt_id], rng)
        if isinstance(result, Skipped):
            skipped[result.reason] += 1
        else:
            selected[prompt_id] = result
    return selected, skipped


def comparisons(selected: dict[str, str], judgments: list[dict]) -> list[tuple[dict, dict]]:
    """Every ordered pair (first, second) of the selected responses' judgments."""
    by_response = defaultdict(list)
    for j in judgments:
        by_response[j["response_id"]].append(j)
    return [pair for response_id in selected.values()
            for pair in itertools.permutations(by_response[response_id], 2)]


def comparison_prompts(pairs: list[tuple[dict, dict]], responses: dict[str, dict], template: str) -> list:
    """The meta-judge prompt of every ordered pair: question, response, Judgment A = first."""
    prompts = []
    for first, second in pairs:
        r = responses[first["response_id"]]
        prompts.append(meta_judge_prompt(template, r["prompt"], r["response"], first["judgment"], second["judgment"]))
    return prompts


def meta_judgment_records(
    pairs: list[tuple[dict, dict]], responses: dict[str, dict], backend: Backend,
    template: str, settings: dict, seed: int, indices: Sequence[int] | None = None,
) -> list[dict]:
    """One meta-judgment per ordered pair; ``indices``: the pairs' positions in the stage
    (seeds; see ``judging.sample_lines``)."""
    prompts = comparison_prompts(pairs, responses, template)
    sampling = Sampling(settings["max_new_tokens"], settings["temperature"], settings["top_p"])
    forced = (WINNER_LABEL, WINNER_OPTIONS) if settings["winner_mode"] == "forced" else None
    rows = [row[0] for row in sample_lines(backend, prompts, 1, sampling, seed, forced, indices)]
    records = []
    for (first, second), (c, text, _) in zip(pairs, rows):
        parsed = parse_winner(text)
        records.append({
            "meta_judgment_id": f"{first['judgment_id']}-vs-{second['judgment_id'].rsplit('-', 1)[-1]}",
            "prompt_id": first["prompt_id"],
            "response_id": first["response_id"],
            "first_id": first["judgment_id"],
            "second_id": second["judgment_id"],
            "first_score": first["score"],
            "second_score": second["score"],
            "meta_judgment": text,
            "winner": parsed.winner,
            "outcome": outcome_from_winner(parsed.winner),
            "parse_error": parsed.error,
            "completion_tokens": c.completion_tokens,
            "finish_reason": c.finish_reason,
        })
    return records


def meta_judging_summary(records: list[dict]) -> dict:
    """Counts of one meta-judging run (or of gathered shards)."""
    outcomes = Counter(r["outcome"] for r in records)
    return {
        "selected_responses": len({r["response_id"] for r in records}),
        "comparisons": len(records),
        "first_wins": outcomes[1],
        "second_wins": outcomes[-1],
        "unparsed": outcomes[0],
        "parse_failures": dict(Counter(r["parse_error"] for r in records if r["parse_error"])),
    }


def meta_judge(
    judgments_path: str,
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
    """Meta-judge the prompts of shard ``shard`` of ``shards``, checkpointing every
    ``checkpoint_every`` comparisons (or more: whole batches) beside ``out_path``."""
    start = time.perf_counter()
    template = load_template(template_path, META_JUDGE_FIELDS)
    judgments = read_jsonl(judgments_path, required=("judgment_id", "response_id", "prompt_id", "judgment", "score"),
                           id_field="judgment_id")
    judgments = select_shard(judgments, shard, shards)
    responses = {r["response_id"]: r for r in read_jsonl(responses_path, required=("response_id", "prompt", "response"),
                                                          id_field="response_id")}
    selected, skipped = select_responses(judgments, seed)
    pairs = comparisons(selected, judgments)
    backend = load_backend(backend_settings, model_dir, threads=threads)
    loaded = time.perf_counter()
    prompts = comparison_prompts(pairs, responses, template)
    key = stage_fingerprint("meta_judge", model_dir, backend, inputs=pairs, prompts=prompts,
                            settings=settings, seed=seed)
    checkpoint = StageCheckpoint(out_path, key, checkpoint_every, unit="comparisons")
    records = checkpoint.run(
        backend_batches(backend, prompts, 1),
        lambda positions: meta_judgment_records([pairs[i] for i in positions], responses, backend, template,
                                                settings, seed, indices=positions),
        per_item=1,
    )
    write_jsonl(out_path, records)
    stats = {
        "stage": "meta_judge",
        "shard": shard,
        "prompts": len({j["prompt_id"] for j in judgments}),
        "skipped_prompts": dict(skipped),
        **meta_judging_summary(records),
        "seed": seed,
        "settings": settings,
        "backend": backend.describe(),
        "resumed_from_checkpoint": checkpoint.resumed,
        "load_seconds": round(loaded - start, 3),
        "seconds": round(time.perf_counter() - loaded, 3),
    }
    write_json(stats_path, stats)
    checkpoint.remove()
    log.info("%d comparisons over %d responses; %d unparsed", len(records), len(selected), stats["unparsed"])
    return stats


def gather_meta_judgments(shard_paths: list[str], stats_paths: list[str], out_path: str, stats_out: str) -> dict:
    """Concatenate the shards' records in order and combine their stats."""
    return gather(shard_paths, stats_paths, "meta_judgment_id", meta_judging_summary, out_path, stats_out)
