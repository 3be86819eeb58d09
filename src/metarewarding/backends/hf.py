"""The transformers backend: batched generation with the model's chat template.

Prompts are sorted by their tokens and batched (``batch_size`` rows = prompts x samples);
results come back in prompt order. A batch is prefilled as a tree of shared prefixes
(``prefix_levels``): the judge template's opening is computed once for the whole batch, a
question once for all its responses, a question and response once for all the meta-judge
comparisons of their judgments; the KV cache of a prefix is copied to the rows that continue
it, and padding sits between segments (masked, with the positions of the real tokens), so
each row sees exactly its own tokens. Each prompt is prefilled once for its n samples. On a
CPU, decoding keeps the large shared levels once (``_shared_prefix_cache``): the template's
opening is read once a step for the whole batch, a prompt once for its n samples, instead of
once per row. Every (prompt, sample) row draws from its own seeded
random generator, keyed by the prompt's index in the stage (``indices``), so the batch or the
call a prompt lands in does not change the random stream it sees (the floating-point results
of a batch can still differ in the last bits with its padding; ``batches`` tells a stage which
prompts share one, so that it can split its work without changing them).
A forced line (``Score:`` + digit) continues the same cache instead of reading the prompt
again.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import NamedTuple, Sequence

import torch

from . import cpu_kernels
from .base import ChatPrompt, Choice, Completion, Sampling, generate_then_choose

log = logging.getLogger(__name__)


class TransformersBackend:
    """Runs a local Hugging Face causal LM in-process (CPU or one GPU)."""

    name = "transformers"
    # A prefix is computed once for the rows that share it when it is at least this many tokens
    # (below that, the bookkeeping of another tree level costs more than it saves).
    min_shared_prefix = 16

    def __init__(
        self,
        model_path: str,
        batch_size: int = 16,
        dtype: str = "float32",
        device: str | None = None,
        threads: int | None = None,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        self.model_path = str(model_path)
        self.batch_size = batch_size
        self.dtype = dtype
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        if not self.tokenizer.chat_template:
            raise ValueError(f"model {self.model_path}: the tokenizer has no chat template")
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(
            self.model_path, dtype=getattr(torch, dtype)
        ).to(self.device)
        self.model.eval()
        on_cpu = torch.device(self.device).type == "cpu"
        self.attention = _use_grouped_attention(self.model) if on_cpu else self.model.config._attn_implementation
        self.packed_linear_layers = _prepack_linears(self.model, batch_size) if on_cpu else 0
        self.freed_memory_kept = _keep_freed_memory() if on_cpu else False
        self.kernel_norms = _kernel_norms(self.model) if on_cpu else 0
        self.eos_ids = _eos_ids(self.model.generation_config, self.tokenizer)
        self.lean_step = None
        # the C kernel where _shared_prefix_attention hands it a decoding step (bfloat16, CPU)
        self.decoding_attention = ("kernel" if self.attention == GROUPED and dtype == "bfloat16"
                                   and cpu_kernels.kernel() is not None else "pytorch")
        if self.attention == GROUPED:
            from .lean import lean_step

            self.lean_step = lean_step(self)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "model": os.path.abspath(self.model_path),
            "batch_size": self.batch_size,
            "dtype": self.dtype,
            "device": self.device,
            "torch_threads": torch.get_num_threads(),
            "attention": self.attention,
            "packed_linear_layers": self.packed_linear_layers,
            "decoding_step": "lean" if self.lean_step else "transformers",
            "decoding_attention": self.decoding_attention,
            "kernel_norm_layers": self.kernel_norms,
            "freed_memory_kept": self.freed_memory_kept,
        }

    def render(self, prompt: ChatPrompt) -> str:
        """The exact text the model sees: chat template, generation prompt, continuation."""
        text = self.tokenizer.apply_chat_template(
            list(prompt.messages), tokenize=False, add_generation_prompt=True
        )
        return text + prompt.continuation

    def generate(
        self, prompts: Sequence[ChatPrompt], n: int, sampling: Sampling, seed: int,
        indices: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        return [[c for c, _ in row] for row in self._run(prompts, n, sampling, seed, None, indices)]

    def generate_forced(
        self, prompts: Sequence[ChatPrompt], n: int, sampling: Sampling, seed: int,
        label: str, options: Sequence[str], indices: Sequence[int] | None = None,
    ) -> list[list[tuple[Completion, dict[str, float]]]]:
        """Sample completions, then append ``label`` to each and score ``options`` as the next
        tokens, continuing each completion's KV cache (no second pass over the prompt)."""
        label_ids, option_ids = _split_options(self.tokenizer, label, options)
        if any(len(t) != 1 for t in option_ids):
            return generate_then_choose(self, prompts, n, sampling, seed, label, options, indices)
        forced = (label_ids, [t[0] for t in option_ids], list(options))
        return self._run(prompts, n, sampling, seed, forced, indices)

    def batches(self, prompts: Sequence[ChatPrompt], n: int) -> list[list[int]]:
        """The positions of the prompts that ``generate(prompts, n, ...)`` decodes together, in
        order: sorted by their tokens (prompts with a shared prefix are neighbours),
        ``batch_size // n`` prompts a batch. A call on a union of
        whole batches (with their positions as ``indices``) pads and seeds every batch alike."""
        return self._plan(self._encode_all(prompts), range(len(prompts)), n)

    def _encode_all(self, prompts: Sequence[ChatPrompt]) -> list[list[int]]:
        return [self.tokenizer(self.render(p), add_special_tokens=False)["input_ids"] for p in prompts]

    def _plan(self, encoded: list[list[int]], keys: Sequence[int], n: int) -> list[list[int]]:
        """Positions sorted by (tokens, index in the stage), cut into batches: prompts that
        share a prefix land in the same batch, where it is computed once."""
        order = sorted(range(len(encoded)), key=lambda i: (encoded[i], keys[i]))
        per_batch = max(1, self.batch_size // n)
        return [order[start : start + per_batch] for start in range(0, len(order), per_batch)]

    def _run(self, prompts, n, sampling, seed, forced, indices=None):
        """Batch unique prompts (sorted by length), n rows each, and decode them together; the
        random stream of a row follows its prompt's index in the stage (``indices``)."""
        keys = list(range(len(prompts))) if indices is None else [int(i) for i in indices]
        if len(keys) != len(prompts):
            raise ValueError(f"{len(keys)} indices for {len(prompts)} prompts")
        encoded = self._encode_all(prompts)
        out: list = [None] * len(prompts)
        for batch in self._plan(encoded, keys, n):
            rows = self._decode([encoded[i] for i in batch], [keys[i] for i in batch], n, sampling, seed, forced)
            for k, i in enumerate(batch):
                out[i] = rows[k * n : (k + 1) * n]
        return out

    def _forward(self, cache, input_ids, mask, positions) -> torch.Tensor:
        """One forward pass that extends ``cache``; the logits of the last position."""
        return self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                          cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]

    def _prefill(self, ids: list[list[int]], repeat: int = 1, shared: bool = False):
        """Run the prompts ``ids`` through the model, each shared prefix once (``prefix_levels``).

        Returns the KV cache with ``repeat`` rows per prompt (in prompt order), the logits after
        each prompt's last token, the attention mask over the cache and the position of each
        row's next token. With ``shared``, the cache keeps each level's keys and values once
        for the rows that share them (``_shared_prefix_cache``) instead of a copy per row."""
        from transformers.cache_utils import Cache

        cache = Cache(layer_class_to_replicate=_growing_layer_class())
        mask = next_pos = logits = None
        levels, final_rows = prefix_levels(ids, self.min_shared_prefix)
        segments: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
        for level in levels:
            if mask is not None:
                parents = torch.tensor([node.parent for node in level], device=self.device)
                cache.batch_select_indices(parents)
                mask, next_pos, logits = mask[parents], next_pos[parents], logits[parents]
            width = max(len(node.tokens) for node in level)
            pad = self.tokenizer.pad_token_id
            segment = torch.tensor([[pad] * (width - len(node.tokens)) + node.tokens for node in level],
                                   device=self.device)
            seg_mask = torch.tensor([[0] * (width - len(node.tokens)) + [1] * len(node.tokens) for node in level],
                                    device=self.device)
            base = next_pos if next_pos is not None else torch.zeros_like(seg_mask[:, :1])
            positions = (base + seg_mask.cumsum(-1) - 1).clamp(min=0)
            mask = seg_mask if mask is None else torch.cat([mask, seg_mask], dim=1)
            level_logits = self._forward(cache, segment, mask, positions)
            if shared:
                segments.append([(layer.keys[..., -width:, :].contiguous(), layer.values[..., -width:, :].contiguous())
                                 for layer in cache.layers])
            fed = seg_mask[:, -1:].bool()  # rows with tokens at this level (others only carried)
            logits = level_logits if logits is None else torch.where(fed, level_logits, logits)
            next_pos = base + seg_mask.sum(-1, keepdim=True)
        rows = torch.tensor(final_rows, device=self.device).repeat_interleave(repeat)
        if shared and all(isinstance(layer, _growing_layer_class()) for layer in cache.layers):
            cache = _shared_prefix_cache(segments, levels, final_rows, repeat, self.device)
        else:
            cache.batch_select_indices(rows)
        return cache, logits[rows], mask[rows], next_pos[rows]

    @torch.inference_mode()
    def _decode(self, ids, prompt_indices, n, sampling, seed, forced):
        """Prefill each prompt once (shared prefixes once per batch), repeat its KV cache for n
        samples, and sample token by token with one seeded generator per (prompt, sample);
        optionally score a forced line. Rows that have stopped keep running with their new
        positions masked out."""
        cache, logits, mask, next_pos = self._prefill(ids, repeat=n, shared=self.attention == GROUPED)
        generators = [_generator(self.device, seed, i, j) for i in prompt_indices for j in range(n)]
        eos = torch.tensor(self.eos_ids, device=self.device)
        done = torch.zeros(len(generators), dtype=torch.bool, device=self.device)
        tokens: list[torch.Tensor] = []
        for step in range(sampling.max_new_tokens):
            token = _sample(logits, sampling, generators)
            token = token.masked_fill(done, self.tokenizer.pad_token_id)
            tokens.append(token)
            live = ~(done | torch.isin(token, eos))
            done = ~live
            last_step = step == sampling.max_new_tokens - 1
            if done.all() or (last_step and forced is None):
                break
            mask = torch.cat([mask, live.long()[:, None]], dim=1)
            logits = (self.lean_step or self._forward)(cache, token[:, None], mask, next_pos)
            next_pos = next_pos + live.long()[:, None]
        generated = torch.stack(tokens, dim=1).tolist() if tokens else [[] for _ in generators]
        completions = [self._completion(len(ids[k // n]), row) for k, row in enumerate(generated)]
        if forced is None:
            return [(c, None) for c in completions]
        return list(zip(completions, self._score_forced(cache, mask, next_pos, forced)))

    def _score_forced(self, cache, mask, next_pos, forced) -> list[dict[str, float]]:
        """Log-probabilities of the options after the label, continuing every row's cache."""
        label_ids, option_ids, options = forced
        label = torch.tensor([label_ids] * mask.shape[0], device=self.device)
        mask = torch.cat([mask, torch.ones_like(label)], dim=1)
        positions = next_pos + torch.arange(len(label_ids), device=self.device)[None, :]
        logits = self._forward(cache, label, mask, positions)
        logprobs = torch.log_softmax(logits.float(), dim=-1)[:, option_ids].tolist()
        return [dict(zip(options, row)) for row in logprobs]

    def _completion(self, prompt_len: int, tokens: list[int]) -> Completion:
        """Cut a generated row at its first end-of-sequence token."""
        stop = next((k for k, t in enumerate(tokens) if t in self.eos_ids), None)
        kept = tokens if stop is None else tokens[:stop]
        return Completion(
            text=self.tokenizer.decode(kept, skip_special_tokens=True),
            prompt_tokens=prompt_len,
            completion_tokens=len(kept) + (stop is not None),
            finish_reason="length" if stop is None else "stop",
        )

    def choose(self, prompts: Sequence[ChatPrompt], options: Sequence[str]) -> list[Choice]:
        """Score every option as the next tokens after each prompt; batches of prompts sorted by
        their tokens, so that a shared prefix (a template's opening) is computed once a batch.
        One forward pass per batch when the options differ in a single final token (digits,
        A/B), else one per prompt and option."""
        split = [_split_options(self.tokenizer, self.render(p), options) for p in prompts]
        scores: list = [None] * len(prompts)
        single = [k for k, (_, tokens) in enumerate(split) if all(len(t) == 1 for t in tokens)]
        single.sort(key=lambda k: split[k][0])
        for start in range(0, len(single), self.batch_size):
            batch = single[start : start + self.batch_size]
            logits = self._last_logits([split[k][0] for k in batch])
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            for b, k in enumerate(batch):
                scores[k] = [logprobs[b, t[0]].item() for t in split[k][1]]
        for k, (prefix, tokens) in enumerate(split):
            if scores[k] is None:
                scores[k] = [self._sequence_logprob(prefix, t) for t in tokens]
        return [
            Choice(option=options[max(range(len(options)), key=s.__getitem__)],
                   logprobs=dict(zip(options, s)))
            for s in scores
        ]

    @torch.inference_mode()
    def _last_logits(self, prefixes: list[list[int]]) -> torch.Tensor:
        return self._prefill(prefixes)[1]

    @torch.inference_mode()
    def _sequence_logprob(self, prefix: list[int], tokens: list[int]) -> float:
        ids = torch.tensor([prefix + tokens], device=self.device)
        logprobs = torch.log_softmax(self.model(input_ids=ids).logits[0].float(), dim=-1)
        positions = range(len(prefix) - 1, len(prefix) + len(tokens) - 1)
        return sum(logprobs[p, t].item() for p, t in zip(positions, tokens))


@functools.lru_cache(maxsize=None)
def _growing_layer_class():
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """A KV-cache layer that writes new keys and values into spare room at the end of its
        buffer, instead of concatenating (which copies the whole cache at every decoded token:
        half of a judging step's time on a CPU). The room grows geometrically; selecting or
        repeating rows (``batch_select_indices``) makes new tensors, and the next update gives
        them a buffer again.

        ``shared``: keys and values that come before this layer's own, kept once for the rows
        that share them (``SharedSegment``s of ``_shared_prefix_cache``); the layer's length
        counts them, and the keys it returns carry them as ``shared_prefix`` for
        ``grouped_attention``."""

        shared: tuple = ()
        shared_width = 0

        def own_length(self) -> int:
            return 0 if not self.is_initialized or self.keys.numel() == 0 else self.keys.shape[-2]

        def get_seq_length(self) -> int:
            return self.shared_width + self.own_length()

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            if self.shared:
                raise NotImplementedError("rows of a cache with shared segments cannot be selected")
            super().batch_select_indices(indices)

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            length = self.own_length()
            end = length + key_states.shape[-2]
            buffers = getattr(self, "room", None)
            if (buffers is None or end > buffers[0].shape[-2]
                    or buffers[0].data_ptr() != self.keys.data_ptr()
                    or buffers[0].shape[0] != key_states.shape[0]):
                capacity = _cache_capacity(end)
                buffers = tuple(new.new_zeros(*new.shape[:-2], capacity, new.shape[-1])
                                for new in (key_states, value_states))
                if length:
                    buffers[0][..., :length, :] = self.keys
                    buffers[1][..., :length, :] = self.values
                self.room = buffers
            buffers[0][..., length:end, :] = key_states
            buffers[1][..., length:end, :] = value_states
            self.keys, self.values = buffers[0][..., :end, :], buffers[1][..., :end, :]
            if not self.shared:
                return self.keys, self.values
            keys = self.keys.view_as(self.keys)  # a tensor of its own to carry the segments
            keys.shared_prefix = self.shared
            return keys, self.values

    return GrowingLayer


def _cache_capacity(end: int) -> int:
    """The positions a cache layer's buffer makes room for when ``end`` no longer fits: an
    eighth more, at least 32 (decoding reads the whole buffer, ``_whole_buffer``, so spare
    room costs reads at every step; growing copies the cache once)."""
    return end + max(32, end // 8)


class RowLayout:
    """Which decoding rows share each node of a prefill level: node j's rows, in row order,
    fill slots j·per_node, j·per_node+1, ... of a [nodes x per_node] grid (``rows`` marks an
    empty slot). Tensors of the rows ([rows, heads, m, c]) and of the nodes ([nodes, heads,
    per_node·m, c]: the rows of a node stacked along dim 2, zeros in empty slots) convert
    into each other (``to_nodes``, ``to_rows``), changing dtype on the way where asked."""

    def __init__(self, row_node: Sequence[int], nodes: int, device) -> None:
        rows = len(row_node)
        counts = [0] * nodes
        for node in row_node:
            counts[node] += 1
        self.nodes, self.per_node = nodes, max(counts)
        slots, flat, fill = [rows] * (nodes * self.per_node), [], [0] * nodes
        for row, node in enumerate(row_node):
            flat.append(node * self.per_node + fill[node])
            slots[flat[-1]] = row
            fill[node] += 1
        self.in_order = slots == list(range(rows))  # every slot filled, rows already grouped
        self.full = all(c == self.per_node for c in counts)
        self.slots = torch.tensor(slots, device=device)
        self.flat = torch.tensor(flat, device=device)
        self.row_node = torch.tensor(list(row_node), device=device)

    def to_nodes(self, x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """[rows, heads, m, c] -> [nodes, heads, per_node·m, c] (in ``dtype``, default x's)."""
        _, heads, m, c = x.shape
        if self.per_node == 1 and self.in_order and dtype in (None, x.dtype):
            return x  # one row a node, in order: already the nodes' layout
        if not self.in_order:
            x = (x if self.full else torch.cat([x, x.new_zeros(1, heads, m, c)])).index_select(0, self.slots)
        out = torch.empty(self.nodes, heads, self.per_node * m, c, dtype=dtype or x.dtype, device=x.device)
        out.view(self.nodes, heads, self.per_node, m, c).copy_(
            x.view(self.nodes, self.per_node, heads, m, c).transpose(1, 2))
        return out

    def to_rows(self, out: torch.Tensor, y: torch.Tensor, add: bool = False) -> None:
        """``out`` ([rows, heads, m, c], a view) = ``y`` ([nodes, heads, per_node·m, c]) of each
        row's node, or ``+=`` with ``add``."""
        _, heads, m, c = out.shape
        by_row = y.view(self.nodes, heads, self.per_node, m, c).transpose(1, 2)
        if self.in_order:
            out = out.view(self.nodes, self.per_node, heads, m, c)
        else:
            by_row = by_row.reshape(self.nodes * self.per_node, heads, m, c).index_select(0, self.flat)
        if add:
            out.add_(by_row)
        else:
            out.copy_(by_row)


class SharedSegment(NamedTuple):
    """The keys and values of one prefill level ([nodes, kv_heads, width, head_dim]), kept once
    for the decoding rows that continue each node (``layout``)."""

    keys: torch.Tensor
    values: torch.Tensor
    layout: RowLayout


# A prefill level stays shared while decoding only where that spares reading at least this many
# keys (and as many values) a layer and step; a smaller level is copied into the level below
# (or into each row's own keys), since its extra matrix products cost more than the reads they
# save. Measured on the default run's workloads (bench/throughput.py): generation's short
# prompts decode faster with a copy per row, judging and meta-judging with their long shared
# prompts shared.
SHARED_KEYS_MIN = 4096


def _shared_prefix_cache(segments, levels, final_rows: list[int], repeat: int, device):
    """A decoding cache whose layers hold a prefill level once (``segments[level][layer]``:
    that level's keys and values, one row per node) instead of one copy per decoding row: the
    judge template's opening once for the batch, a prompt once for its n samples. Decoding
    then reads each shared key once for all the rows that share it (``grouped_attention``).
    Levels that would spare fewer than ``SHARED_KEYS_MIN`` key reads are copied into the level
    below them, the last ones into every row's own keys."""
    from transformers.cache_utils import Cache

    node_of = list(final_rows)
    row_nodes: list[list[int]] = [[] for _ in levels]
    for depth in reversed(range(len(levels))):
        row_nodes[depth] = [node for node in node_of for _ in range(repeat)]
        node_of = [levels[depth][node].parent for node in node_of]
    rows = len(final_rows) * repeat
    kept = [(rows - len(levels[depth])) * segments[depth][0][0].shape[-2] >= SHARED_KEYS_MIN
            for depth in range(len(levels))]
    layouts = {depth: RowLayout(row_nodes[depth], len(levels[depth]), device) for depth in range(len(levels)) if kept[depth]}
    parents = [torch.tensor([node.parent for node in level], device=device) for level in levels]
    last_rows = torch.tensor(row_nodes[-1], device=device)
    layer_class = _growing_layer_class()
    layers = []
    for index in range(len(segments[0])):
        layer, shared, carried = layer_class(), [], None
        for depth in range(len(levels)):
            keys, values = segments[depth][index]
            if carried is not None:  # the levels above, not kept: one copy per node of this one
                keys = torch.cat([carried[0].index_select(0, parents[depth]), keys], dim=2)
                values = torch.cat([carried[1].index_select(0, parents[depth]), values], dim=2)
                carried = None
            if kept[depth]:
                shared.append(SharedSegment(keys, values, layouts[depth]))
            else:
                carried = (keys, values)
        layer.shared = tuple(shared)
        layer.shared_width = sum(segment.keys.shape[-2] for segment in shared)
        if carried is not None:  # the last levels, not kept: each row's own keys begin with them
            layer.lazy_initialization(*carried)
            layer.keys, layer.values = carried[0].index_select(0, last_rows), carried[1].index_select(0, last_rows)
        layers.append(layer)
    return Cache(layers=layers)


def _materialize(key: torch.Tensor, value: torch.Tensor, shared) -> tuple[torch.Tensor, torch.Tensor]:
    """Every row's whole keys and values: its shared segments, then its own."""
    keys = [s.keys.index_select(0, s.layout.row_node) for s in shared]
    values = [s.values.index_select(0, s.layout.row_node) for s in shared]
    return torch.cat(keys + [key], dim=2), torch.cat(values + [value], dim=2)


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP_FREED_BYTES = 1 << 30


def _keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for the process's next allocations (up to 1 GiB
    at the top of its heap, blocks up to 1 GiB from the heap) instead of handing it back to
    the kernel. A decoding step on a CPU frees and allocates tensors of megabytes (logits,
    probabilities, KV-cache buffers, attention scores): handed back, every new one costs the
    kernel's page faults again. On the default run's workloads, on this project's 2-core CPU,
    in alternating processes: generation 480,000 page faults handed back against 50,000-72,000
    kept, 16% more tokens/s kept (mean of six pairs; -7% to +47%); judging 550,000-660,000
    against 110,000, 4-10% more (three pairs); meta-judging, which mostly prefills, 2% more
    (mean of nine pairs; -11% to +13%). The process's resident memory stays at its peak.
    Does nothing, and returns False, where the C library is not glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _KEEP_FREED_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_FREED_BYTES))


def _prepack_linears(model, rows: int) -> int:
    """Give every linear layer of a bfloat16 model on a CPU a copy of its weight in oneDNN's
    blocked layout, made once here, instead of the reorder that ``F.linear`` does at each call:
    the same products (checked bit for bit on a probe input, else nothing changes), 20-30% less
    time per decode step's matrix products on this project's CPU. This is the weight prepacking
    that ``torch.compile`` does on a CPU with freezing, without compiling. ``rows``: the batch
    the layout is tuned for (other row counts work too). Returns the number of layers packed."""
    mkldnn = getattr(torch.ops, "mkldnn", None)
    if (not torch.backends.mkldnn.is_available() or not hasattr(mkldnn, "_reorder_linear_weight")
            or next(model.parameters()).dtype != torch.bfloat16):
        return 0
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not layers:
        return 0
    with torch.inference_mode():
        try:
            packed = [mkldnn._reorder_linear_weight(m.weight.detach(), rows) for m in layers]
            probe = torch.randn(3, 2, layers[0].in_features, dtype=torch.bfloat16)
            if not torch.equal(_packed_linear(packed[0], layers[0].bias, probe), layers[0](probe)):
                return 0
        except RuntimeError as error:  # an oneDNN build without these ops' bfloat16 kernels
            log.info("linear weights not prepacked: %s", error)
            return 0
    for layer, weight in zip(layers, packed):
        layer.forward = functools.partial(_packed_linear, weight, layer.bias)
    return len(layers)


def _kernel_norms(model) -> int:
    """Run every RMSNorm layer of a bfloat16 model on a CPU with ``cpu_kernels.rms_norm``: one
    call where transformers runs eight tensor operations (61 a decoding step of the default
    model, about 85 us each on this project's CPU). A layer is switched only where the
    kernel's output matches its own forward on a probe within bfloat16 rounding (a norm that
    scales by 1 + weight, or computes otherwise, keeps its forward). Returns how many."""
    if cpu_kernels.kernel() is None or next(model.parameters()).dtype != torch.bfloat16:
        return 0
    switched = 0
    with torch.inference_mode():
        for module in model.modules():
            weight = getattr(module, "weight", None)
            eps = getattr(module, "variance_epsilon", None)
            if (not type(module).__name__.endswith("RMSNorm") or not isinstance(weight, torch.Tensor)
                    or weight.dim() != 1 or weight.dtype != torch.bfloat16 or not isinstance(eps, float)):
                continue
            probe = torch.randn(3, weight.shape[0], generator=torch.Generator().manual_seed(0)).bfloat16() * 3
            if not torch.allclose(cpu_kernels.rms_norm(probe, weight, eps).float(), module(probe).float(),
                                  rtol=2 ** -7, atol=1e-6):
                continue
            module.forward = functools.partial(_kernel_norm, weight.detach(), eps)
            switched += 1
    return switched


def _kernel_norm(weight, eps, x):
    return cpu_kernels.rms_norm(x, weight, eps)


def _packed_linear(weight, bias, x):
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


GROUPED = "metarewarding_grouped"


def grouped_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' sdpa attention, with the query heads that share a key/value head
    (grouped-query attention) stacked on that head instead of copying keys and values to every
    query head (transformers' ``repeat_kv``, for masked prefills).

    - One query token (decoding), or keys that carry shared segments (``shared_prefix``, a
      decoding cache from ``_shared_prefix_cache``): ``_shared_prefix_attention``, two matrix
      products per key/value head (and per shared segment) over the KV cache's whole buffer,
      softmax in float32. On a CPU, PyTorch's fused kernel pays a fixed cost per
      (row, head) block that dwarfs a single token's work: at 32 rows x 400 cached tokens in
      bfloat16 on this project's 2-core CPU, 2.0-2.7 ms a layer against 1.3-2.0 ms here. The
      query-key products come out rounded to the model's dtype before the softmax, where the
      fused kernel keeps float32 (``bench/precision.py``'s decode part measures what it costs).
    - Several query tokens with a mask (prefill): sdpa's own kernel on the stacked queries, the
      mask repeated for them: the same results without the copies, and a larger block per call.
    - Shared segments where the above does not apply: the materialized keys, then as below.
    - Anything else (a prefill without a mask or without grouped heads, a mask per head, dropout,
      extra biases, windows): transformers' sdpa function."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads
    shared_mask = attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[1] == 1
    unsupported = (dropout or heads % kv_heads or kwargs.get("output_attentions")
                   or kwargs.get("position_bias") is not None or kwargs.get("softcap") is not None
                   or kwargs.get("sliding_window") or kwargs.get("s_aux") is not None
                   or (attention_mask is not None and not shared_mask))
    shared = getattr(key, "shared_prefix", None)
    if (shared or q_len == 1) and not unsupported:
        scale = dim ** -0.5 if scaling is None else scaling
        return _shared_prefix_attention(query, key, value, attention_mask, scale, shared or ()), None
    if shared:
        key, value = _materialize(key, value, shared)
    if unsupported or group == 1 or not shared_mask:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    stacked = query.reshape(batch, kv_heads, group * q_len, dim)
    mask = attention_mask.repeat(1, 1, group, 1)
    out = torch.nn.functional.scaled_dot_product_attention(stacked, key, value, attn_mask=mask, scale=scaling)
    return out.reshape(batch, heads, q_len, dim).transpose(1, 2).contiguous(), None


def _shared_prefix_attention(query, key, value, attention_mask, scale: float, shared) -> torch.Tensor:
    """Attention of the new tokens of every row over its shared segments (none: decoding with
    a cache per row) and its own keys.

    For each segment, the query rows of a node are stacked and multiplied by the node's keys
    once: the judge template's opening is read once for the whole batch (one matrix product of
    all the rows' queries) and a prompt once for its n samples, where a copy per row would be
    read n times at every decoded token. The scores of all parts take one softmax (float32);
    the parts' outputs are summed in float32. ``key``/``value``: the rows' own keys and values
    (``GrowingLayer``'s filled slice); ``attention_mask``: None, or [rows, 1, new tokens, all
    keys] over the segments in order and then the row's own keys. Returns [rows, new tokens,
    heads, head_dim].

    One new token per row in bfloat16 on a CPU goes to ``cpu_kernels.decode_attention``
    instead (where it is built): the same steps and roundings in one pass over the keys and
    values where they lie, the parts' outputs summed in float32 before one rounding (here each
    part's product is rounded to bfloat16 first)."""
    rows, heads, q_len, dim = query.shape
    if q_len == 1 and cpu_kernels.supports(query, key):
        bias = None if attention_mask is None else _mask_bias(attention_mask, torch.float32)
        return cpu_kernels.decode_attention(query, key, value, bias, scale, shared)
    kv_heads = key.shape[1]
    m = heads // kv_heads * q_len  # the query rows of one key/value head
    length = key.shape[2]
    q = query.reshape(rows, kv_heads, m, dim)
    # the products run over the cache's whole buffer (``GrowingLayer``: zeros past the filled
    # length), which is contiguous, where the filled slice is not and would be copied first
    own_keys, own_values = _whole_buffer(key), _whole_buffer(value)
    widths = [s.keys.shape[-2] for s in shared]
    starts = [sum(widths[:i]) for i in range(len(widths) + 1)]
    softmax_dtype = torch.promote_types(query.dtype, torch.float32)
    scores = torch.empty(rows, kv_heads, m, starts[-1] + length, dtype=softmax_dtype, device=query.device)
    for s, start, width in zip(shared, starts, widths):
        products = torch.matmul(s.layout.to_nodes(q), s.keys.transpose(-1, -2))
        s.layout.to_rows(scores[..., start:start + width], products)
    scores[..., starts[-1]:] = torch.matmul(q, own_keys.transpose(-1, -2))[..., :length]
    scores.mul_(scale)
    if attention_mask is not None:  # [rows, 1, q_len, all keys]
        scores.view(rows, kv_heads, heads // kv_heads, q_len, -1).add_(_mask_bias(attention_mask, softmax_dtype)[:, :, None])
    weights = torch.softmax(scores, dim=-1)
    own = torch.zeros(rows, kv_heads, m, own_values.shape[2], dtype=value.dtype, device=query.device)
    own[..., :length] = weights[..., starts[-1]:]
    out = torch.matmul(own, own_values)
    if shared:
        out = out.to(softmax_dtype)
        for s, start, width in zip(shared, starts, widths):
            s.layout.to_rows(out, torch.matmul(s.layout.to_nodes(weights[..., start:start + width], value.dtype),
                                               s.values), add=True)
    return out.to(value.dtype).view(rows, heads, q_len, dim).transpose(1, 2).contiguous()


def _mask_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An attention mask as a bias to add to the scores: 0 where a boolean mask is True, -inf
    where it is False (adding it is 2x faster on a CPU than ``torch.where`` with the mask
    broadcast over the heads); a float mask as it is."""
    if mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))


def _whole_buffer(t: torch.Tensor) -> torch.Tensor:
    """``t`` ([batch, heads, length, dim]) when it is the leading ``length`` positions of a
    contiguous [batch, heads, capacity, dim] buffer: that buffer; else ``t`` as it is. Callers
    use the positions past ``length`` only multiplied by zero, so they must be finite (the
    cache's buffers are zero-initialised)."""
    batch, heads, length, dim = t.shape
    stride = t.stride()
    if stride[3] != 1 or stride[2] != dim or stride[1] % dim or (heads > 1 and stride[0] != heads * stride[1]):
        return t
    capacity, offset = stride[1] // dim, t.storage_offset()
    if (capacity <= length or offset % (capacity * dim)
            or offset + batch * heads * capacity * dim > t.untyped_storage().nbytes() // t.element_size()):
        return t
    return t.as_strided((batch, heads, capacity, dim), stride)


def _use_grouped_attention(model) -> str:
    """Switch a model that runs transformers' sdpa attention to ``grouped_attention`` (the same
    masks). Returns the implementation the model runs."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    current = getattr(model.config, "_attn_implementation", None)
    if current != "sdpa":
        return str(current)
    AttentionInterface.register(GROUPED, grouped_attention)
    AttentionMaskInterface.register(GROUPED, sdpa_mask)
    model.set_attn_implementation(GROUPED)
    return GROUPED


class PrefixNode(NamedTuple):
    """A segment of tokens prefilled at one level, continuing row ``parent`` of the level above
    (an empty segment carries a finished row through the levels below it)."""

    parent: int
    tokens: list[int]


def prefix_levels(ids: Sequence[Sequence[int]], min_shared: int) -> tuple[list[list[PrefixNode]], list[int]]:
    """Cut token sequences into a tree of shared prefixes, level by level.

    Sequences are grouped where they share at least ``min_shared`` further tokens; a group's
    common prefix becomes one node whose children continue it. Every sequence keeps at least
    its last token for its own leaf, so its next-token logits come from its own row. Returns
    the levels (level 0's parents are meaningless) and, for each sequence, its row in the last
    level. Concatenating the segments along a path gives back each sequence exactly."""
    ids = [list(t) for t in ids]
    if any(not t for t in ids):
        raise ValueError("prefix_levels: every sequence needs at least one token")

    def lcp(a: list[int], b: list[int], start: int) -> int:
        k = start
        while k < len(a) and k < len(b) and a[k] == b[k]:
            k += 1
        return k - start

    def build(rows: list[int], start: int) -> list[tuple]:
        """Nodes (tokens, children | row) covering ``rows`` from token ``start`` on."""
        if len(rows) == 1:
            return [(ids[rows[0]][start:], rows[0])]
        rows = sorted(rows, key=lambda r: ids[r][start:])
        groups = [[rows[0]]]
        for a, b in zip(rows, rows[1:]):
            if lcp(ids[a], ids[b], start) >= min_shared:
                groups[-1].append(b)
            else:
                groups.append([b])
        nodes = []
        for group in groups:
            shared = min(lcp(ids[group[0]], ids[r], start) for r in group[1:]) if len(group) > 1 else 0
            shared = min(shared, min(len(ids[r]) for r in group) - 1 - start)
            if len(group) > 1 and shared >= min_shared:
                nodes.append((ids[group[0]][start:start + shared], build(group, start + shared)))
            else:
                nodes += [(ids[r][start:], r) for r in group]
        return nodes

    levels: list[list[PrefixNode]] = []
    frontier = [(0, node) for node in build(list(range(len(ids))), 0)]  # (parent, node)
    while True:
        levels.append([PrefixNode(parent, tokens) for parent, (tokens, _) in frontier])
        if all(isinstance(rest, int) for _, (_, rest) in frontier):
            break
        below = []
        for position, (_, (tokens, rest)) in enumerate(frontier):
            if isinstance(rest, int):
                below.append((position, ([], rest)))
            else:
                below += [(position, child) for child in rest]
        frontier = below
    final_rows = [0] * len(ids)
    for position, (_, (_, row)) in enumerate(frontier):
        final_rows[row] = position
    return levels, final_rows


def _split_options(tokenizer, text: str, options: Sequence[str]) -> tuple[list[int], list[list[int]]]:
    """Tokenise text+option for every option; return the shared token prefix and the rest."""
    full = [tokenizer(text + o, add_special_tokens=False)["input_ids"] for o in options]
    common = 0
    while all(len(f) > common for f in full) and len({f[common] for f in full}) == 1:
        common += 1
    if any(len(f) == common for f in full):
        raise ValueError(f"forced-choice options {list(options)} are not distinguishable as tokens")
    return full[0][:common], [f[common:] for f in full]


def _eos_ids(generation_config, tokenizer) -> list[int]:
    """Every token id that ends a turn for this model."""
    eos = generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


def _generator(device: str, seed: int, prompt: int, sample: int) -> torch.Generator:
    """The random stream of one (prompt, sample): independent of batching and sharding."""
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + prompt * 1_009 + sample) % (2**63 - 1))
    return g


# the most likely tokens searched for the top-p nucleus, in turn, before a row is sorted in full
NUCLEUS_CANDIDATES = (32, 512)


def _sample(logits: torch.Tensor, sampling: Sampling, generators: list[torch.Generator]) -> torch.Tensor:
    """One token per row: greedy at temperature 0, else temperature + nucleus (top-p) sampling.

    The nucleus is the smallest set of most likely tokens whose mass reaches ``top_p``: a token
    is kept when the mass of the tokens before it is at most ``top_p``. It is looked for among
    the ``NUCLEUS_CANDIDATES[0]`` most likely tokens first, which is exact whenever the
    candidates more likely than the least likely one hold more than ``top_p`` (every later
    token then starts past it, and no token left out ties with a kept one); rows where they do
    not try the next count (on the default run's workloads, 32 tokens hold the nucleus of 75-88% of the
    rows, 512 of all but 0-0.3%; a top-k costs about its k), and the rest are sorted in full.
    Each row draws one uniform number a step from its own generator and picks its token by
    inverse CDF (``_nucleus_draw``), all rows at once: a row's draw depends on its stream alone,
    not on the batch nor on the search that found its nucleus, and the step needs no loop over
    rows nor a device sync per row. Tokens of equal probability come in token order
    (``_ties_by_token``), so the search that found a nucleus does not change the draw."""
    if sampling.temperature == 0:
        return logits.argmax(dim=-1)
    uniforms = torch.stack([torch.rand((), generator=g, device=logits.device) for g in generators])
    top_p = min(sampling.top_p, 1.0)
    vocab = logits.shape[-1]
    if (top_p < 1.0 and logits.dtype == torch.bfloat16 and logits.device.type == "cpu" and logits.stride(-1) == 1
            and cpu_kernels.kernel() is not None):
        # each stage's candidates from one scan of the logits, with probabilities for them only
        # (the kernel's softmax, which the last stage, every token, shares)
        def search(rows, count):
            return cpu_kernels.nucleus_candidates(logits, rows, sampling.temperature, top_p, count)
        return _staged_nucleus_draw(search, logits.shape[0], vocab, top_p, uniforms)
    probs = torch.softmax(logits.to(torch.float32, copy=True).div_(sampling.temperature), dim=-1)
    if top_p >= 1.0:
        return _nucleus_draw(*probs.sort(dim=-1, descending=True, stable=True), top_p, uniforms)

    def search(rows, count):
        searched = probs if rows.numel() == probs.shape[0] else probs[rows]
        if count >= vocab:
            candidates, index = searched.sort(dim=-1, descending=True, stable=True)
            return candidates, index, torch.ones(rows.numel(), dtype=torch.bool, device=probs.device)
        candidates, index = _ties_by_token(*searched.topk(count, dim=-1))
        # found where the candidates above the smallest one hold more than top_p: the nucleus
        # ends among them, and every token that ties with one of them is a candidate too
        above = candidates.masked_fill(candidates <= candidates[:, -1:], 0.0).sum(dim=-1)
        return candidates, index, above > top_p
    return _staged_nucleus_draw(search, probs.shape[0], vocab, top_p, uniforms)


def _staged_nucleus_draw(search, rows: int, vocab: int, top_p: float, uniforms: torch.Tensor) -> torch.Tensor:
    """``_sample``'s staged search: ``search(rows, count)`` gives those rows' ``count`` most
    likely tokens (probabilities in descending order, token ids) and whether each row's nucleus
    ends among them; each row draws from its candidates, and the rows not found go on to the
    next count, the last being the whole vocabulary."""
    token = torch.zeros(rows, dtype=torch.long, device=uniforms.device)
    rows = torch.arange(rows, device=uniforms.device)  # the rows whose nucleus is not found yet
    for count in (*NUCLEUS_CANDIDATES, vocab):
        candidates, index, found = search(rows, min(count, vocab))
        token[rows] = _nucleus_draw(candidates, index, top_p, uniforms[rows])
        rows = rows[~found]
        if rows.numel() == 0:
            break
    return token


def _ties_by_token(probs: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k candidates (descending ``probs``, token ids ``index``) with equal probabilities in
    token order, as a stable full sort has them: bfloat16 logits tie often, and the order of a
    tie decides which of its tokens a uniform number lands on."""
    by_token = index.argsort(dim=-1)
    probs, index = probs.gather(-1, by_token), index.gather(-1, by_token)
    probs, order = probs.sort(dim=-1, descending=True, stable=True)
    return probs, index.gather(-1, order)


def _nucleus_draw(probs: torch.Tensor, index: torch.Tensor, top_p: float, uniforms: torch.Tensor) -> torch.Tensor:
    """The token of each row by inverse CDF over its nucleus: ``probs`` in descending order
    with their token ids ``index``, one uniform number in [0, 1) per row. A token is kept when
    the mass before it is at most ``top_p``; the row takes the first kept token whose
    cumulative kept mass exceeds uniform x (kept mass)."""
    kept = probs.masked_fill(probs.cumsum(dim=-1) - probs > top_p, 0.0)
    cumulative = kept.cumsum(dim=-1)
    pick = torch.searchsorted(cumulative, uniforms[:, None] * cumulative[:, -1:], right=True)
    last = (kept > 0).sum(dim=-1, keepdim=True) - 1  # never past the nucleus, whatever the rounding
    return index.gather(-1, torch.minimum(pick, last))[:, 0]
