"""The one interface every model call goes through.

A backend turns chat prompts into completions (``generate``) and makes forced choices among a
few allowed continuations (``choose``: the score digit after ``Score:``, the letter after
``Winner: Judgment``). The transformers backend is the CPU/GPU default; other backends (vLLM,
an OpenAI-compatible server) implement the same two methods and drop in through
``metarewarding.backends.load_backend``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence


@dataclass(frozen=True)
class ChatPrompt:
    """A conversation to continue as the assistant.

    ``continuation`` is text the assistant has already "said": it is appended after the chat
    template's generation prompt, and the model continues from there (used to force a score
    line after a free justification).
    """

    messages: tuple[dict, ...]
    continuation: str = ""


@dataclass(frozen=True)
class Sampling:
    """Sampling settings of one generation call; temperature 0 means greedy decoding."""

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0


@dataclass(frozen=True)
class Completion:
    """One sampled continuation with its token counts and why it ended ("stop" or "length")."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


@dataclass(frozen=True)
class Choice:
    """The option the model prefers, with the log-probability it gives every option."""

    option: str
    logprobs: dict[str, float] = field(default_factory=dict)


class Backend(Protocol):
    """What the stage modules need from a model server."""

    name: str

    def generate(
        self, prompts: Sequence[ChatPrompt], n: int, sampling: Sampling, seed: int,
        indices: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        """Return ``n`` completions for every prompt, in prompt order, reproducible for a seed.

        ``indices[i]`` is prompt i's number among all the prompts of the stage (default: its
        position in this call); its samples are seeded by it, so a stage that calls the backend
        chunk by chunk draws what one call on all its prompts would draw."""

    def choose(self, prompts: Sequence[ChatPrompt], options: Sequence[str]) -> list[Choice]:
        """Return, for every prompt, the option whose text the model finds most likely next."""

    def describe(self) -> dict:
        """A JSON-able record of the backend and its settings, stored next to each artifact."""

    # Optional: ``batches(prompts, n) -> list[list[int]]``, the positions of the prompts the
    # backend decodes together, in decoding order, when its results depend on which prompts
    # share a batch (the transformers backend pads a batch to its longest prompt). A call on
    # any union of whole batches (with their ``indices``) decodes each of them exactly as the
    # call on all the prompts does; stages checkpoint in such unions (``checkpoint.py``).


def user_prompt(text: str, system: str | None = None) -> ChatPrompt:
    """A single-turn chat prompt, with an optional system message."""
    messages = ({"role": "system", "content": system},) if system else ()
    return ChatPrompt(messages=messages + ({"role": "user", "content": text},))


def generate_then_choose(
    backend: Backend, prompts: Sequence[ChatPrompt], n: int, sampling: Sampling, seed: int,
    label: str, options: Sequence[str], indices: Sequence[int] | None = None,
) -> list[list[tuple[Completion, dict[str, float]]]]:
    """A forced line for any backend: generate, then ask ``choose`` about text + ``label``.
    Backends that can continue their own cache offer a faster ``generate_forced``."""
    completions = backend.generate(prompts, n, sampling, seed, indices=indices)
    flat = [ChatPrompt(p.messages, p.continuation + c.text.rstrip() + label)
            for p, cs in zip(prompts, completions) for c in cs]
    choices = iter(backend.choose(flat, options))
    return [[(c, next(choices).logprobs) for c in cs] for cs in completions]


def generate_forced(
    backend: Backend, prompts: Sequence[ChatPrompt], n: int, sampling: Sampling, seed: int,
    label: str, options: Sequence[str], indices: Sequence[int] | None = None,
) -> list[list[tuple[Completion, dict[str, float]]]]:
    """n completions per prompt, each with the log-probabilities of ``options`` after
    completion + ``label``; uses the backend's fused path when it has one. ``indices`` as in
    ``Backend.generate``."""
    fused = getattr(backend, "generate_forced", None)
    if fused is not None:
        return fused(prompts, n, sampling, seed, label, options, indices=indices)
    return generate_then_choose(backend, prompts, n, sampling, seed, label, options, indices)
