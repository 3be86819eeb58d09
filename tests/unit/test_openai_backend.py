"""The OpenAI-compatible HTTP backend.

Three servers, all on 127.0.0.1 and started and stopped here: a scripted stdlib server for
retries, concurrency, seeds and both forced-choice paths (milliseconds); `transformers serve` on a
tiny model (text prompts, no log-probabilities: generation works, forced choices say to use the
free modes); and `vllm serve` from .venvs/vllm (vLLM's CPU build), whose log-probabilities must
equal the transformers backend's.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from metarewarding.backends import ChatPrompt, Sampling, load_backend, user_prompt
from metarewarding.backends.openai_compat import LogprobsUnsupported, OpenAICompatBackend, ServerError
from metarewarding.backends.vllm import prompt_seed
from metarewarding.judging import score_options

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".venvs/vllm"
PROMPTS = [user_prompt("short"), user_prompt("a much longer prompt than the first one " * 3),
           user_prompt("mid size prompt", system="be brief")]
SCORE = ChatPrompt(user_prompt("grade this").messages, continuation="fine\nScore:")
WINNER = ChatPrompt(user_prompt("which judgment").messages, continuation="B is better\nWinner: Judgment")


def fake_logprob(token: int) -> float:
    """The scripted server's log-probability of a token, whatever precedes it."""
    return -0.5 - token % 7


class Script:
    """What the scripted server answers, and what it saw."""

    def __init__(self, tokenizer=None):
        self.tokenizer = tokenizer
        self.failures: list[int] = []  # HTTP statuses to answer first, one per request
        self.logprobs = True
        self.top_ids: set[int] = set()
        self.delay = 0.0
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()

    def answer(self, route: str, body: dict) -> tuple[int, dict]:
        with self.lock:
            self.requests.append(body)
            if self.failures:
                return self.failures.pop(0), {"error": "scripted failure"}
        prompt = body.get("prompt", [])
        ids = prompt if isinstance(prompt, list) else self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        usage = {"prompt_tokens": len(ids), "completion_tokens": 3}
        if route == "/v1/chat/completions":
            return 200, {"choices": [{"message": {"content": f"chat {body.get('seed')}"}, "finish_reason": "stop"}],
                         "usage": usage}
        choice = {"text": f"seed {body.get('seed')}", "finish_reason": "length" if body["max_tokens"] <= 3 else "stop"}
        if body.get("echo") and body.get("logprobs") is not None and self.logprobs:
            choice["logprobs"] = {"token_logprobs": [None] + [fake_logprob(t) for t in ids[1:]] + [-1.0]}
        elif body.get("logprobs") is not None and self.logprobs:
            table = {self.tokenizer.decode([t]): fake_logprob(t) for t in self.top_ids}
            choice["logprobs"] = {"top_logprobs": [table], "token_logprobs": [-1.0], "tokens": ["x"]}
        return 200, {"choices": [choice], "usage": usage}


@contextlib.contextmanager
def scripted_server(script: Script):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            with script.lock:
                script.in_flight += 1
                script.max_in_flight = max(script.max_in_flight, script.in_flight)
                script.headers.append(dict(self.headers))
            try:
                time.sleep(script.delay)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, data = script.answer(self.path, body)
            finally:
                with script.lock:
                    script.in_flight -= 1
            payload = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            if status == 429:
                self.send_header("Retry-After", "0")
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def scripted(tiny_model, monkeypatch):
    """A backend talking to a fresh scripted server: (backend factory, script)."""
    script = Script()
    with scripted_server(script) as url:
        monkeypatch.setenv("TEST_OPENAI_URL", url)
        monkeypatch.setenv("TEST_OPENAI_KEY", "sk-test")

        def make(**kwargs):
            kwargs = {"base_url_env": "TEST_OPENAI_URL", "api_key_env": "TEST_OPENAI_KEY",
                      "retry_backoff_s": 0.01, "retry_backoff_max_s": 0.05, **kwargs}
            backend = OpenAICompatBackend(str(tiny_model), **kwargs)
            script.tokenizer = backend.tokenizer
            return backend

        yield make, script


# ----- the scripted server -----

