"""The C kernel for decoding attention: against the attention worked out in float64 with the
kernel's roundings, against PyTorch's path, and its build (cache, fallbacks)."""

from __future__ import annotations

import logging
import os
import shutil

import pytest
import torch

import metarewarding.backends.hf as hf
from metarewarding.backends import cpu_kernels

# CI installs a C compiler (.ci/run): there, no compiler fails these tests instead of skipping them
needs_kernel = pytest.mark.skipif(cpu_kernels._compiler() is None and not os.environ.get("CI"),
                                  reason="no C compiler on this machine")


def bf16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16).to(x.dtype)


def reference(query, own_k, own_v, bias, scale, segments):
    """float64 attention with the kernel's roundings: products and weights to bfloat16."""
    rows, heads = query.shape[:2]
    kv_heads = own_k.shape[1]
    group = heads // kv_heads
    out = torch.empty(rows, 1, heads, query.shape[-1], dtype=torch.float64)
    for r in range(rows):
        for h in range(heads):
            kv = h // group
            keys = [s.keys[s.layout.row_node[r], kv] for s in segments] + [own_k[r, kv]]
            values = [s.values[s.layout.row_node[r], kv] for s in segments] + [own_v[r, kv]]
            keys, values = torch.cat(keys).double(), torch.cat(values).double()
            scores = bf16(keys @ query[r, h, 0].double()) * scale
            if bias is not None:
                scores = scores + bias[r].reshape(-1).double()
            weights = bf16(torch.softmax(scores, dim=0))
            out[r, 0, h] = weights @ values
    return out


def segment(nodes, kv_heads, width, dim, row_node):
    layout = hf.RowLayout(row_node, nodes, "cpu")
    return hf.SharedSegment(torch.randn(nodes, kv_heads, width, dim).bfloat16(),
                            torch.randn(nodes, kv_heads, width, dim).bfloat16(), layout)


CASES = [  # rows, heads, kv_heads, dim, own length, buffer capacity, segment widths
    (5, 9, 3, 64, 37, 48, ()),          # generation: own keys only, in a larger buffer
    (6, 9, 3, 64, 5, 5, (40, 17)),       # judging: shared template and prompt segments
    (4, 8, 1, 64, 16, 20, (3,)),         # one key/value head for 8 query heads (two tiles)
    (3, 4, 1, 128, 21, 33, (19,)),       # head dim 128: 4 query heads (tiles of 3 and 1)
    (4, 6, 6, 128, 2, 2, ()),            # no grouping, fewer keys than a block of 16
    (3, 4, 2, 16, 9, 12, (7,)),          # head dim 16: the generic C path
    (2, 6, 3, 80, 30, 30, (5,)),         # head dim 80: the generic C path
]


@pytest.fixture(params=["native", "portable"])
def build(request, tmp_path, monkeypatch):
    """The kernels as built for this CPU (AVX-512 where it has AVX512-BF16), and built without
    -march=native: the plain C paths every CPU runs."""
    if request.param == "portable":
        monkeypatch.setattr(cpu_kernels, "FLAG_SETS", (["-O3", "-fopenmp"],))
        monkeypatch.setenv("METAREWARDING_KERNEL_CACHE", str(tmp_path))
        cpu_kernels.kernel.cache_clear()
    yield request.param
    cpu_kernels.kernel.cache_clear()


@needs_kernel
@pytest.mark.parametrize("rows,heads,kv_heads,dim,length,capacity,widths", CASES)
def test_kernel_computes_the_attention(rows, heads, kv_heads, dim, length, capacity, widths, build):
    """Scores, masked softmax and weighted values of every row and head, with shared segments
    whose rows are out of node order: within a bfloat16 rounding of the float64 attention."""
    torch.manual_seed(rows * 100 + dim)
    query = (torch.randn(rows, heads, 1, dim) * 2).bfloat16()
    buffer_k = torch.randn(rows, kv_heads, capacity, dim).bfloat16()
    buffer_v = torch.randn(rows, kv_heads, capacity, dim).bfloat16()
    own_k, own_v = buffer_k[:, :, :length], buffer_v[:, :, :length]
    segments = tuple(segment(2, kv_heads, w, dim, [(r * 7 + i) % 2 for r in range(rows)])
                     for i, w in enumerate(widths))
    total = length + sum(widths)
    bias = torch.zeros(rows, 1, 1, total)
    bias[0, ..., : min(3, total - 1)] = float("-inf")  # padding before a row's first token
    bias[-1, ..., -1] = float("-inf")  # a stopped row's new slot
    for mask in (bias, None):
        got = cpu_kernels.decode_attention(query, own_k, own_v, mask, dim ** -0.5, segments)
        assert got.shape == (rows, 1, heads, dim) and got.dtype == torch.bfloat16
        want = reference(query, own_k, own_v, mask, dim ** -0.5, segments)
        torch.testing.assert_close(got.double(), want, rtol=2 ** -7, atol=2 ** -7)


