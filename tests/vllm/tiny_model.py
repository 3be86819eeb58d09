"""A tiny random Llama that vLLM's CPU build can run, for the vLLM and OpenAI-server tests.

Like ``metarewarding.tiny.build_tiny_model`` (same tokenizer and chat template) but with a head
size of 32, the smallest vLLM's CPU attention supports (the shared tiny model has 16). Its
generation config lists a third of the vocabulary as end-of-turn tokens, so that short samples
end with "stop" and samples cut at one token end with "length": both finish reasons show up
in a few samples of a random model. Runs in either environment (main or .venvs/vllm):

    python tests/vllm/tiny_model.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path


def build(out_dir: str | Path, seed: int = 0) -> Path:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from metarewarding.tiny import _default_corpus, train_tokenizer

    tokenizer = train_tokenizer(_default_corpus())
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    specials = set(tokenizer.all_special_ids)
    stops = [tokenizer.eos_token_id] + [i for i in range(len(tokenizer)) if i % 3 == 1 and i not in specials]
    # do_sample: servers that take their defaults from here (transformers serve) sample only then
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=stops, pad_token_id=tokenizer.pad_token_id,
        do_sample=True,
    )
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


if __name__ == "__main__":
    print(build(sys.argv[1]))