def test_every_sample_is_a_request_with_its_own_seed(scripted):
    make, script = scripted
    backend = make(concurrency=3)
    out = backend.generate(PROMPTS, n=2, sampling=Sampling(8, 0.7, 0.9), seed=11)
    assert [[c.text for c in cs] for cs in out] == [
        [f"seed {prompt_seed(11, i) + k}" for k in range(2)] for i in range(3)]
    ids = [backend.tokenizer(backend.render(p), add_special_tokens=False)["input_ids"] for p in PROMPTS]
    assert [cs[0].prompt_tokens for cs in out] == [len(x) for x in ids]
    assert all(c.completion_tokens == 3 and c.finish_reason == "stop" for cs in out for c in cs)
    assert len(script.requests) == 6
    body = script.requests[0]
    assert body["model"] == os.path.abspath(backend.model_path)  # served_model default
    assert {body["max_tokens"], body["temperature"], body["top_p"]} == {8, 0.7, 0.9}
    assert sorted(map(tuple, (r["prompt"] for r in script.requests))) == sorted(tuple(x) for x in ids for _ in range(2))
    assert all(h["Authorization"] == "Bearer sk-test" for h in script.headers)
    # a chunk of a stage: prompts 1 and 2 alone, seeded by their indices in the stage
    chunk = backend.generate(PROMPTS[1:], n=2, sampling=Sampling(8, 0.7, 0.9), seed=11, indices=[1, 2])
    assert chunk == out[1:]


def test_text_prompts_chat_endpoint_and_extra_body(scripted):
    make, script = scripted
    backend = make(prompt_format="text", served_model="tiny", extra_body={"top_k": -1})
    backend.generate(PROMPTS[:1], n=1, sampling=Sampling(2, 0.0), seed=0)
    body = script.requests[-1]
    assert body["prompt"] == backend.render(PROMPTS[0]) and body["model"] == "tiny" and body["top_k"] == -1
    assert "top_p" not in body and body["temperature"] == 0.0
    chat = make(endpoint="chat")
    out = chat.generate([SCORE], n=1, sampling=Sampling(4, 1.0), seed=0)
    body = script.requests[-1]
    assert out[0][0].text.startswith("chat ")
    assert body["messages"][-1] == {"role": "assistant", "content": "fine\nScore:"}
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False


def test_retries_with_backoff_on_5xx_and_429(scripted):
    make, script = scripted
    backend = make(max_retries=3)
    script.failures = [503, 429, 500]
    out = backend.generate(PROMPTS[:1], n=1, sampling=Sampling(8), seed=0)
    assert out[0][0].text.startswith("seed ")
    assert backend.describe()["retries"] == 3 and backend.describe()["requests"] == 1


def test_gives_up_after_max_retries_and_not_on_client_errors(scripted):
    make, script = scripted
    backend = make(max_retries=2)
    script.failures = [502, 502, 502]
    with pytest.raises(ServerError, match="HTTP 502"):
        backend.generate(PROMPTS[:1], n=1, sampling=Sampling(8), seed=0)
    assert len(script.requests) == 3
    script.failures = [400]
    with pytest.raises(ServerError, match="HTTP 400: .*scripted failure"):
        backend.generate(PROMPTS[:1], n=1, sampling=Sampling(8), seed=0)
    assert len(script.requests) == 4  # no retry


