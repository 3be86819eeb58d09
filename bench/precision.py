#!/usr/bin/env python
"""Does bfloat16 keep the transformers backend's outputs sound? float32 against bfloat16 on CPU.

The default run's seed (``RUN_DIR/results/iter0/model``, iteration 1's judge), the same inputs in
both dtypes, one ``TransformersBackend`` at a time (float32, freed, then bfloat16). Parts:

judge     every record of ``RUN_DIR/results/iter1/judgments.jsonl``: the judge prompt, continued
          by the record's own judgment text up to ``Score:`` (the forced line exactly as
          ``judging.sample_lines`` forms it: body + ``SCORE_LABEL``), then ``backend.choose`` over
          ``score_options(0, 5)``. Argmax agreement between dtypes, mean and max |Δ| of the option
          log-probabilities, mean |Δ| of the expected score (softmax over the options, sum p_i * i),
          Pearson and Spearman correlation of the expected scores.
meta      every record of ``meta_judgments.jsonl``: the meta-judge prompt + its judgment text up
          to ``WINNER_LABEL``, options A/B. Argmax agreement, mean and max |Δ P(A)|.
greedy    the prompts of ``iter1/prompts.jsonl``, greedy (96 new tokens, n=1): identical
          outputs, mean common prefix (characters), and the mean per-token log-probability of
          the float32 greedy text (+ end-of-turn token when it stopped), teacher-forced in each
          dtype: does bfloat16 give the same text a similar likelihood?
decode    the judge prompts again, their last ``--decode-tokens`` tokens (the judgment text) fed
          one token a step through the backend's decode path (prefill of the rest, then the KV
          cache, shared prompt levels kept once as sampling keeps them): argmax agreement of
          the next-token distributions, mean and max |Δ| of the fed tokens' log-probabilities. ``--bf16-attention sdpa`` runs the
          bfloat16 side on transformers' sdpa instead of the backend's grouped decode attention,
          to see what that attention changes.
time      wall seconds of every part per dtype; model load and a tiny warm-up apart.

    python bench/precision.py --run-dir /tmp/defaultrun
    python bench/precision.py --run-dir /tmp/defaultrun --limit 4   # smoke: 4 records per part

Markdown report on stdout; everything (per-record values too) as JSON in ``--out``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from metarewarding.backends.base import ChatPrompt, Sampling, user_prompt  # noqa: E402
from metarewarding.backends.hf import GROUPED, TransformersBackend  # noqa: E402
from metarewarding.judging import SCORE_LABEL, score_options  # noqa: E402
from metarewarding.meta_judging import WINNER_LABEL, WINNER_OPTIONS  # noqa: E402
from metarewarding.records import read_jsonl  # noqa: E402
from metarewarding.templates import (JUDGE_FIELDS, META_JUDGE_FIELDS, judge_prompt, load_template,  # noqa: E402
                                     meta_judge_prompt)

SCORE_OPTIONS = score_options(0, 5)
DTYPES = ("float32", "bfloat16")
now = time.perf_counter


def log(msg: str) -> None:
    print(f"[precision {datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def continued(prompt: ChatPrompt, text: str) -> ChatPrompt:
    return ChatPrompt(prompt.messages, prompt.continuation + text)


def forced_prefix(text: str, label: str, options) -> str:
    """The record's text up to and including the forced label (the option that followed cut off)."""
    for option in options:
        if text.endswith(label + option):
            return text[: len(text) - len(option)]
    raise ValueError(f"text does not end with {label!r} + one of {list(options)}: ...{text[-60:]!r}")


def build_inputs(args) -> dict:
    """The chat prompts of the three parts, from the run's iteration-1 records."""
    it = Path(args.run_dir) / "results" / "iter1"
    responses = {r["response_id"]: r for r in read_jsonl(it / "responses.jsonl", id_field="response_id")}
    judgments = read_jsonl(it / "judgments.jsonl", id_field="judgment_id")
    by_id = {j["judgment_id"]: j for j in judgments}
    metas = read_jsonl(it / "meta_judgments.jsonl", id_field="meta_judgment_id")
    judge_t = load_template(Path(args.templates) / "judge.txt", JUDGE_FIELDS)
    meta_t = load_template(Path(args.templates) / "meta_judge.txt", META_JUDGE_FIELDS)
    judge = []
    for j in judgments[: args.limit]:
        r = responses[j["response_id"]]
        judge.append(continued(judge_prompt(judge_t, r["prompt"], r["response"]),
                               forced_prefix(j["judgment"], SCORE_LABEL, SCORE_OPTIONS)))
    meta = []
    for m in metas[: args.limit]:
        r, a, b = responses[m["response_id"]], by_id[m["first_id"]], by_id[m["second_id"]]
        meta.append(continued(meta_judge_prompt(meta_t, r["prompt"], r["response"], a["judgment"], b["judgment"]),
                              forced_prefix(m["meta_judgment"], WINNER_LABEL, WINNER_OPTIONS)))
    questions = ([p["prompt"] for p in read_jsonl(it / "prompts.jsonl")] if (it / "prompts.jsonl").is_file()
                 else list(dict.fromkeys(r["prompt"] for r in responses.values())))
    return {"judge": judge, "meta": meta, "greedy": [user_prompt(q) for q in questions[: args.limit]],
            "recorded_judge": [j.get("score_logprobs") for j in judgments[: args.limit]]}


