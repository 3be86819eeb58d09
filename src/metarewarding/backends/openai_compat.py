"""The OpenAI-compatible HTTP backend: a running server (``vllm serve``, ``transformers serve``,
a hosted vLLM) does the model calls; this process only renders prompts and sends requests.

Endpoints. ``completions`` (the default) renders every prompt locally exactly as the
transformers backend does (the model folder's chat template, generation prompt, continuation)
and posts it to ``/v1/completions``, as token ids (``prompt_format: tokens``, exact; vLLM and the
OpenAI API accept them) or as text (``prompt_format: text``, for servers that take only strings,
such as ``transformers serve``; the server then tokenises it itself). ``chat`` posts the messages
to ``/v1/chat/completions`` and lets the server apply the chat template; a continuation is sent as
a final assistant message with vLLM's ``continue_final_message`` extension.

Samples. Every sample is its own request (``n`` = 1) with seed ``prompt_seed(seed, i) + k`` for
sample ``k`` of prompt ``i`` (its index in the stage when ``indices`` is passed), the seeds the
vLLM backend gives vLLM's own ``n`` samples, so the
token counts in ``usage`` are per sample and servers that ignore ``n`` still give ``n`` samples.
Requests run in ``concurrency`` threads and are retried with exponential backoff on connection
errors, timeouts, 408/409/429 and 5xx answers (``Retry-After`` is honoured).

Choices. ``choose`` needs log-probabilities: one request per prompt asks for the
``top_logprobs`` most likely next tokens; options missing from them (or options longer than a
token) are scored exactly with ``echo`` + ``logprobs`` on prompt+option (completions endpoint).
A server that returns no log-probabilities cannot make forced choices: use
``judge.score_mode: free`` and ``meta_judge.winner_mode: free`` with it.

Only the standard library is used (urllib, concurrent.futures).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence, TypeVar

from .base import ChatPrompt, Choice, Completion, Sampling
from .vllm import prompt_seed

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
FREE_MODES = ("use judge.score_mode: free and meta_judge.winner_mode: free with this server, "
              "or a server that returns log-probabilities (vllm serve)")


class ServerError(RuntimeError):
    """The server failed, or answered something this backend cannot use."""


class LogprobsUnsupported(ServerError):
    """The server returns no log-probabilities, so forced choices are impossible with it."""


class OpenAICompatBackend:
    """Talks to an OpenAI-compatible server over HTTP."""

    name = "openai"

    def __init__(
        self,
        model_path: str,
        served_model: str | None = None,
        base_url_env: str = "OPENAI_BASE_URL",
        api_key_env: str = "OPENAI_API_KEY",
        endpoint: str = "completions",
        prompt_format: str = "tokens",
        concurrency: int = 8,
        max_retries: int = 5,
        timeout_s: float = 600.0,
        top_logprobs: int = 20,
        extra_body: dict | None = None,
        retry_backoff_s: float = 1.0,
        retry_backoff_max_s: float = 60.0,
    ) -> None:
        if endpoint not in ("completions", "chat"):
            raise ValueError(f"backend.endpoint: {endpoint!r} is not 'completions' or 'chat'")
        if prompt_format not in ("tokens", "text"):
            raise ValueError(f"backend.prompt_format: {prompt_format!r} is not 'tokens' or 'text'")
        base_url = os.environ.get(base_url_env, "").strip()
        if not base_url:
            raise ValueError(
                f"backend.name: openai needs the server's base URL in the environment variable "
                f"{base_url_env} (backend.base_url_env), e.g. {base_url_env}=http://127.0.0.1:8000/v1"
            )
        self.base_url = base_url.rstrip("/")
        self.base_url_env = base_url_env
        self.api_key_env = api_key_env
        self._api_key = os.environ.get(api_key_env) or None
        self.model_path = str(model_path)
        self.served_model = served_model or os.path.abspath(self.model_path)
        self.endpoint = endpoint
        self.prompt_format = prompt_format
        self.concurrency = max(1, int(concurrency))
        self.max_retries = max(0, int(max_retries))
        self.timeout_s = float(timeout_s)
        self.top_logprobs = int(top_logprobs)
        self.extra_body = dict(extra_body or {})
        self.retry_backoff_s = retry_backoff_s
        self.retry_backoff_max_s = retry_backoff_max_s
        self.tokenizer = _load_tokenizer(self.model_path)
        if self.tokenizer is None and endpoint == "completions":
            raise ValueError(
                f"backend.endpoint: completions renders prompts with the model folder's chat template, "
                f"but {self.model_path} has no tokenizer; use endpoint: chat"
            )
        self._lock = threading.Lock()
        self.counts = {"requests": 0, "retries": 0, "usage_missing": 0, "choices_top_logprobs": 0,
                       "choices_echo": 0}

    # ----- what is recorded with every artifact -----

    def describe(self) -> dict:
        url = urllib.parse.urlsplit(self.base_url)
        netloc = url.hostname or ""
        if url.port:
            netloc += f":{url.port}"
        return {
            "name": self.name,
            "model": os.path.abspath(self.model_path),
            "served_model": self.served_model,
            "base_url": urllib.parse.urlunsplit((url.scheme, netloc, url.path, "", "")),
            "base_url_env": self.base_url_env,
            "api_key_env": self.api_key_env,
            "api_key_set": self._api_key is not None,
            "endpoint": self.endpoint,
            "prompt_format": self.prompt_format if self.endpoint == "completions" else "messages",
            "concurrency": self.concurrency,
            "max_retries": self.max_retries,
            "timeout_s": self.timeout_s,
            "top_logprobs": self.top_logprobs,
            "extra_body": self.extra_body,
            "sampling_seeds": "prompt_seed(seed, prompt_index) + sample_index, one request per sample",
            **self.counts,
        }

    # ----- rendering -----

    def render(self, prompt: ChatPrompt) -> str:
        """The exact text the model sees: chat template, generation prompt, continuation."""
        text = self.tokenizer.apply_chat_template(
            list(prompt.messages), tokenize=False, add_generation_prompt=True
        )
        return text + prompt.continuation

    def _prompt_field(self, ids: list[int]) -> list[int] | str:
        if self.prompt_format == "tokens":
            return ids
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def _messages(self, prompt: ChatPrompt) -> dict:
        messages = [dict(m) for m in prompt.messages]
        if not prompt.continuation:
            return {"messages": messages}
        return {  # vLLM's extension: continue the final assistant message
            "messages": messages + [{"role": "assistant", "content": prompt.continuation}],
            "continue_final_message": True,
            "add_generation_prompt": False,
        }

    # ----- generation -----

    def generate(
        self, prompts: Sequence[ChatPrompt], n: int, sampling: Sampling, seed: int,
        indices: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        keys = range(len(prompts)) if indices is None else [int(i) for i in indices]
        ids = None
        if self.endpoint == "completions":
            ids = [self.tokenizer(self.render(p), add_special_tokens=False)["input_ids"] for p in prompts]
        jobs = [(i, k) for i in range(len(prompts)) for k in range(n)]

        def one(job: tuple[int, int]) -> Completion:
            i, k = job
            payload = {"model": self.served_model, "max_tokens": sampling.max_new_tokens,
                       "temperature": sampling.temperature, "seed": prompt_seed(seed, keys[i]) + k}
            if sampling.temperature > 0:
                payload["top_p"] = sampling.top_p
            if ids is not None:
                payload["prompt"] = self._prompt_field(ids[i])
                data = self._post("/completions", payload)
            else:
                payload.update(self._messages(prompts[i]))
                data = self._post("/chat/completions", payload)
            return self._completion(data, ids[i] if ids is not None else None)

        flat = self._map(one, jobs)
        out: list[list[Completion]] = [[] for _ in prompts]
        for (i, _), completion in zip(jobs, flat):
            out[i].append(completion)
        return out

    def _completion(self, data: dict, prompt_ids: list[int] | None) -> Completion:
        choices = data.get("choices") or []
        if not choices:
            raise ServerError(f"{self.base_url}: an answer without choices: {str(data)[:500]}")
        choice = choices[0]
        if self.endpoint == "completions":
            text = choice.get("text") or ""
        else:
            text = (choice.get("message") or {}).get("content") or ""
        usage = data.get("usage") or {}
        prompt_tokens, completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if prompt_tokens is None or completion_tokens is None:
            with self._lock:
                self.counts["usage_missing"] += 1
            if completion_tokens is None:
                completion_tokens = self._count(text)
            if prompt_tokens is None:
                prompt_tokens = len(prompt_ids) if prompt_ids is not None else 0
        return Completion(text=text, prompt_tokens=int(prompt_tokens),
                          completion_tokens=int(completion_tokens),
                          finish_reason=choice.get("finish_reason") or "stop")

    def _count(self, text: str) -> int:
        if self.tokenizer is None:
            return 0
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # ----- forced choices -----

    def choose(self, prompts: Sequence[ChatPrompt], options: Sequence[str]) -> list[Choice]:
        from .hf import _split_options

        if not prompts:
            return []
        if self.tokenizer is None:
            raise ValueError(f"forced choices need the model's tokenizer, and {self.model_path} has none")
        split = [_split_options(self.tokenizer, self.render(p), options) for p in prompts]
        scores: list[list[float] | None] = [None] * len(prompts)
        single = all(len(t) == 1 for _, tokens in split for t in tokens)
        if single and self.top_logprobs > 0:
            top = self._map(lambda i: self._top_next(prompts[i], split[i][0]), list(range(len(prompts))))
            for i, table in enumerate(top):
                found = [self._lookup(table, tokens[0]) for tokens in split[i][1]]
                if all(v is not None for v in found):
                    scores[i] = found  # type: ignore[assignment]
            with self._lock:
                self.counts["choices_top_logprobs"] += sum(s is not None for s in scores)
        rest = [i for i, s in enumerate(scores) if s is None]
        if rest:
            if self.endpoint != "completions":
                raise LogprobsUnsupported(
                    f"{self.base_url}: options {list(options)} are not all among the server's top "
                    f"{self.top_logprobs} next-token log-probabilities, and the chat endpoint cannot "
                    f"score them exactly; use backend.endpoint: completions, raise backend.top_logprobs, or "
                    + FREE_MODES
                )
            jobs = [(i, tokens) for i in rest for tokens in split[i][1]]
            flat = self._map(lambda job: self._echo_score(split[job[0]][0], job[1]), jobs)
            width = len(options)
            for n, i in enumerate(rest):
                scores[i] = flat[n * width : (n + 1) * width]
            with self._lock:
                self.counts["choices_echo"] += len(rest)
        return [
            Choice(option=options[max(range(len(options)), key=s.__getitem__)],
                   logprobs=dict(zip(options, s)))
            for s in scores  # type: ignore[union-attr]
        ]

    def _top_next(self, prompt: ChatPrompt, prefix: list[int]) -> dict[str, float]:
        """The server's top next-token log-probabilities after the prompt, token text -> logprob."""
        payload = {"model": self.served_model, "max_tokens": 1, "temperature": 0}
        if self.endpoint == "completions":
            payload.update(prompt=self._prompt_field(prefix), logprobs=self.top_logprobs)
            data = self._post("/completions", payload)
            logprobs = ((data.get("choices") or [{}])[0]).get("logprobs") or {}
            steps = logprobs.get("top_logprobs") or []
            if not steps or not isinstance(steps[0], dict):
                raise LogprobsUnsupported(
                    f"{self.base_url}: the server returned no log-probabilities for a completions "
                    f"request with logprobs={self.top_logprobs}, so it cannot make forced choices; "
                    + FREE_MODES
                )
            return {str(k): float(v) for k, v in steps[0].items()}
        payload.update(self._messages(prompt), logprobs=True, top_logprobs=self.top_logprobs)
        data = self._post("/chat/completions", payload)
        content = (((data.get("choices") or [{}])[0]).get("logprobs") or {}).get("content") or []
        if not content or not content[0].get("top_logprobs"):
            raise LogprobsUnsupported(
                f"{self.base_url}: the server returned no log-probabilities for a chat request with "
                f"logprobs=true, top_logprobs={self.top_logprobs}, so it cannot make forced choices; "
                + FREE_MODES
            )
        return {str(e["token"]): float(e["logprob"]) for e in content[0]["top_logprobs"]}

    def _lookup(self, table: dict[str, float], token_id: int) -> float | None:
        """An option token's log-probability in a top-k table keyed by token text (or by vLLM's
        ``token_id:N`` placeholders)."""
        for key in (f"token_id:{token_id}", self.tokenizer.decode([token_id]),
                    self.tokenizer.convert_ids_to_tokens(token_id)):
            if key in table:
                return table[key]
        return None

    def _echo_score(self, prefix: list[int], tokens: list[int]) -> float:
        """log p(option tokens | prefix) from the prompt log-probabilities of prefix+option."""
        payload = {"model": self.served_model, "prompt": self._prompt_field(prefix + tokens),
                   "max_tokens": 1, "temperature": 0, "echo": True, "logprobs": 1}
        data = self._post("/completions", payload)
        logprobs = ((data.get("choices") or [{}])[0]).get("logprobs") or {}
        values = logprobs.get("token_logprobs") or []
        n_prompt = (data.get("usage") or {}).get("prompt_tokens") or len(prefix) + len(tokens)
        picked = values[n_prompt - len(tokens) : n_prompt]
        if len(picked) != len(tokens) or any(v is None for v in picked):
            raise LogprobsUnsupported(
                f"{self.base_url}: the server returned no prompt log-probabilities for a completions "
                f"request with echo=true, logprobs=1 (needed for options outside its top "
                f"{self.top_logprobs} next tokens); raise backend.top_logprobs if the server allows "
                f"more, or " + FREE_MODES
            )
        return float(sum(picked))

    # ----- HTTP -----

    def _map(self, fn: Callable[[T], R], jobs: list[T]) -> list[R]:
        """``fn`` over ``jobs`` in at most ``concurrency`` threads, results in job order; the
        first failure cancels what has not started and is raised."""
        if not jobs:
            return []
        if self.concurrency == 1 or len(jobs) == 1:
            return [fn(job) for job in jobs]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(jobs))) as pool:
            futures = [pool.submit(fn, job) for job in jobs]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise

    def _post(self, route: str, payload: dict) -> dict:
        url = self.base_url + route
        body = json.dumps({**self.extra_body, **payload}).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        attempt = 0
        while True:
            wait = None
            try:
                request = urllib.request.Request(url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    data = json.loads(response.read())
                with self._lock:
                    self.counts["requests"] += 1
                return data
            except urllib.error.HTTPError as error:
                detail = error.read()[:2000].decode("utf-8", "replace")
                if error.code not in RETRY_STATUS or attempt >= self.max_retries:
                    raise ServerError(self._explain(url, error.code, detail, payload)) from None
                wait = _retry_after(error.headers.get("Retry-After") if error.headers else None)
                reason = f"HTTP {error.code}"
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError,
                    OSError, json.JSONDecodeError) as error:
                if attempt >= self.max_retries:
                    raise ServerError(
                        f"POST {url} failed after {attempt + 1} attempts: {error!r} "
                        f"(is the server running at {self.base_url_env}={self.base_url}?)"
                    ) from None
                reason = repr(error)
            if wait is None:
                wait = min(self.retry_backoff_max_s, self.retry_backoff_s * 2**attempt) * random.uniform(0.5, 1.0)
            attempt += 1
            with self._lock:
                self.counts["retries"] += 1
            log.warning("POST %s: %s; retry %d/%d in %.2f s", url, reason, attempt, self.max_retries, wait)
            time.sleep(wait)

    def _explain(self, url: str, status: int, detail: str, payload: dict) -> str:
        message = f"POST {url}: HTTP {status}: {detail}"
        if status in (400, 404, 422) and "model" in detail.lower():
            served = self._served_models()
            message += (f"\nthe request named the model {payload.get('model')!r} (backend.served_model; "
                        f"default: the model folder's absolute path); the server serves {served}")
        return message

    def _served_models(self) -> list[str] | str:
        try:
            request = urllib.request.Request(self.base_url + "/models", headers={
                **({"Authorization": f"Bearer {self._api_key}"} if self._api_key else {})})
            with urllib.request.urlopen(request, timeout=10) as response:
                return [m.get("id") for m in json.loads(response.read()).get("data", [])]
        except Exception as error:  # only for an error message
            return f"(GET /models failed: {error!r})"


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, min(float(value), 300.0)) if value else None
    except ValueError:
        return None


def _load_tokenizer(model_path: str):
    """The model folder's tokenizer (for rendering and forced choices), or None without one."""
    if not os.path.isdir(model_path):
        return None
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except (OSError, ValueError) as error:
        log.warning("no tokenizer in %s (%s); only the chat endpoint's generation works", model_path, error)
        return None
    if not tokenizer.chat_template:
        raise ValueError(f"model {model_path}: the tokenizer has no chat template")
    return tokenizer
