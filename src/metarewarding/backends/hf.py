"""The transformers backend: batched, left-padded generation with the model's chat template.

Rows (one per prompt and sample) are sorted by prompt length and cut into batches of
``batch_size`` so that padding stays small; results come back in prompt order. Each batch is
sampled under its own seed, derived from the call's seed and the batch's first row, so a
call's output depends only on the prompts, the seed and the batch size.
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import torch

from .base import ChatPrompt, Choice, Completion, Sampling

log = logging.getLogger(__name__)


class TransformersBackend:
    """Runs a local Hugging Face causal LM in-process (CPU or one GPU)."""

    name = "transformers"

    def __init__(
        self,
        model_path: str,
        batch_size: int = 16,
        dtype: str = "float32",
        device: str | None = None,
        threads: int | None = None,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        self.model_path = str(model_path)
        self.batch_size = batch_size
        self.dtype = dtype
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        if not self.tokenizer.chat_template:
            raise ValueError(f"model {self.model_path}: the tokenizer has no chat template")
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(
            self.model_path, dtype=getattr(torch, dtype)
        ).to(self.device)
        self.model.eval()
        self.eos_ids = _eos_ids(self.model.generation_config, self.tokenizer)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "model": os.path.abspath(self.model_path),
            "batch_size": self.batch_size,
            "dtype": self.dtype,
            "device": self.device,
            "torch_threads": torch.get_num_threads(),
        }

    def render(self, prompt: ChatPrompt) -> str:
        """The exact text the model sees: chat template, generation prompt, continuation."""
        text = self.tokenizer.apply_chat_template(
            list(prompt.messages), tokenize=False, add_generation_prompt=True
        )
        return text + prompt.continuation

    def generate(
        self, prompts: Sequence[ChatPrompt], n: int, sampling: Sampling, seed: int
    ) -> list[list[Completion]]:
        texts = [self.render(p) for p in prompts]
        rows = [(i, j) for i in range(len(prompts)) for j in range(n)]
        encoded = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        rows.sort(key=lambda row: (len(encoded[row[0]]), row))
        out: list[list[Completion | None]] = [[None] * n for _ in prompts]
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start : start + self.batch_size]
            torch.manual_seed(_batch_seed(seed, batch[0]))
            completions = self._generate_batch([encoded[i] for i, _ in batch], sampling)
            for (i, j), completion in zip(batch, completions):
                out[i][j] = completion
        return out  # type: ignore[return-value]

    @torch.inference_mode()
    def _generate_batch(self, ids: list[list[int]], sampling: Sampling) -> list[Completion]:
        inputs = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt").to(self.device)
        greedy = sampling.temperature == 0
        output = self.model.generate(
            **inputs,
            max_new_tokens=sampling.max_new_tokens,
            do_sample=not greedy,
            temperature=None if greedy else sampling.temperature,
            top_p=None if greedy else sampling.top_p,
            top_k=None,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.eos_ids,
        )
        new_tokens = output[:, inputs["input_ids"].shape[1] :].tolist()
        return [self._completion(len(p), toks) for p, toks in zip(ids, new_tokens)]

    def _completion(self, prompt_len: int, tokens: list[int]) -> Completion:
        """Cut a generated row at its first end-of-sequence token."""
        stop = next((k for k, t in enumerate(tokens) if t in self.eos_ids), None)
        kept = tokens if stop is None else tokens[:stop]
        return Completion(
            text=self.tokenizer.decode(kept, skip_special_tokens=True),
            prompt_tokens=prompt_len,
            completion_tokens=len(kept) + (stop is not None),
            finish_reason="length" if stop is None else "stop",
        )

    def choose(self, prompts: Sequence[ChatPrompt], options: Sequence[str]) -> list[Choice]:
        choices: list[Choice] = []
        texts = [self.render(p) for p in prompts]
        for start in range(0, len(texts), self.batch_size):
            choices += self._choose_batch(texts[start : start + self.batch_size], options)
        return choices

    @torch.inference_mode()
    def _choose_batch(self, texts: list[str], options: Sequence[str]) -> list[Choice]:
        """Score every option as the next tokens after each text; one forward pass per batch
        when the options differ in a single final token (digits, A/B), else one per option."""
        prefixes, option_tokens = [], []
        for text in texts:
            prefix, tokens = _split_options(self.tokenizer, text, options)
            prefixes.append(prefix)
            option_tokens.append(tokens)
        if all(all(len(t) == 1 for t in tokens) for tokens in option_tokens):
            logits = self._last_logits(prefixes)
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            scores = [[logprobs[b, t[0]].item() for t in tokens] for b, tokens in enumerate(option_tokens)]
        else:
            scores = [
                [self._sequence_logprob(p, t) for t in tokens]
                for p, tokens in zip(prefixes, option_tokens)
            ]
        return [
            Choice(option=options[max(range(len(options)), key=s.__getitem__)],
                   logprobs=dict(zip(options, s)))
            for s in scores
        ]

    def _last_logits(self, prefixes: list[list[int]]) -> torch.Tensor:
        inputs = self.tokenizer.pad({"input_ids": prefixes}, return_tensors="pt").to(self.device)
        return self.model(**inputs, logits_to_keep=1).logits[:, -1, :]

    def _sequence_logprob(self, prefix: list[int], tokens: list[int]) -> float:
        ids = torch.tensor([prefix + tokens], device=self.device)
        logprobs = torch.log_softmax(self.model(input_ids=ids).logits[0].float(), dim=-1)
        positions = range(len(prefix) - 1, len(prefix) + len(tokens) - 1)
        return sum(logprobs[p, t].item() for p, t in zip(positions, tokens))


def _split_options(tokenizer, text: str, options: Sequence[str]) -> tuple[list[int], list[list[int]]]:
    """Tokenise text+option for every option; return the shared token prefix and the rest."""
    full = [tokenizer(text + o, add_special_tokens=False)["input_ids"] for o in options]
    common = 0
    while all(len(f) > common for f in full) and len({f[common] for f in full}) == 1:
        common += 1
    if any(len(f) == common for f in full):
        raise ValueError(f"forced-choice options {list(options)} are not distinguishable as tokens")
    return full[0][:common], [f[common:] for f in full]


def _eos_ids(generation_config, tokenizer) -> list[int]:
    """Every token id that ends a turn for this model."""
    eos = generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


def _batch_seed(seed: int, first_row: tuple[int, int]) -> int:
    """A batch's sampling seed: fixed by the call's seed and the batch's first (prompt, sample)."""
    return (seed * 1_000_003 + first_row[0] * 1_009 + first_row[1]) % (2**31 - 1)