@torch.inference_mode()
def decode_forced(backend: TransformersBackend, prompts: list, tail: int) -> list:
    """Per prompt: [log-prob of the fed token, argmax] for each of its last ``tail`` tokens, fed
    one a step through the backend's decode path after a prefill of the rest."""
    ids = backend._encode_all(prompts)
    out = []
    for start in range(0, len(ids), backend.batch_size):
        batch = ids[start : start + backend.batch_size]
        width = min(min(tail, len(x) - 1) for x in batch)
        cache, logits, mask, next_pos = backend._prefill([x[: len(x) - width] for x in batch],
                                                         shared=backend.attention == GROUPED)
        rows = [[] for _ in batch]
        for step in range(width):
            token = torch.tensor([x[len(x) - width + step] for x in batch], device=backend.device)
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            picked = logprobs.gather(-1, token[:, None])[:, 0].tolist()
            for row, lp, top in zip(rows, picked, logprobs.argmax(-1).tolist()):
                row.append([lp, top])
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            logits = backend._forward(cache, token[:, None], mask, next_pos)
            next_pos = next_pos + 1
        out.extend(rows)
    return out


@torch.inference_mode()
def teacher_forced(backend: TransformersBackend, targets: list) -> list:
    """Mean log-probability per completion token of every (prompt ids, completion ids)."""
    means = []
    for prompt_ids, completion_ids in targets:
        ids = torch.tensor([prompt_ids + completion_ids], device=backend.device)
        logits = backend.model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float()
        picked = torch.log_softmax(logits, dim=-1).gather(-1, ids[0, len(prompt_ids):, None])
        means.append(picked.mean().item() if completion_ids else None)
    return means


def run_dtype(args, dtype: str, inputs: dict, targets: list | None) -> dict:
    """All three parts in one dtype; ``targets``: the float32 greedy token ids (None: make them)."""
    seconds = {}
    t0 = now()
    backend = TransformersBackend(args.model, batch_size=args.batch_size, dtype=dtype, threads=args.threads)
    if dtype == "bfloat16" and args.bf16_attention == "sdpa":
        backend.model.set_attn_implementation("sdpa")
        backend.attention = "sdpa"
    seconds["load"] = now() - t0
    t0 = now()
    backend.generate([user_prompt("Hello")], 1, Sampling(2, 0.0, 1.0), seed=0)  # one-time costs
    seconds["warmup"] = now() - t0
    log(f"{dtype}: loaded in {seconds['load']:.1f} s; {backend.describe()}")
    out: dict = {"backend": backend.describe()}
    for part, options in (("judge", SCORE_OPTIONS), ("meta", WINNER_OPTIONS)):
        t0 = now()
        out[part] = [c.logprobs for c in backend.choose(inputs[part], options)]
        seconds[part] = now() - t0
        log(f"{dtype}: {part}, {len(inputs[part])} forced choices in {seconds[part]:.1f} s")
    t0 = now()
    completions = [row[0] for row in backend.generate(inputs["greedy"], 1, Sampling(args.max_new_tokens, 0.0, 1.0), 0)]
    seconds["greedy"] = now() - t0
    out["greedy"] = [c.text for c in completions]
    log(f"{dtype}: greedy, {len(completions)} prompts in {seconds['greedy']:.1f} s")
    t0 = now()
    out["decode"] = decode_forced(backend, inputs["judge"], args.decode_tokens)
    seconds["decode"] = now() - t0
    log(f"{dtype}: decode, {sum(map(len, out['decode']))} tokens in {seconds['decode']:.1f} s")
    if targets is None:
        tok = backend.tokenizer
        targets = [(tok(backend.render(p), add_special_tokens=False)["input_ids"],
                    tok(c.text, add_special_tokens=False)["input_ids"]
                    + ([tok.eos_token_id] if c.finish_reason == "stop" else []))
                   for p, c in zip(inputs["greedy"], completions)]
    t0 = now()
    out["teacher_forced"] = teacher_forced(backend, targets)
    seconds["teacher_forced"] = now() - t0
    out["targets"], out["seconds"] = targets, {k: round(v, 2) for k, v in seconds.items()}
    del backend
    gc.collect()
    return out