def test_connection_errors_are_retried_then_explained(tiny_model, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{port}/v1")
    backend = OpenAICompatBackend(str(tiny_model), max_retries=2, retry_backoff_s=0.01, timeout_s=5)
    with pytest.raises(ServerError, match=r"after 3 attempts.*OPENAI_BASE_URL"):
        backend.generate(PROMPTS[:1], n=1, sampling=Sampling(8), seed=0)
    assert backend.counts["retries"] == 2


def test_concurrency_is_bounded(scripted):
    make, script = scripted
    script.delay = 0.05
    backend = make(concurrency=3)
    backend.generate(PROMPTS, n=4, sampling=Sampling(8), seed=0)
    assert len(script.requests) == 12
    assert 2 <= script.max_in_flight <= 3


def test_choose_from_top_logprobs_and_from_echo(scripted):
    make, script = scripted
    backend = make()
    _, tokens = _split(backend, WINNER, [" A", " B"])
    assert all(len(t) == 1 for t in tokens)
    want = {o: fake_logprob(t[0]) for o, t in zip([" A", " B"], tokens)}
    script.top_ids = {t[0] for t in tokens}
    top = backend.choose([WINNER], [" A", " B"])[0]
    assert top.logprobs == want and top.option == max(want, key=want.get)
    assert backend.counts["choices_top_logprobs"] == 1 and backend.counts["choices_echo"] == 0
    script.top_ids = set()  # the options fall outside the top-k: exact scores by echo
    echo = backend.choose([WINNER], [" A", " B"])[0]
    assert echo.logprobs == pytest.approx(want) and backend.counts["choices_echo"] == 1
    # multi-token options go to echo directly and sum their tokens
    options = score_options(0, 5)
    _, tokens = _split(backend, SCORE, options)
    got = backend.choose([SCORE], options)[0].logprobs
    assert got == pytest.approx({o: sum(map(fake_logprob, t)) for o, t in zip(options, tokens)})


def test_a_server_without_logprobs_cannot_force_choices(scripted):
    make, script = scripted
    script.logprobs = False
    with pytest.raises(LogprobsUnsupported, match="score_mode: free.*winner_mode: free"):
        make().choose([WINNER], [" A", " B"])
    with pytest.raises(LogprobsUnsupported, match="score_mode: free"):
        make(top_logprobs=0).choose([WINNER], [" A", " B"])


def test_settings_errors_and_describe(tiny_model, monkeypatch):
    monkeypatch.delenv("MY_URL", raising=False)
    with pytest.raises(ValueError, match="environment variable MY_URL"):
        load_backend({"name": "openai", "base_url_env": "MY_URL"}, str(tiny_model))
    monkeypatch.setenv("MY_URL", "http://user:secret@127.0.0.1:9/v1/")
    monkeypatch.setenv("MY_KEY", "sk-secret")
    backend = load_backend({"name": "openai", "base_url_env": "MY_URL", "api_key_env": "MY_KEY",
                            "concurrency": 2, "served_model": "m"}, str(tiny_model))
    d = backend.describe()
    assert d["base_url"] == "http://127.0.0.1:9/v1" and d["api_key_set"] is True
    assert d["served_model"] == "m" and d["concurrency"] == 2 and d["endpoint"] == "completions"
    assert "secret" not in json.dumps(d)


def _split(backend, prompt, options):
    from metarewarding.backends.hf import _split_options

    return _split_options(backend.tokenizer, backend.render(prompt), options)


# ----- real servers -----

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(cmd: list[str], port: int, log: Path, env: dict, start_timeout: float):
    """Start a server in its own process group, wait until /v1/models answers, stop it after."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=log.parent,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"{cmd[:4]} exited with {proc.returncode}:\n{log.read_text()[-6000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{cmd[:4]} did not answer in {start_timeout} s:\n{log.read_text()[-6000:]}")
            try:
                with urllib.request.urlopen(url + "/models", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def server_model(tmp_path_factory) -> Path:
    sys.path.insert(0, str(REPO / "tests/vllm"))
    try:
        from tiny_model import build
    finally:
        sys.path.pop(0)
    return build(tmp_path_factory.mktemp("served") / "model")


def need(available: bool, message: str) -> None:
    if not available:
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must install it")
        pytest.skip(message)


def test_transformers_serve(server_model, tmp_path, monkeypatch):
    """`transformers serve` loads the folder a request names; it takes text prompts only,
    honours seed (one global torch seed, so requests go one at a time) and returns no
    log-probabilities."""
    from transformers.utils.import_utils import is_serve_available

    need(is_serve_available(), 'transformers serve needs `pip install "transformers[serving]"`')
    port = free_port()
    cmd = [sys.executable, "-m", "transformers.cli.transformers", "serve", "--host", "127.0.0.1",
           "--port", str(port), "--device", "cpu", "--dtype", "float32"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    start = time.perf_counter()
    with running(cmd, port, tmp_path / "serve.log", env, start_timeout=120) as url:
        print(f"transformers serve up in {time.perf_counter() - start:.1f} s")
        monkeypatch.setenv("OPENAI_BASE_URL", url)
        backend = load_backend({"name": "openai", "prompt_format": "text", "concurrency": 1,
                                "max_retries": 0}, str(server_model))
        sampling = Sampling(12, 1.0, 1.0)
        a = backend.generate(PROMPTS, n=3, sampling=sampling, seed=1)
        b = backend.generate(PROMPTS, n=3, sampling=sampling, seed=1)
        c = backend.generate(PROMPTS, n=3, sampling=sampling, seed=2)
        assert [len(cs) for cs in a] == [3, 3, 3]
        assert a == b and a != c
        ids = [backend.tokenizer(backend.render(p), add_special_tokens=False)["input_ids"] for p in PROMPTS]
        assert [cs[0].prompt_tokens for cs in a] == [len(x) for x in ids]
        cut = backend.generate(PROMPTS, n=2, sampling=Sampling(1, 1.0), seed=3)
        for completion in [x for cs in a + cut for x in cs]:
            assert completion.finish_reason in ("stop", "length")
        assert any(x.finish_reason == "length" and x.completion_tokens == 1 for cs in cut for x in cs)
        assert all(x.completion_tokens <= 12 for cs in a for x in cs)
        with pytest.raises(LogprobsUnsupported, match="score_mode: free"):
            backend.choose([WINNER], [" A", " B"])
        chat = load_backend({"name": "openai", "endpoint": "chat", "concurrency": 1}, str(server_model))
        out = chat.generate(PROMPTS[:1], n=1, sampling=Sampling(6, 1.0), seed=4)
        assert out[0][0].prompt_tokens == len(ids[0]) and out[0][0].completion_tokens <= 6


def test_vllm_serve(server_model, tmp_path, monkeypatch):
    """`vllm serve` (vLLM's CPU build): token-id prompts, seeds per request (so concurrency keeps
    them reproducible), log-probabilities equal to the transformers backend's by both paths."""
    need((VENV / ".metarewarding-stamp").exists(), f"vLLM's CPU build is missing ({VENV}; build it with "
         "`bash tests/vllm/make-venv.sh`)")
    from metarewarding.backends.hf import TransformersBackend

    vocab = json.loads((server_model / "config.json").read_text())["vocab_size"]  # top-k = everything
    port = free_port()
    cmd = [str(VENV / "bin/python"), str(REPO / "tests/vllm/serve.py"), str(server_model),
           "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "512", "--enforce-eager", "--max-logprobs", str(vocab),
           "--seed", "0", "--disable-log-stats"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="1", VLLM_HOST_IP="127.0.0.1",
               VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1", VLLM_ENABLE_V1_MULTIPROCESSING="0")
    env.pop("VIRTUAL_ENV", None)
    start = time.perf_counter()
    with running(cmd, port, tmp_path / "serve.log", env, start_timeout=240) as url:
        print(f"vllm serve up in {time.perf_counter() - start:.1f} s")
        monkeypatch.setenv("OPENAI_BASE_URL", url)
        backend = load_backend({"name": "openai", "concurrency": 4, "top_logprobs": vocab}, str(server_model))
        sampling = Sampling(16, 0.9, 0.95)
        a = backend.generate(PROMPTS, n=3, sampling=sampling, seed=1)
        assert a == backend.generate(PROMPTS, n=3, sampling=sampling, seed=1)
        assert a != backend.generate(PROMPTS, n=3, sampling=sampling, seed=2)
        ids = [backend.tokenizer(backend.render(p), add_special_tokens=False)["input_ids"] for p in PROMPTS]
        assert [[c.prompt_tokens for c in cs] for cs in a] == [[len(x)] * 3 for x in ids]
        for completion in (x for cs in a for x in cs):
            assert completion.finish_reason in ("stop", "length") and 1 <= completion.completion_tokens <= 16

        reference = TransformersBackend(str(server_model), batch_size=4)
        options = score_options(0, 5)
        want_scores = reference.choose([SCORE, PROMPTS[0]], options)
        want_winner = reference.choose([WINNER], [" A", " B"])
        echo = load_backend({"name": "openai", "top_logprobs": 0}, str(server_model))
        chat = load_backend({"name": "openai", "endpoint": "chat", "top_logprobs": vocab}, str(server_model))
        for b, method in [(backend, "choices_top_logprobs"), (echo, "choices_echo")]:
            _same(b.choose([SCORE, PROMPTS[0]], options), want_scores)
            _same(b.choose([WINNER], [" A", " B"]), want_winner)
            assert b.counts[method] >= 1
        _same(chat.choose([WINNER], [" A", " B"]), want_winner)  # continue_final_message
        assert chat.counts["choices_top_logprobs"] == 1


def _same(got, want):
    for g, w in zip(got, want, strict=True):
        assert g.logprobs == pytest.approx(w.logprobs, abs=1e-3)
        assert g.option == w.option
