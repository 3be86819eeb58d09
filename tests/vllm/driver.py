"""Run the vLLM backend on a tiny model and write what it did as JSON; the checks live in
tests/unit/test_vllm_backend.py, which calls this inside .venvs/vllm (vLLM's CPU build):

    .venvs/vllm/bin/python tests/vllm/driver.py WORK_DIR [--compile]

WORK_DIR receives the model (model/) and the report (report.json). The engine runs eager
(``enforce_eager``) unless --compile is given: torch.compile's warm-up takes about a minute on
2 cores. The test imports PROMPTS and CHOICES from here to compute the transformers backend's
reference log-probabilities in the main environment.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from metarewarding.backends import ChatPrompt, Sampling, load_backend, user_prompt

PROMPTS = [user_prompt("short"), user_prompt("a much longer prompt than the first one " * 3),
           user_prompt("mid size prompt", system="be brief")]
LONG = [user_prompt(f"prompt {i}: " + "a much longer prompt than the first one " * 6) for i in range(30)]
SCORE = ChatPrompt(user_prompt("grade this").messages, continuation="fine\nScore:")
WINNER = ChatPrompt(user_prompt("which judgment").messages, continuation="B is better\nWinner: Judgment")
# name -> (prompts, options); the words differ in several tokens (prompt log-probabilities)
CHOICES = {
    "score": ([SCORE, PROMPTS[0]], [f" {v}" for v in range(6)]),  # judging.score_options(0, 5)
    "winner": ([WINNER], [" A", " B"]),
    "words": ([SCORE], [" helpful answer", " harmful answer"]),
}


def main(work: Path, eager: bool) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_model import build

    model = build(work / "model")
    start = time.perf_counter()
    backend = load_backend({"name": "vllm", "dtype": "float32", "max_model_len": 512, "enforce_eager": eager},
                           str(model), threads=2)
    report: dict = {"engine_start_s": round(time.perf_counter() - start, 2)}
    report["prompt_tokens"] = [len(backend.encode(p)) for p in PROMPTS]

    def run(name, items, n, sampling, seed, indices=None):
        t = time.perf_counter()
        out = backend.generate(items, n=n, sampling=sampling, seed=seed, indices=indices)
        report[name] = [[asdict(c) for c in cs] for cs in out]
        report[name + "_s"] = round(time.perf_counter() - t, 3)

    run("seed1", PROMPTS, 4, Sampling(24, 0.9, 0.95), 1)
    run("seed1_again", PROMPTS, 4, Sampling(24, 0.9, 0.95), 1)
    run("seed2", PROMPTS, 4, Sampling(24, 0.9, 0.95), 2)
    # the first prompt alone: its samples must not depend on the other prompts of the call
    run("seed1_alone", PROMPTS[:1], 4, Sampling(24, 0.9, 0.95), 1)
    # prompt 1 alone, called with its index in the first call (a stage's checkpoint chunk)
    run("seed1_chunk", PROMPTS[1:2], 4, Sampling(24, 0.9, 0.95), 1, indices=[1])
    # more prompt tokens than one engine step takes (max_num_batched_tokens, 4096 on CPU):
    # prefills spread over steps, still seeded and batch-independent
    report["step_tokens"] = backend.llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
    report["long_prompt_tokens"] = sum(len(backend.encode(p)) for p in LONG)
    run("long", LONG, 2, Sampling(8, 0.9, 0.95), 3)
    run("long_alone", LONG[-1:], 2, Sampling(8, 0.9, 0.95), 3, indices=[len(LONG) - 1])
    run("cut", PROMPTS, 4, Sampling(1, 1.0, 1.0), 5)
    run("greedy", PROMPTS[:1], 2, Sampling(6, 0.0), 0)
    for name, (items, options) in CHOICES.items():
        t = time.perf_counter()
        report[f"choose_{name}"] = [asdict(c) for c in backend.choose(items, options)]
        report[f"choose_{name}_s"] = round(time.perf_counter() - t, 3)
        report[f"choose_{name}_method"] = backend.choose_method
    report["describe"] = backend.describe()
    (work / "report.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":  # vLLM may start worker processes: keep the guard
    main(Path(sys.argv[1]), eager="--compile" not in sys.argv[2:])
