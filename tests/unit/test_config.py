"""Config validation: defaults, per-iteration overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from metarewarding.config import ConfigError, stage_seed, validate_config

REPO = Path(__file__).resolve().parents[2]


def test_defaults_fill_and_iterations_override():
    config = validate_config({"iterations": [{}, {"pairs": {"rho": 0.32}, "meta_judge": {"enabled": False}}]})
    first, second = config["resolved_iterations"]
    assert first["pairs"]["rho"] == 0.0 and second["pairs"]["rho"] == 0.32
    assert first["meta_judge"]["enabled"] and not second["meta_judge"]["enabled"]
    assert second["generation"]["samples"] == first["generation"]["samples"] == 4
    assert second["pairs"]["max_chosen_chars"] is None
    assert config["backend"]["name"] == "transformers"


@pytest.mark.parametrize("path", ["config.yaml", "configs/paper-llama3-8b.yaml"])
def test_shipped_configs_are_valid(path):
    config = validate_config(yaml.safe_load((REPO / path).read_text()))
    assert len(config["resolved_iterations"]) >= 2


def test_paper_schedule():
    config = validate_config(yaml.safe_load((REPO / "configs/paper-llama3-8b.yaml").read_text()))
    its = config["resolved_iterations"]
    assert [i["pairs"]["rho"] for i in its] == [0, 0.32, 0.32, 0.4]
    assert [i["meta_judge"]["enabled"] for i in its] == [True, True, False, False]
    assert {i["generation"]["samples"] for i in its} == {7}
    assert {i["judge"]["judgments"] for i in its} == {11}
    assert {i["dpo"]["beta"] for i in its} == {0.1}
    assert config["eft"]["enabled"]


@pytest.mark.parametrize(
    "config, message",
    [
        ({"iterations": [{"pairs": {"rho": 1.5}}]}, "iterations[0].pairs.rho: 1.5 is greater than the maximum of 1"),
        ({"iterations": [{"pairs": {"rho": -0.1}}]}, "iterations[0].pairs.rho: -0.1 is less than the minimum of 0"),
        ({"iterations": [{}, {"generation": {"samples": 1}}]}, "iterations[1].generation.samples: 1 is less than the minimum of 2"),
        ({"iterations": [{}], "iteration_defaults": {"dpo": {"learning_rate": -1}}},
         "iteration_defaults.dpo.learning_rate: -1 is less than or equal to the minimum of 0"),
        ({"iterations": [{}], "sed": 3}, "'sed' was unexpected"),
        ({"iterations": [{"pairs": {"rhoo": 0.1}}]}, "iterations[0].pairs: Additional properties are not allowed ('rhoo'"),
        ({"iterations": [{"generation": {"samples": "7"}}]}, "iterations[0].generation.samples: '7' is not of type 'integer'"),
        ({"iterations": []}, "iterations: [] should be non-empty"),
        ({}, "'iterations' is a required property"),
        ({"iterations": [{"judge": {"judgments": 1}}]}, "iterations[0].judge.judgments: the meta-judge compares pairs"),
        ({"iterations": [{"judge": {"score_min": 5, "score_max": 1}}]}, "iterations[0].judge.score_min: 5 must be below"),
        ({"iterations": [{}], "backend": {"name": "tgi"}}, "backend.name: 'tgi' is not one of"),
    ],
)
def test_bad_configs_name_the_key(config, message):
    with pytest.raises(ConfigError) as err:
        validate_config(config)
    assert message in str(err.value)


def test_stage_seeds_differ_by_stage_and_iteration_and_are_stable():
    assert stage_seed(1, 1, "judge") == stage_seed(1, 1, "judge")
    assert len({stage_seed(1, t, s) for t in (1, 2) for s in ("judge", "generate")}) == 4