def expected_score(logprobs: dict) -> float:
    top = max(logprobs.values())
    weights = {o: math.exp(v - top) for o, v in logprobs.items()}
    return sum(w * int(o) for o, w in weights.items()) / sum(weights.values())


def argmax(logprobs: dict) -> str:
    return max(logprobs, key=logprobs.__getitem__)


def ranks(xs: list) -> list:
    """Ranks with ties averaged (for Spearman)."""
    order = sorted(xs)
    last = {x: i for i, x in enumerate(order)}
    first = {x: i for i, x in reversed(list(enumerate(order)))}
    return [(first[x] + last[x]) / 2 for x in xs]


def pearson(x: list, y: list):
    try:
        return round(statistics.correlation(x, y), 4)
    except statistics.StatisticsError:  # fewer than 2 points, or constant
        return None


def p_a(lp: dict) -> float:
    """P(Judgment A) after a softmax over the two options."""
    return 1 / (1 + math.exp(lp[WINNER_OPTIONS[1]] - lp[WINNER_OPTIONS[0]]))


def mean(xs):
    return round(statistics.fmean(xs), 4) if xs else None


def compare(inputs: dict, a: dict, b: dict) -> dict:
    """float32 (a) against bfloat16 (b), part by part."""
    n = len(a["judge"])
    diffs = [abs(x[o] - y[o]) for x, y in zip(a["judge"], b["judge"]) for o in SCORE_OPTIONS]
    ea, eb = [expected_score(x) for x in a["judge"]], [expected_score(y) for y in b["judge"]]
    recorded = [abs(x[o] - rec[o.strip()]) for x, rec in zip(a["judge"], inputs["recorded_judge"]) if rec
                for o in SCORE_OPTIONS]
    judge = {"records": n, "argmax_agree": mean([argmax(x) == argmax(y) for x, y in zip(a["judge"], b["judge"])]),
             "logprob_mean_abs_diff": mean(diffs), "logprob_max_abs_diff": round(max(diffs), 4) if diffs else None,
             "expected_mean_abs_diff": mean([abs(x - y) for x, y in zip(ea, eb)]),
             "expected_mean_f32": mean(ea), "expected_mean_bf16": mean(eb),
             "pearson": pearson(ea, eb), "spearman": pearson(ranks(ea), ranks(eb)),
             "f32_vs_recorded_max_abs_diff": round(max(recorded), 4) if recorded else None}

    pa = [abs(p_a(x) - p_a(y)) for x, y in zip(a["meta"], b["meta"])]
    meta = {"records": len(pa), "argmax_agree": mean([argmax(x) == argmax(y) for x, y in zip(a["meta"], b["meta"])]),
            "p_a_mean_abs_diff": mean(pa), "p_a_max_abs_diff": round(max(pa), 4) if pa else None,
            "p_a_mean_f32": mean([p_a(x) for x in a["meta"]]), "p_a_mean_bf16": mean([p_a(y) for y in b["meta"]])}
    ga, gb = a["greedy"], b["greedy"]
    tf = [(x, y) for x, y in zip(a["teacher_forced"], b["teacher_forced"]) if x is not None]
    greedy = {"prompts": len(ga), "identical": sum(x == y for x, y in zip(ga, gb)),
              "common_prefix_chars_mean": mean([len(os.path.commonprefix([x, y])) for x, y in zip(ga, gb)]),
              "f32_chars_mean": mean([len(x) for x in ga]), "bf16_chars_mean": mean([len(y) for y in gb]),
              "f32_text_tokens": sum(len(c) for _, c in a["targets"]),
              "f32_text_logprob_per_token_f32": mean([x for x, _ in tf]),
              "f32_text_logprob_per_token_bf16": mean([y for _, y in tf]),
              "logprob_per_token_mean_abs_diff": mean([abs(x - y) for x, y in tf])}
    fed = [(x, y) for ra, rb in zip(a["decode"], b["decode"]) for x, y in zip(ra, rb)]
    decode = {"tokens": len(fed), "argmax_agree": mean([x[1] == y[1] for x, y in fed]),
              "logprob_mean_abs_diff": mean([abs(x[0] - y[0]) for x, y in fed]),
              "logprob_max_abs_diff": round(max(abs(x[0] - y[0]) for x, y in fed), 4) if fed else None,
              "attention_bf16": b["backend"].get("attention")}
    return {"judge": judge, "meta": meta, "greedy": greedy, "decode": decode}


