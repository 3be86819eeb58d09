"""Bad inputs stop a stage with a message naming the culprit, before work is wasted."""

from __future__ import annotations

import json
import shutil

import pytest

from metarewarding.backends import load_backend
from metarewarding.judging import judge_responses
from metarewarding.pairs import NoPairsError, build_pairs
from metarewarding.records import RecordError, write_jsonl
from metarewarding.seed import prepare_seed_model, resolve_source
from metarewarding.templates import TemplateError

JUDGE = {"judgments": 2, "score_mode": "free", "temperature": 0.8, "top_p": 0.95, "max_new_tokens": 4,
         "score_min": 0, "score_max": 5}


def test_missing_model_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither an existing folder nor a hub id"):
        resolve_source(str(tmp_path / "no-such-model"))


def test_folder_without_config_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no config.json"):
        resolve_source(str(tmp_path / "empty"))


def test_missing_gguf_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="GGUF file .*nope.gguf does not exist"):
        resolve_source(str(tmp_path / "nope.gguf"))


def test_tokenizer_without_chat_template_is_refused(tmp_path, tiny_model):
    model = shutil.copytree(tiny_model, tmp_path / "model")
    (model / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="no chat template"):
        prepare_seed_model(str(model), tmp_path / "out")
    with pytest.raises(ValueError, match="no chat template"):
        load_backend({"name": "transformers"}, str(model))


def test_corrupt_model_weights_fail_loudly(tmp_path, tiny_model):
    model = shutil.copytree(tiny_model, tmp_path / "model")
    (model / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(Exception):
        load_backend({"name": "transformers"}, str(model))


def test_judge_template_without_placeholder_fails_before_loading_the_model(tmp_path):
    (tmp_path / "judge.txt").write_text("Grade: {response}")
    write_jsonl(tmp_path / "responses.jsonl", [{"response_id": "a-r0", "prompt_id": "a", "prompt": "q", "response": "r"}])
    with pytest.raises(TemplateError, match=r"missing placeholder\(s\) \{question\}"):
        judge_responses(str(tmp_path / "responses.jsonl"), str(tmp_path / "no-model"), str(tmp_path / "judge.txt"),
                        {"name": "transformers"}, JUDGE, 0, str(tmp_path / "out.jsonl"), str(tmp_path / "s.json"))


def test_responses_missing_a_field_fail_before_loading_the_model(tmp_path):
    (tmp_path / "judge.txt").write_text("{question} {response}")
    write_jsonl(tmp_path / "responses.jsonl", [{"response_id": "a-r0", "prompt_id": "a", "prompt": "q"}])
    with pytest.raises(RecordError, match=r"responses.jsonl:1: missing field\(s\) response"):
        judge_responses(str(tmp_path / "responses.jsonl"), str(tmp_path / "no-model"), str(tmp_path / "judge.txt"),
                        {"name": "transformers"}, JUDGE, 0, str(tmp_path / "out.jsonl"), str(tmp_path / "s.json"))


def test_every_judgment_unparseable_is_counted_then_stops_at_pairs_with_stats(tmp_path):
    write_jsonl(tmp_path / "responses.jsonl", [
        {"response_id": f"a-r{k}", "prompt_id": "a", "prompt": "q", "response": "r" * (k + 1)} for k in range(3)])
    write_jsonl(tmp_path / "judgments.jsonl", [
        {"judgment_id": f"a-r{k}-j0", "response_id": f"a-r{k}", "judgment": "no score here", "score": None,
         "parse_error": "no_score"} for k in range(3)])
    (tmp_path / "judge.txt").write_text("{question} {response}")
    settings = {"rho": 0.0, "max_chosen_chars": None, "judge_max_chosen_chars": None}
    with pytest.raises(NoPairsError, match='"fewer_than_2_scored": 1'):
        build_pairs(str(tmp_path / "responses.jsonl"), str(tmp_path / "judgments.jsonl"), None,
                    str(tmp_path / "judge.txt"), settings, 0.01, 0, *(str(tmp_path / f"{n}.jsonl") for n in "ajt"),
                    str(tmp_path / "stats.json"))


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="backend.name: unknown backend 'tgi'"):
        load_backend({"name": "tgi"}, "/nowhere")
