"""The per-stage conda environments (envs/*.yaml): every rule names one, and their pins agree
with pyproject.toml. conda channels cannot be reached from CI, so this is the static check;
the environments are built on clusters with `snakemake --sdm conda`."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
RULE = re.compile(r"^(?:\s*)(?:rule|checkpoint) (\w+):\s*$", re.M)


def rule_blocks() -> dict[str, str]:
    """Every rule's text, keyed by name, from the Snakefile and rules/*.smk."""
    blocks = {}
    for path in [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]:
        text = path.read_text(encoding="utf-8")
        starts = list(RULE.finditer(text))
        for m, nxt in zip(starts, starts[1:] + [None]):
            blocks[m.group(1)] = (path, text[m.end(): nxt.start() if nxt else len(text)])
    return blocks


def pins(env_file: Path) -> dict[str, str]:
    """name -> exact version of every `pkg==x` pip entry of a conda environment file."""
    env = yaml.safe_load(env_file.read_text(encoding="utf-8"))
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    out = {}
    for entry in pip:
        req = Requirement(entry)
        spec = list(req.specifier)
        assert len(spec) == 1 and spec[0].operator == "==", f"{env_file.name}: {entry!r} is not pinned with =="
        out[canonicalize_name(req.name)] = spec[0].version
    return out


def project_requirements() -> dict[str, list[Requirement]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    reqs += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    out: dict[str, list[Requirement]] = {}
    for r in reqs:
        out.setdefault(canonicalize_name(r.name), []).append(r)
    return out


def test_every_rule_that_runs_code_has_a_conda_environment():
    blocks = rule_blocks()
    assert len(blocks) > 20
    for name, (path, body) in blocks.items():
        if name == "all":
            continue
        env = re.search(r"^\s+conda:\s*\n\s+\"([^\"]+)\"", body, re.M)
        assert env, f"{path.name}: rule {name} has no conda: directive"
        assert (path.parent / env.group(1)).resolve().is_file(), f"rule {name}: {env.group(1)} does not exist"


@pytest.mark.parametrize("env_file", sorted((REPO / "envs").glob("*.yaml")), ids=lambda p: p.name)
def test_environment_pins_satisfy_pyproject(env_file):
    requirements = project_requirements()
    for name, version in pins(env_file).items():
        for req in requirements.get(name, []):
            assert req.specifier.contains(version, prereleases=True), (
                f"{env_file.name} pins {name}=={version}, pyproject.toml asks {req}")


def test_environments_agree_with_each_other_except_where_explained():
    """A package pinned in two environments has the same version in both, except torch and
    transformers in the generation environment, which follow vLLM's own pins."""
    seen: dict[str, dict[str, str]] = {}
    for env_file in sorted((REPO / "envs").glob("*.yaml")):
        for name, version in pins(env_file).items():
            seen.setdefault(name, {})[env_file.name] = version
    exceptions = {"torch", "transformers"}
    for name, versions in seen.items():
        if name in exceptions:
            versions = {k: v for k, v in versions.items() if k != "generation.yaml"}
        assert len(set(versions.values())) <= 1, f"{name} is pinned differently: {versions}"


def test_generation_environment_has_vllm_and_training_has_deepspeed():
    assert "vllm" in pins(REPO / "envs/generation.yaml")
    assert "deepspeed" in pins(REPO / "envs/training.yaml")
