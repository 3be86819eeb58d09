"""Model backends behind one interface (see ``base.Backend``)."""

from __future__ import annotations

from .base import Backend, ChatPrompt, Choice, Completion, Sampling, user_prompt

__all__ = ["Backend", "ChatPrompt", "Choice", "Completion", "Sampling", "load_backend", "user_prompt"]


def load_backend(settings: dict, model_path: str, threads: int | None = None) -> Backend:
    """Build the backend named by ``settings["name"]`` for the model folder ``model_path``."""
    name = settings.get("name", "transformers")
    if name == "transformers":
        from .hf import TransformersBackend

        return TransformersBackend(
            model_path,
            batch_size=settings.get("batch_size", 16),
            dtype=settings.get("dtype", "float32"),
            threads=threads,
        )
    raise ValueError(f"backend.name: unknown backend {name!r}; expected 'transformers'")
