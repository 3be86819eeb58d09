"""Stage: draw the prompts of one iteration from the pool.

The pool is shuffled once with the experiment's seed; iteration t takes the next P_t prompts
of that fixed order, so the iterations' draws are disjoint and a later iteration's draw does
not depend on how the earlier ones were run. Prompts whose text also appears in an evaluation
set are removed first.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Sequence

from .records import read_jsonl, write_json, write_jsonl

log = logging.getLogger(__name__)

POOL_FIELDS = ("prompt_id", "prompt")


def normalise(text: str) -> str:
    """Whitespace- and case-insensitive form of a prompt, for overlap checks."""
    return " ".join(text.lower().split())


def usable_pool(pool_path: str, exclude_paths: Sequence[str]) -> tuple[list[dict], int]:
    """The pool without prompts that also occur in an evaluation set; and how many were removed."""
    pool = read_jsonl(pool_path, required=POOL_FIELDS, id_field="prompt_id")
    excluded = {normalise(r["prompt"]) for p in exclude_paths for r in read_jsonl(p, required=("prompt",))}
    kept = [r for r in pool if normalise(r["prompt"]) not in excluded]
    return kept, len(pool) - len(kept)


def check_pool_size(pool_path: str, exclude_paths: Sequence[str], counts: Sequence[int]) -> None:
    """Fail before any job runs when the pool cannot give every iteration its prompts."""
    kept, removed = usable_pool(pool_path, exclude_paths)
    if sum(counts) > len(kept):
        raise ValueError(
            f"{pool_path}: {len(kept)} usable prompts ({removed} removed as evaluation prompts), "
            f"but the iterations need {sum(counts)} ({' + '.join(map(str, counts))} per iteration); "
            "add prompts or lower the per-iteration 'prompts'"
        )


def sample_prompts(
    pool_path: str,
    exclude_paths: Sequence[str],
    counts: Sequence[int],
    iteration: int,
    seed: int,
    out_path: str,
    stats_path: str,
) -> dict:
    """Write the prompts of ``iteration`` (1-based); ``counts`` are P for iterations 1..iteration."""
    start = time.perf_counter()
    check_pool_size(pool_path, exclude_paths, counts)
    kept, removed = usable_pool(pool_path, exclude_paths)
    order = list(range(len(kept)))
    random.Random(seed).shuffle(order)
    offset = sum(counts[: iteration - 1])
    chosen = [kept[i] for i in order[offset : offset + counts[iteration - 1]]]
    write_jsonl(out_path, ({**r, "iteration": iteration} for r in chosen))
    stats = {
        "stage": "sample_prompts",
        "iteration": iteration,
        "pool_size": len(kept) + removed,
        "removed_as_evaluation_prompts": removed,
        "offset": offset,
        "prompts": len(chosen),
        "seed": seed,
        "seconds": round(time.perf_counter() - start, 3),
    }
    write_json(stats_path, stats)
    log.info("iteration %d: drew %d prompts (offset %d)", iteration, len(chosen), offset)
    return stats
