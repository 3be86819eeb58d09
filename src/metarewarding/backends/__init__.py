"""Model backends behind one interface (see ``base.Backend``)."""

from __future__ import annotations

from .base import Backend, ChatPrompt, Choice, Completion, Sampling, generate_forced, user_prompt

__all__ = [
    "Backend", "ChatPrompt", "Choice", "Completion", "Sampling", "generate_forced", "load_backend", "user_prompt",
]


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
    if name == "vllm":
        from .vllm import VLLMBackend

        return VLLMBackend(
            model_path,
            dtype=settings.get("dtype", "float32"),
            tensor_parallel_size=settings.get("tensor_parallel_size", 1),
            gpu_memory_utilization=settings.get("gpu_memory_utilization", 0.9),
            max_model_len=settings.get("max_model_len"),
            enforce_eager=settings.get("enforce_eager", False),
            threads=threads,
        )
    if name == "openai":
        from .openai_compat import OpenAICompatBackend

        return OpenAICompatBackend(
            model_path,
            served_model=settings.get("served_model"),
            base_url_env=settings.get("base_url_env", "OPENAI_BASE_URL"),
            api_key_env=settings.get("api_key_env", "OPENAI_API_KEY"),
            endpoint=settings.get("endpoint", "completions"),
            prompt_format=settings.get("prompt_format", "tokens"),
            concurrency=settings.get("concurrency", 8),
            max_retries=settings.get("max_retries", 5),
            timeout_s=settings.get("timeout_s", 600),
            top_logprobs=settings.get("top_logprobs", 20),
            extra_body=settings.get("extra_body"),
        )
    raise ValueError(f"backend.name: unknown backend {name!r}; expected 'transformers', 'vllm' or 'openai'")
