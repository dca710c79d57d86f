"""What both phases of the attention-layer benchmark (:mod:`rtpurbo.bench.attention`) share: the layer geometry,
its work counts, and how a call is timed.

One attention layer of a model geometry (``n_q`` query heads, ``n_kv`` KV heads, head dim 128,
bf16, batch 1). ``R = max(1, round(0.15 * n_kv))`` KV heads are retrieval heads, the others
local heads (window ``W``, ``S`` sinks).

Work counts: prefill FLOPs at 4 * D FLOPs per visible (query, key) pair (:func:`prefill_flops`); the bytes one
decode step must read (:func:`decode_bytes`). Their ratios are the ideal speedups.

Timing: CUDA events. Calls under a second: ``triton.testing.do_bench`` medians (L2 flushed before
every timed call) after warm-up; calls over a second (dense prefill from 512K) are timed once.
Dense baselines: one SDPA call restricted to one backend (cuDNN, resp. flash) (:func:`_dense`).
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..ops.semantics import causal_pairs, local_pairs

INDEX_DIM = 16
RECENT = 64
TOP_P = 0.9
MIN_TOKENS = 64
DENSE_BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}
DEVICE = torch.device("cuda")
_EXPECTED_TFLOPS = {"cudnn": 550e12, "flash": 320e12}  # only to skip points the time budget cannot hold


@dataclass(frozen=True)
class Geometry:
    name: str
    n_q: int
    n_kv: int
    head_dim: int = 128

    @property
    def group(self) -> int:
        return self.n_q // self.n_kv

    def n_retrieval(self, fraction: float = 0.15) -> int:
        return max(1, round(fraction * self.n_kv))


GEOMETRIES = {g.name: g for g in (Geometry("llama-3.1-8b", 32, 8), Geometry("qwen3-30b-a3b", 32, 4))}


# --- work counts ---------------------------------------------------------------------------
def prefill_flops(geom: Geometry, length: int, window: int, sinks: int, local_only: bool = False) -> tuple[int, int]:
    """(dense, sparse) forward FLOPs of one layer's attention (``local_only``: sparse = the local heads' part)."""
    per_pair = 4 * geom.head_dim
    n_ret = geom.n_retrieval()
    dense = per_pair * geom.n_q * causal_pairs(length)
    local = per_pair * geom.group * (geom.n_kv - n_ret) * local_pairs(length, window, sinks)
    return dense, local if local_only else local + per_pair * geom.group * n_ret * causal_pairs(length)


def decode_bytes(geom: Geometry, length: int, window: int, sinks: int, selected: float | None) -> tuple[float, float]:
    """(dense, sparse) bytes one decode step must read: bf16 K/V; a sparse step that selects (``selected`` keys per
    retrieval head) also reads the indexer keys it scores, a step over every key (``selected=None``: the retrieval
    heads' ``top_p = 1`` path, :func:`rtpurbo.ops.triton.decode.decode_attention` and
    :func:`rtpurbo.ops.triton.decode_roles.two_role_decode` without a list) reads only K/V."""
    row = 2 * geom.head_dim * 2  # K and V of one key, bf16
    n_ret = geom.n_retrieval()
    dense = geom.n_kv * length * row
    local = (geom.n_kv - n_ret) * min(length, sinks + window) * row
    if selected is None:
        return dense, local + n_ret * length * row
    return dense, local + n_ret * selected * row + n_ret * length * INDEX_DIM * 2


# --- timing --------------------------------------------------------------------------------
def _once_ms(fn) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def time_ms(fn) -> float:
    """Median milliseconds of ``fn()``; a first call over a second is the one sample."""
    first = _once_ms(fn)
    if first >= 1000:
        return first
    if first >= 50:
        return sorted(_once_ms(fn) for _ in range(3))[1]
    return _do_bench(fn, rep=100)


def graph_us(fn, rep: int = 200) -> float:
    """Median microseconds of one replay of ``fn`` captured in a CUDA graph (L2 flushed each time; ``rep`` ms of replays)."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return 1000 * _do_bench(graph.replay, rep=rep)


def _do_bench(fn, rep: int) -> float:
    from triton.testing import do_bench  # GPU-only dependency, imported when timing

    return do_bench(fn, warmup=25, rep=rep, return_mode="median")


def _randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, device=DEVICE, dtype=torch.bfloat16)


def _dense(name: str, q, k, v, causal: bool, row: dict, key: str):
    """A dense SDPA call restricted to one backend: GQA-native if the backend takes ``enable_gqa``
    (probed on 128 tokens), else over K/V repeated per query head (copy not timed; noted in row)."""
    backend = [DENSE_BACKENDS[name]]
    rows, keys = slice(0, min(q.shape[2], 128)), slice(0, min(k.shape[2], 128))
    try:
        with sdpa_kernel(backend), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a rejected probe warns once per disabled backend
            F.scaled_dot_product_attention(q[:, :, rows], k[:, :, keys], v[:, :, keys], is_causal=causal, enable_gqa=True)
        keys, values, gqa = k, v, True
    except RuntimeError:
        group = q.shape[1] // k.shape[1]
        keys, values, gqa = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1), False
        row[key + "_note"] = "backend rejects enable_gqa: K/V repeated per query head (copy not timed)"

    def run():
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, keys, values, is_causal=causal, enable_gqa=gqa)
    return run


def _measure(row: dict, key: str, fn, estimate_s: float, deadline: float) -> None:
    """row[key] = fn() unless the time budget cannot hold it or it fails (then row[key + '_note'])."""
    if time.time() + estimate_s > deadline:
        row[key], row[key + "_note"] = None, "skipped: time budget"
        return
    try:
        row[key] = fn()
    except torch.OutOfMemoryError:
        row[key], row[key + "_note"] = None, "skipped: OOM"
    except RuntimeError as err:
        row[key], row[key + "_note"] = None, f"failed: {str(err).splitlines()[0][:120]}"
    torch.cuda.empty_cache()
