"""C kernels for decoding on a CPU (attention, top-p candidates, RMSNorm), built at first use
with the system C compiler.

PyTorch runs a decoding step's attention as batched matrix products of tiny matrices (one per
row and key/value head: a few query heads against one row's keys), plus copies, a mask, a
softmax and casts around them. On this project's 2-core CPU those products read the KV cache
at a fraction of the memory bandwidth and the rest costs as much again. ``cpu_kernels.c``
does the whole attention of one new token per row in one pass over the keys and values, where
they lie (shared prefix segments included), with the same roundings as
``hf._shared_prefix_attention`` (``decode_attention``). Top-p sampling in PyTorch writes a
float32 probability for every token of the vocabulary and runs a top-k over them; the kernel
finds each row's most likely tokens in one scan of the bfloat16 logits and computes only
their probabilities (``nucleus_candidates``). A Llama RMSNorm is eight tensor operations in
PyTorch and one call here (``rms_norm``).

The kernels are compiled once per machine type into a cache folder (``cc -O3 -march=native
-fopenmp``, about a second) and loaded with ``ctypes``; its OpenMP loops run on the runtime
PyTorch has loaded, with PyTorch's thread count. Where there is no compiler, the build fails,
or ``METAREWARDING_CPU_KERNELS=0`` is set, ``kernel()`` returns None and the backend keeps
PyTorch's operations. The cache folder is ``$METAREWARDING_KERNEL_CACHE``, else
``$XDG_CACHE_HOME/metarewarding/kernels``, else ``~/.cache/metarewarding/kernels``; the file
name carries a hash of the source, the compiler and its version, the flags and the CPU's
flags, so a shared home folder on a cluster with several CPU types keeps one build per type.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_kernels.c")
# tried in order: the first that compiles is used
FLAG_SETS = (["-O3", "-march=native", "-fopenmp"], ["-O3", "-fopenmp"], ["-O3"])


def cache_dir() -> Path:
    if os.environ.get("METAREWARDING_KERNEL_CACHE"):
        return Path(os.environ["METAREWARDING_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "metarewarding" / "kernels"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _build(cc: str) -> Path:
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=True).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), cc, version, repr(FLAG_SETS), platform.machine(),
                                    _cpu_flags()]).encode())
    target = cache_dir() / f"cpu_kernels-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for flags in FLAG_SETS:
        # built beside the target and renamed into place: concurrent jobs never load a half-written file
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        done = subprocess.run([cc, *flags, "-shared", "-fPIC", "-o", tmp, str(SOURCE), "-lm"],
                              capture_output=True, text=True)
        if done.returncode == 0:
            os.replace(tmp, target)
            log.info("built %s with %s %s", target.name, cc, " ".join(flags))
            return target
        os.unlink(tmp)
        errors.append(f"{' '.join(flags)}: {done.stderr.strip()[-300:]}")
    raise RuntimeError("; ".join(errors))


_POINTER = ctypes.c_void_p
_I64 = ctypes.c_int64


@functools.lru_cache(maxsize=None)
def kernel():
    """The loaded kernel library, or None (no compiler, a failed build, or turned off)."""
    if os.environ.get("METAREWARDING_CPU_KERNELS", "1") == "0":
        return None
    cc = _compiler()
    if cc is None:
        log.info("CPU kernels not built: no C compiler (cc, gcc or clang) on PATH")
        return None
    try:
        lib = ctypes.CDLL(str(_build(cc)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        log.info("CPU kernels not built: %s", error)
        return None
    fn = lib.mr_decode_attention
    fn.restype = ctypes.c_int
    fn.argtypes = [_I64, _I64, _I64, _I64, _POINTER, _I64, _I64, _POINTER, _POINTER, _POINTER, _POINTER,
                   _POINTER, _POINTER, _I64, _I64, _I64, _POINTER, _I64, ctypes.c_float, ctypes.c_int, _POINTER]
    fn = lib.mr_rms_norm
    fn.restype = ctypes.c_int
    fn.argtypes = [_I64, _I64, _POINTER, _POINTER, ctypes.c_float, _POINTER, ctypes.c_int]
    fn = lib.mr_nucleus_candidates
    fn.restype = ctypes.c_int
    fn.argtypes = [_I64, _POINTER, _I64, _POINTER, _I64, ctypes.c_float, ctypes.c_float, _I64, _POINTER, _POINTER,
                   _POINTER, ctypes.c_int]
    return lib


def supports(query: torch.Tensor, key: torch.Tensor) -> bool:
    """Whether ``decode_attention`` takes these tensors: bfloat16 on a CPU, one new token per
    row, query heads a whole multiple of key/value heads, head dimension contiguous."""
    return (query.device.type == "cpu" and query.dtype == key.dtype == torch.bfloat16
            and query.dim() == 4 and query.shape[2] == 1 and key.dim() == 4
            and query.shape[1] % key.shape[1] == 0 and key.stride(3) == 1 and key.stride(2) == key.shape[3]
            and kernel() is not None)


def decode_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor | None,
                     scale: float, shared) -> torch.Tensor:
    """Attention of one new token per row: ``query`` [rows, heads, 1, dim]; ``key``/``value``
    [rows, kv_heads, length, dim], the rows' own keys (a slice of a larger buffer is read in
    place); ``shared``: ``SharedSegment``s that come before them; ``bias``: None or float32
    [rows, 1, 1, all keys] added to the scores. Returns [rows, 1, heads, dim], as
    ``hf._shared_prefix_attention`` does. Call only where ``supports`` holds."""
    rows, heads, _, dim = query.shape
    kv_heads, length = key.shape[1], key.shape[2]
    if value.stride() != key.stride():
        value = value.contiguous()
        key = key.contiguous()
    q = query if query.stride(3) == 1 and query.stride(1) == dim else query.contiguous()
    segments = [(s.keys.contiguous(), s.values.contiguous(), s.layout.row_node) for s in shared]
    total = length + sum(k.shape[2] for k, _, _ in segments)
    if bias is not None:
        bias = bias.to(torch.float32).reshape(rows, -1)
        if bias.shape[1] != total:
            raise ValueError(f"attention bias covers {bias.shape[1]} keys, the cache has {total}")
        if bias.stride(1) != 1:
            bias = bias.contiguous()
    out = torch.empty(rows, 1, heads, dim, dtype=query.dtype)
    pointers = (ctypes.c_void_p * max(1, len(segments)))
    seg_k = pointers(*[k.data_ptr() for k, _, _ in segments])
    seg_v = pointers(*[v.data_ptr() for _, v, _ in segments])
    seg_node = pointers(*[n.data_ptr() for _, _, n in segments])
    widths = (ctypes.c_int64 * max(1, len(segments)))(*[k.shape[2] for k, _, _ in segments])
    failed = kernel().mr_decode_attention(
        rows, kv_heads, heads // kv_heads, dim, q.data_ptr(), q.stride(0), len(segments), seg_k, seg_v, widths,
        seg_node, key.data_ptr(), value.data_ptr(), key.stride(0), key.stride(1), length,
        None if bias is None else bias.data_ptr(), 0 if bias is None else bias.stride(0), scale,
        torch.get_num_threads(), out.data_ptr())
    if failed:
        raise MemoryError("decoding attention kernel: no scratch memory")
    return out


def nucleus_candidates(logits: torch.Tensor, rows: torch.Tensor, temperature: float, top_p: float,
                       count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``count`` most likely tokens of ``logits[rows]`` (bfloat16 [all rows, vocab] on a
    CPU) at ``temperature``: their probabilities (float32, descending, equal ones in token
    order) and token ids, and whether each row's top-p nucleus ends among them (its
    candidates more likely than the least likely one hold more than ``top_p``, by the
    cumulative sum ``hf._nucleus_draw`` takes). ``count`` >= the vocabulary: every token, and
    found everywhere. Call only where ``kernel()`` is not None."""
    if logits.dtype != torch.bfloat16 or logits.dim() != 2 or logits.stride(1) != 1:
        raise ValueError("nucleus_candidates takes bfloat16 logits [rows, vocab] with contiguous rows")
    vocab = logits.shape[1]
    count = min(count, vocab)
    rows = rows.to(torch.int64).contiguous()
    probs = torch.empty(rows.numel(), count, dtype=torch.float32)
    index = torch.empty(rows.numel(), count, dtype=torch.int64)
    found = torch.empty(rows.numel(), dtype=torch.uint8)
    failed = kernel().mr_nucleus_candidates(rows.numel(), rows.data_ptr(), vocab, logits.data_ptr(), logits.stride(0),
                                            temperature, top_p, count, probs.data_ptr(), index.data_ptr(),
                                            found.data_ptr(), torch.get_num_threads())
    if failed:
        raise MemoryError("nucleus candidates kernel: no scratch memory")
    return probs, index, found.bool()


# rows x hidden below which a norm runs on one thread (a parallel region costs more than the work)
_NORM_PARALLEL_MIN = 1 << 16


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama's RMSNorm of bfloat16 ``x`` [..., hidden], as transformers computes it, in one
    pass. Call only where ``kernel()`` is not None."""
    hidden = x.shape[-1]
    x = x.contiguous()
    out = torch.empty_like(x)
    threads = 1 if x.numel() < _NORM_PARALLEL_MIN else torch.get_num_threads()
    kernel().mr_rms_norm(x.numel() // hidden, hidden, x.data_ptr(), weight.data_ptr(), eps, out.data_ptr(), threads)
    return out