@needs_kernel
def test_kernel_matches_pytorch_path_in_the_backend_attention():
    """``_shared_prefix_attention`` hands a decoding step to the kernel; PyTorch's path (the
    kernel off) gives the same attention within a bfloat16 rounding."""
    torch.manual_seed(0)
    rows, heads, kv_heads, dim = 6, 9, 3, 64
    query = torch.randn(rows, heads, 1, dim).bfloat16()
    own_k = torch.randn(rows, kv_heads, 40, dim).bfloat16()[:, :, :30]
    own_v = torch.randn(rows, kv_heads, 40, dim).bfloat16()[:, :, :30]
    segments = (segment(1, kv_heads, 25, dim, [0] * rows), segment(3, kv_heads, 11, dim, [0, 0, 1, 1, 2, 2]))
    mask = torch.ones(rows, 1, 1, 66, dtype=torch.bool)
    mask[2, ..., :4] = False
    assert cpu_kernels.supports(query, own_k)
    got = hf._shared_prefix_attention(query, own_k, own_v, mask, 0.125, segments)
    torch_path = cpu_kernels.supports
    try:
        cpu_kernels.supports = lambda *args: False
        want = hf._shared_prefix_attention(query, own_k, own_v, mask, 0.125, segments)
    finally:
        cpu_kernels.supports = torch_path
    torch.testing.assert_close(got.float(), want.float(), rtol=2 ** -7, atol=2 ** -7)


@needs_kernel
def test_kernel_gives_zeros_for_a_row_with_every_key_masked(build):
    query = torch.randn(2, 2, 1, 64).bfloat16()
    keys, values = torch.randn(2, 1, 20, 64).bfloat16(), torch.randn(2, 1, 20, 64).bfloat16()
    bias = torch.zeros(2, 1, 1, 20)
    bias[1] = float("-inf")
    out = cpu_kernels.decode_attention(query, keys, values, bias, 0.125, ())
    assert torch.equal(out[1], torch.zeros_like(out[1])) and out[0].abs().sum() > 0


def test_kernel_not_taken_for_other_dtypes_or_several_new_tokens():
    query, key = torch.randn(2, 4, 1, 64), torch.randn(2, 2, 5, 64)
    assert not cpu_kernels.supports(query, key)  # float32
    assert not cpu_kernels.supports(torch.randn(2, 4, 3, 64).bfloat16(), key.bfloat16())  # a prefill
    assert not cpu_kernels.supports(torch.randn(2, 3, 1, 64).bfloat16(), key.bfloat16())  # 3 heads on 2


@pytest.fixture
def fresh_kernel(tmp_path, monkeypatch):
    """``kernel()`` rebuilt from scratch into tmp_path; the shared one restored after."""
    monkeypatch.setenv("METAREWARDING_KERNEL_CACHE", str(tmp_path))
    cpu_kernels.kernel.cache_clear()
    yield tmp_path
    cpu_kernels.kernel.cache_clear()


@needs_kernel
def test_kernel_is_built_once_into_its_cache(fresh_kernel):
    assert cpu_kernels.kernel() is not None
    built = list(fresh_kernel.glob("cpu_kernels-*.so"))
    assert len(built) == 1 and not list(fresh_kernel.glob("*.so.tmp*"))
    stamp = built[0].stat().st_mtime_ns
    cpu_kernels.kernel.cache_clear()
    assert cpu_kernels.kernel() is not None
    assert built[0].stat().st_mtime_ns == stamp  # loaded, not compiled again
    assert os.listdir(fresh_kernel) == [built[0].name]


