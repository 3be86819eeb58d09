"""The transformers backend: batched, left-padded generation with the model's chat template.

Prompts are sorted by length and batched (``batch_size`` rows = prompts x samples) so that
padding stays small; results come back in prompt order. Each prompt is prefilled once and its
KV cache repeated for its n samples. Every (prompt, sample) row draws from its own seeded
random generator, keyed by the prompt's index in the stage (``indices``), so the batch or the
call a prompt lands in does not change the random stream it sees (the floating-point results
of a batch can still differ in the last bits with its padding; ``batches`` tells a stage which
prompts share one, so that it can split its work without changing them).
A forced line (``Score:`` + digit) continues the same cache instead of reading the prompt
again.
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import torch

from .base import ChatPrompt, Choice, Completion, Sampling, generate_then_choose

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
        self, prompts: Sequence[ChatPrompt], n: int, sampling: Sampling, seed: int,
        indices: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        return [[c for c, _ in row] for row in self._run(prompts, n, sampling, seed, None, indices)]

    def generate_forced(
        self, prompts: Sequence[ChatPrompt], n: int, sampling: Sampling, seed: int,
        label: str, options: Sequence[str], indices: Sequence[int] | None = None,
    ) -> list[list[tuple[Completion, dict[str, float]]]]:
        """Sample completions, then append ``label`` to each and score ``options`` as the next
        tokens, continuing each completion's KV cache (no second pass over the prompt)."""
        label_ids, option_ids = _split_options(self.tokenizer, label, options)
        if any(len(t) != 1 for t in option_ids):
            return generate_then_choose(self, prompts, n, sampling, seed, label, options, indices)
        forced = (label_ids, [t[0] for t in option_ids], list(options))
        return self._run(prompts, n, sampling, seed, forced, indices)

    def batches(self, prompts: Sequence[ChatPrompt], n: int) -> list[list[int]]:
        """The positions of the prompts that ``generate(prompts, n, ...)`` decodes together, in
        order: sorted by token length, ``batch_size // n`` prompts a batch. A call on a union of
        whole batches (with their positions as ``indices``) pads and seeds every batch alike."""
        return self._plan(self._encode_all(prompts), range(len(prompts)), n)

    def _encode_all(self, prompts: Sequence[ChatPrompt]) -> list[list[int]]:
        return [self.tokenizer(self.render(p), add_special_tokens=False)["input_ids"] for p in prompts]

    def _plan(self, encoded: list[list[int]], keys: Sequence[int], n: int) -> list[list[int]]:
        """Positions sorted by (token length, index in the stage), cut into batches."""
        order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i]), keys[i]))
        per_batch = max(1, self.batch_size // n)
        return [order[start : start + per_batch] for start in range(0, len(order), per_batch)]

    def _run(self, prompts, n, sampling, seed, forced, indices=None):
        """Batch unique prompts (sorted by length), n rows each, and decode them together; the
        random stream of a row follows its prompt's index in the stage (``indices``)."""
        keys = list(range(len(prompts))) if indices is None else [int(i) for i in indices]
        if len(keys) != len(prompts):
            raise ValueError(f"{len(keys)} indices for {len(prompts)} prompts")
        encoded = self._encode_all(prompts)
        out: list = [None] * len(prompts)
        for batch in self._plan(encoded, keys, n):
            rows = self._decode([encoded[i] for i in batch], [keys[i] for i in batch], n, sampling, seed, forced)
            for k, i in enumerate(batch):
                out[i] = rows[k * n : (k + 1) * n]
        return out

    def _forward(self, cache, input_ids, mask, positions) -> torch.Tensor:
        """One forward pass that extends ``cache``; the logits of the last position."""
        return self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                          cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]

    @torch.inference_mode()
    def _decode(self, ids, prompt_indices, n, sampling, seed, forced):
        """Prefill each prompt once, repeat its KV cache for n samples, and sample token by
        token with one seeded generator per (prompt, sample); optionally score a forced line.
        Rows that have stopped keep running with their new positions masked out."""
        from transformers import DynamicCache

        batch = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt").to(self.device)
        mask = batch["attention_mask"]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        logits = self._forward(cache, batch["input_ids"], mask, positions)
        cache.batch_repeat_interleave(n)
        logits, mask = logits.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)
        next_pos = positions[:, -1:].repeat_interleave(n, 0) + 1
        generators = [_generator(self.device, seed, i, j) for i in prompt_indices for j in range(n)]
        eos = torch.tensor(self.eos_ids, device=self.device)
        done = torch.zeros(len(generators), dtype=torch.bool, device=self.device)
        tokens: list[torch.Tensor] = []
        for step in range(sampling.max_new_tokens):
            token = _sample(logits, sampling, generators)
            token = token.masked_fill(done, self.tokenizer.pad_token_id)
            tokens.append(token)
            live = ~(done | torch.isin(token, eos))
            done = ~live
            last_step = step == sampling.max_new_tokens - 1
            if done.all() or (last_step and forced is None):
                break
            mask = torch.cat([mask, live.long()[:, None]], dim=1)
            logits = self._forward(cache, token[:, None], mask, next_pos)
            next_pos = next_pos + live.long()[:, None]
        generated = torch.stack(tokens, dim=1).tolist() if tokens else [[] for _ in generators]
        completions = [self._completion(len(ids[k // n]), row) for k, row in enumerate(generated)]
        if forced is None:
            return [(c, None) for c in completions]
        return list(zip(completions, self._score_forced(cache, mask, next_pos, forced)))

    def _score_forced(self, cache, mask, next_pos, forced) -> list[dict[str, float]]:
        """Log-probabilities of the options after the label, continuing every row's cache."""
        label_ids, option_ids, options = forced
        label = torch.tensor([label_ids] * mask.shape[0], device=self.device)
        mask = torch.cat([mask, torch.ones_like(label)], dim=1)
        positions = next_pos + torch.arange(len(label_ids), device=self.device)[None, :]
        logits = self._forward(cache, label, mask, positions)
        logprobs = torch.log_softmax(logits.float(), dim=-1)[:, option_ids].tolist()
        return [dict(zip(options, row)) for row in logprobs]

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


def _generator(device: str, seed: int, prompt: int, sample: int) -> torch.Generator:
    """The random stream of one (prompt, sample): independent of batching and sharding."""
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + prompt * 1_009 + sample) % (2**63 - 1))
    return g


def _sample(logits: torch.Tensor, sampling: Sampling, generators: list[torch.Generator]) -> torch.Tensor:
    """One token per row: greedy at temperature 0, else temperature + nucleus (top-p) sampling."""
    if sampling.temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_probs, index = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs > sampling.top_p
        probs = torch.zeros_like(probs).scatter(-1, index, sorted_probs.masked_fill(outside, 0.0))
    return torch.stack([torch.multinomial(p, 1, generator=g)[0] for p, g in zip(probs, generators)])
