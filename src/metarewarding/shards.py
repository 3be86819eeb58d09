"""Split a stage's work into shards that run as separate jobs, and gather their outputs.

A shard is a contiguous block of prompts (all responses and judgments of a prompt stay in one
shard, as the meta-judge needs), so concatenating the shards in order gives the records in the
order of the unsharded stage.
"""

from __future__ import annotations

from typing import Callable, Sequence

from .records import RecordError, read_json, read_jsonl, write_json, write_jsonl


def select_shard(records: list[dict], shard: int, shards: int, key: str = "prompt_id") -> list[dict]:
    """The records whose ``key`` falls in block ``shard`` of ``shards`` (by first appearance)."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} is outside 0..{shards - 1}")
    order = list(dict.fromkeys(r[key] for r in records))
    start, stop = len(order) * shard // shards, len(order) * (shard + 1) // shards
    keep = set(order[start:stop])
    return [r for r in records if r[key] in keep]


def sum_counts(stats: Sequence[dict]) -> dict:
    """Sum the integer counts (and dicts of counts, e.g. drop reasons) of the shards' stats."""
    out: dict = {}
    for key, value in stats[0].items():
        if isinstance(value, int) and not isinstance(value, bool) and key not in ("seed", "shard"):
            out[key] = sum(s.get(key, 0) for s in stats)
        elif isinstance(value, dict) and all(isinstance(v, int) for v in value.values()):
            merged: dict = {}
            for s in stats:
                for k, v in s.get(key, {}).items():
                    merged[k] = merged.get(k, 0) + v
            out[key] = merged
    return out


def gather(
    shard_paths: Sequence[str],
    stats_paths: Sequence[str],
    id_field: str,
    summarize: Callable[[list[dict]], dict],
    out_path: str,
    stats_out: str,
) -> dict:
    """Concatenate shard outputs in order (ids must stay unique) and write combined stats."""
    records, seen = [], {}
    for path in shard_paths:
        for record in read_jsonl(path, allow_empty=True):
            key = record[id_field]
            if key in seen:
                raise RecordError(f"{path}: {id_field} {key!r} also in {seen[key]}; shards overlap")
            seen[key] = path
            records.append(record)
    shard_stats = [read_json(p) for p in stats_paths]
    first = shard_stats[0]
    stats = {
        "stage": first["stage"],
        "shards": len(shard_stats),
        **sum_counts(shard_stats),
        **summarize(records),
        "seeds": [s.get("seed") for s in shard_stats],
        "settings": first.get("settings"),
        "backend": first.get("backend"),
        "load_seconds": round(sum(s.get("load_seconds", 0) for s in shard_stats), 3),
        "seconds": round(sum(s.get("seconds", 0) for s in shard_stats), 3),
    }
    write_jsonl(out_path, records)
    write_json(stats_out, stats)
    return stats