def test_kernel_off_without_a_working_compiler_or_when_turned_off(fresh_kernel, monkeypatch, caplog):
    monkeypatch.setenv("CC", shutil.which("false") or "/bin/false")
    with caplog.at_level(logging.INFO, logger="metarewarding.backends.cpu_kernels"):
        assert cpu_kernels.kernel() is None
    assert "not built" in caplog.text
    assert os.listdir(fresh_kernel) == []  # no half-written library left behind
    monkeypatch.delenv("CC")
    cpu_kernels.kernel.cache_clear()
    monkeypatch.setenv("METAREWARDING_CPU_KERNELS", "0")
    assert cpu_kernels.kernel() is None
    assert not cpu_kernels.supports(torch.randn(2, 4, 1, 64).bfloat16(), torch.randn(2, 2, 5, 64).bfloat16())


@needs_kernel
def test_nucleus_candidates_hand_worked(build):
    """probs 0.1, 0.1, 0.1, 0.3, 0.4 (tokens 0-4), top_p 0.75. Sorted: 4, 3, then the tie in
    token order 0, 1, 2. With 3 candidates (4, 3, 0) the mass before the least likely one's
    tie is 0.7 <= 0.75: not found; 4 candidates (4, 3, 0, 1): the same; all 5: found. At
    top_p 0.65 three are enough (0.7 > 0.65)."""
    logits = torch.tensor([0.1, 0.1, 0.1, 0.3, 0.4]).log().bfloat16().repeat(2, 1)
    rows = torch.tensor([1])
    for count, top_p, tokens, found in [(3, 0.75, [4, 3, 0], False), (4, 0.75, [4, 3, 0, 1], False),
                                        (5, 0.75, [4, 3, 0, 1, 2], True), (9, 0.75, [4, 3, 0, 1, 2], True),
                                        (3, 0.65, [4, 3, 0], True)]:
        probs, index, got = cpu_kernels.nucleus_candidates(logits, rows, 1.0, top_p, count)
        assert index.tolist() == [tokens] and got.tolist() == [found]
        want = torch.softmax(logits[1].float(), dim=0)[tokens]
        torch.testing.assert_close(probs[0], want, rtol=1e-6, atol=0)


@needs_kernel
def test_nucleus_candidates_are_a_stable_sort_of_the_softmax(build):
    """Rows of bfloat16 logits with many ties, at temperature 0.7: the candidates are the first
    tokens of a stable descending sort of PyTorch's softmax, with its probabilities to float32
    rounding, whichever the count (a heap scan below the vocabulary, a counting sort at it)."""
    torch.manual_seed(3)
    logits = (torch.randn(9, 3000) * torch.linspace(8.0, 0.5, 9)[:, None]).bfloat16()
    probs, order = torch.sort(torch.softmax(logits.float() / 0.7, dim=-1), dim=-1, descending=True, stable=True)
    rows = torch.tensor([8, 0, 3])
    for count in (1, 17, 300, 3000):
        got, index, _ = cpu_kernels.nucleus_candidates(logits, rows, 0.7, 0.9, count)
        assert torch.equal(index, order[rows, :count])
        torch.testing.assert_close(got, probs[rows, :count], rtol=2e-6, atol=1e-12)


@needs_kernel
def test_rms_norm_is_llamas_and_only_llama_like_norms_switch(build):
    """The kernel's RMSNorm against transformers' LlamaRMSNorm, within one bfloat16 rounding;
    ``_kernel_norms`` switches a Llama norm and leaves one that scales by 1 + weight (Gemma's)
    with its own forward."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    torch.manual_seed(5)
    norm = LlamaRMSNorm(576, eps=1e-5).to(torch.bfloat16)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(576) * 2)
    x = (torch.randn(2, 7, 576) * 4).bfloat16()
    with torch.inference_mode():
        torch.testing.assert_close(cpu_kernels.rms_norm(x, norm.weight, 1e-5).float(), norm(x).float(),
                                   rtol=2 ** -7, atol=1e-6)

    class GemmaLikeRMSNorm(LlamaRMSNorm):
        def forward(self, hidden):
            variance = hidden.float().pow(2).mean(-1, keepdim=True)
            return (hidden.float() * torch.rsqrt(variance + self.variance_epsilon) * (1.0 + self.weight.float())).to(hidden.dtype)

    model = torch.nn.Sequential(LlamaRMSNorm(64).to(torch.bfloat16), GemmaLikeRMSNorm(64).to(torch.bfloat16))
    assert hf._kernel_norms(model) == 1
    assert "forward" in model[0].__dict__ and "forward" not in model[1].__dict__
