#!/usr/bin/env bash
# Build .venvs/llamacpp: llama-cpp-python from PyPI (compiled from source: PyPI has no CPU wheel),
# the llama.cpp peer of bench/throughput.py. Takes about 7.5 minutes on 2 cores and uses all of
# them: keep it out of CI and out of timed runs. The build is native (-march=native, llama.cpp's
# default), i.e. tuned to the machine it is built on; build it on the machine you benchmark.
# Idempotent: a finished venv is kept while this script is unchanged (stamp file).
# Usage: bash bench/make-llamacpp-venv.sh [VENV_DIR]      (default .venvs/llamacpp)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-${LLAMACPP_VENV:-.venvs/llamacpp}}
PYTHON=${PYTHON:-python3}
VERSION=${LLAMA_CPP_PYTHON_VERSION-0.3.36}   # the newest on PyPI when written; LLAMA_CPP_PYTHON_VERSION= (empty) takes the newest
STAMP="$VENV/.metarewarding-stamp"
want="$(sha256sum bench/make-llamacpp-venv.sh | cut -d' ' -f1) $VERSION"
if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    echo "make-llamacpp-venv: $VENV is up to date"
    exit 0
fi
start=$SECONDS
step() { echo "make-llamacpp-venv: [$((SECONDS - start)) s] $*"; }
step "building $VENV"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --disable-pip-version-check --quiet --no-compile)
"${pip[@]}" --upgrade pip
# CPU only, native instructions, no OpenMP-less fallback; the build uses every core.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DLLAMA_CURL=OFF}"
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
step "compiling llama-cpp-python${VERSION:+==$VERSION} (CMAKE_ARGS=$CMAKE_ARGS)"
"${pip[@]}" --no-binary llama-cpp-python "llama-cpp-python${VERSION:+==$VERSION}"
"$VENV/bin/python" - <<'PY'
import llama_cpp

for name in ("llama_batch_init", "llama_decode", "llama_sampler_chain_init", "llama_sampler_sample"):
    assert hasattr(llama_cpp, name), f"llama_cpp lacks {name}: the batched mode of bench/llamacpp_worker.py needs it"
print("make-llamacpp-venv: llama-cpp-python", llama_cpp.__version__)
PY
echo "$want" > "$STAMP"
step "built $VENV"