ROWS = [("judge: forced scores compared", "judge", "records"), ("judge: argmax agreement", "judge", "argmax_agree"),
        ("judge: option log-prob mean / max abs diff", "judge", "logprob_mean_abs_diff logprob_max_abs_diff"),
        ("judge: expected score mean abs diff", "judge", "expected_mean_abs_diff"),
        ("judge: expected score mean, f32 / bf16", "judge", "expected_mean_f32 expected_mean_bf16"),
        ("judge: expected score Pearson / Spearman", "judge", "pearson spearman"),
        ("judge: f32 log-probs vs the run's records, max abs diff", "judge", "f32_vs_recorded_max_abs_diff"),
        ("meta: forced winners compared", "meta", "records"), ("meta: argmax agreement", "meta", "argmax_agree"),
        ("meta: P(A) mean / max abs diff", "meta", "p_a_mean_abs_diff p_a_max_abs_diff"),
        ("meta: mean P(A), f32 / bf16", "meta", "p_a_mean_f32 p_a_mean_bf16"),
        ("greedy: identical outputs / prompts", "greedy", "identical prompts"),
        ("greedy: mean common prefix / f32 length (chars)", "greedy", "common_prefix_chars_mean f32_chars_mean"),
        ("greedy: f32 text log-prob per token, f32 / bf16 / tokens", "greedy",
         "f32_text_logprob_per_token_f32 f32_text_logprob_per_token_bf16 f32_text_tokens"),
        ("greedy: per-text log-prob per token, mean abs diff", "greedy", "logprob_per_token_mean_abs_diff"),
        ("decode: tokens fed / bf16 attention", "decode", "tokens attention_bf16"),
        ("decode: next-token argmax agreement", "decode", "argmax_agree"),
        ("decode: fed token log-prob mean / max abs diff", "decode", "logprob_mean_abs_diff logprob_max_abs_diff")]


def render(report: dict) -> str:
    c, s = report["comparison"], {d: report["runs"][d]["seconds"] for d in DTYPES}
    lines = ["# float32 vs bfloat16: the transformers backend on CPU", "",
             f"Model {report['model']}, {report['threads']} threads, batch {report['batch_size']}, "
             f"torch {report['torch']}{', limit ' + str(report['limit']) if report['limit'] else ''}.", "",
             "| check | value |", "| --- | ---: |"]
    lines += [f"| {label} | " + " / ".join(str(c[part][k]) for k in keys.split()) + " |" for label, part, keys in ROWS]
    lines += ["", "| seconds | " + " | ".join(s["float32"]) + " |", "| --- |" + " ---: |" * len(s["float32"])]
    lines += [f"| {d} | " + " | ".join(f"{s[d][k]:.2f}" for k in s["float32"]) + " |" for d in DTYPES]
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--run-dir", default=".", help="a finished run: RUN_DIR/results/iter0/model and iter1 records")
    p.add_argument("--model", default=None, help="model folder (default: RUN_DIR/results/iter0/model)")
    p.add_argument("--templates", default=str(REPO / "data" / "templates"), help="holds judge.txt, meta_judge.txt")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads (all CPUs)")
    p.add_argument("--batch-size", type=int, default=128, help="backend batch size (config.yaml's)")
    p.add_argument("--max-new-tokens", type=int, default=96, help="greedy generation budget")
    p.add_argument("--decode-tokens", type=int, default=48, help="tokens fed through the decode path per judge prompt")
    p.add_argument("--bf16-attention", choices=("backend", "sdpa"), default="backend",
                   help="bfloat16 side: the backend's own attention, or transformers' sdpa")
    p.add_argument("--limit", type=int, default=None, help="at most this many records/prompts per part (smoke)")
    p.add_argument("--out", default=str(REPO / "bench" / "precision.json"), help="JSON output")
    args = p.parse_args(argv)
    args.model = args.model or str(Path(args.run_dir) / "results" / "iter0" / "model")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    inputs = build_inputs(args)
    log(f"model {args.model}; threads {args.threads}; {len(inputs['judge'])} judgments, "
        f"{len(inputs['meta'])} meta-judgments, {len(inputs['greedy'])} prompts")
    runs = {"float32": run_dtype(args, "float32", inputs, None)}
    runs["bfloat16"] = run_dtype(args, "bfloat16", inputs, runs["float32"]["targets"])
    comparison = compare(inputs, runs["float32"], runs["bfloat16"])
    for run in runs.values():
        del run["targets"]  # token ids; the texts are kept
    report = {"model": os.path.abspath(args.model), "threads": torch.get_num_threads(), "batch_size": args.batch_size,
              "torch": torch.__version__, "limit": args.limit, "max_new_tokens": args.max_new_tokens,
              "comparison": comparison, "runs": runs}
    print(render(report))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
