"""Attention-layer benchmark: the head-wise sparse layer against dense SDPA (cuDNN and flash).

One attention layer of a model geometry (``n_q`` query heads, ``n_kv`` KV heads, head dim 128,
bf16, batch 1). ``R = max(1, round(0.15 * n_kv))`` KV heads are retrieval heads, the others
local heads (window ``W``, ``S`` sinks); heads are role-contiguous (retrieval first), the
layout :class:`rtpurbo.modules.SparseAttention` uses when roles are contiguous.

* Prefill of ``L`` tokens. Sparse: both roles through ``ops.api.attention(impl="flex")`` plus the
  head merge. Dense: one SDPA call (``is_causal``, GQA) with only the cuDNN, resp. flash, backend
  enabled. Ideal speedup = dense FLOPs / sparse FLOPs, at 4 * D FLOPs per visible (query, key) pair.
* Decode of one token after ``L``. Sparse, one CUDA graph: local heads over their ``S + W`` ring
  slots (``impl="flex"``, Triton decode kernel) on a side stream, overlapping the retrieval heads
  through ``topp_attention(impl="triton")`` over the ``L`` cached keys (as the static decode of
  :class:`rtpurbo.cache.HeadwiseCache` runs them; ``sparse_serial_us``: one after the other).
  Dense: SDPA over every head's ``L`` keys (also a CUDA graph). Ideal speedup = dense bytes / sparse bytes, bytes = K/V read (dense:
  all heads x L; sparse: local heads x (S + W) + retrieval heads x selected keys) plus, on the
  sparse side where it selects, the indexer keys the selection scores (R x L x 16, bf16); the steps over
  every key (``top_p = 1``: no selection) read no indexer keys. Key positions (int64, shared by the heads)
  and the selection's scores are not counted. The same step also runs as
  :func:`rtpurbo.ops.triton.decode_roles.two_role_decode` (both kinds of heads in one launch and one combine:
  ``sparse_one_us`` after the selection, ``sparse_all_one_us`` over every key, the step below the seqlen
  threshold), each with its share of the bytes ceiling. The retrieval heads' selection alone is
  timed both ways (``triton_topp.select``: ``threshold``, the default, and ``sort``); one pass
  of the threshold search reads the R x L fp32 scores (``select_pass_bytes``).

Timing: CUDA events. Calls under a second: ``triton.testing.do_bench`` medians (L2 flushed before
every timed call) after warm-up; calls over a second (dense prefill from 512K) are timed once.
The sparse path is always run once before timing (flex compile, block-mask build).
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..cli_args import count_value, positive_int
from ..ops import api, flex, reference
from ..ops.semantics import causal_pairs, local_pairs
from ..ops.triton import topp as triton_topp
from ..cli_args import count_float
from .flags import comma_list, one_of, tokens
from .provenance import provenance

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


# --- prefill -------------------------------------------------------------------------------
def _model_layout(length: int, heads: int, dim: int) -> torch.Tensor:
    """(1, heads, L, D) as the model hands it over: a transposed view of the (1, L, heads, D) projection."""
    return _randn(1, length, heads, dim).transpose(1, 2)


def prefill_point(geom: Geometry, length: int, window: int, sinks: int, deadline: float, spot: bool,
                  block_budgets: tuple[int, ...] = (), sparse_kernels: tuple[str, ...] | None = None) -> dict:
    n_ret, group, dim = geom.n_retrieval(), geom.group, geom.head_dim
    split = n_ret * group
    q, k, v = (_model_layout(length, n, dim) for n in (geom.n_q, geom.n_kv, geom.n_kv))
    pos = torch.arange(length, device=DEVICE)[None]

    # what the model runs for a first prefill chunk (HeadwiseCache.plain_prompt): plain calls, the
    # local heads' plan built once (every layer of a forward shares it), retrieval heads on cuDNN
    plan = api.plan(pos, pos, window=window, sinks=sinks, plain=True, impl="flex")

    def local(out=None):
        return api.attention(q[:, split:], k[:, n_ret:], v[:, n_ret:], pos, pos, window=window, sinks=sinks,
                             impl="flex", plain=True, plan=plan, out=out)

    def sparse():
        return _merged_layer(q, split, lambda: api.attention(q[:, :split], k[:, :n_ret], v[:, :n_ret], pos, pos,
                                                             impl="flex", plain=True), local)

    dense_flops, sparse_flops = prefill_flops(geom, length, window, sinks)
    row = dict(phase="prefill", geometry=geom.name, L=length, retrieval_kv_heads=n_ret, window=window, sinks=sinks,
               dense_flops=dense_flops, sparse_flops=sparse_flops, ideal_speedup=dense_flops / sparse_flops)
    out = sparse()  # compile, outside the timing
    if spot:
        row["spot_rel_err"] = _prefill_spot_check(q, k, v, out, split, n_ret, window, sinks)
    del out
    row["sparse_ms"] = time_ms(sparse)
    row["local_ms"] = time_ms(local)
    row["local_tflops"] = prefill_flops(geom, length, window, sinks, local_only=True)[1] / row["local_ms"] / 1e9
    for budget in block_budgets:  # retrieval heads' sparse prefill, at most ``budget`` chosen key blocks per query block
        for kernel in sparse_kernels or (flex.sparse_prefill_kernel(),):
            previous = flex.set_sparse_prefill_kernel(kernel)
            try:
                row.update(_sparse_prefill_timing(q, k, v, pos, split, n_ret, budget, sinks, local,
                                                  "" if kernel == "flex" else f"_{kernel}"))
            finally:
                flex.set_sparse_prefill_kernel(previous)
    torch.cuda.empty_cache()
    for name in DENSE_BACKENDS:
        estimate = dense_flops / _EXPECTED_TFLOPS[name]
        key = f"{name}_ms"
        _measure(row, key, lambda: time_ms(_dense(name, q, k, v, True, row, key)), estimate * (1 if estimate > 1 else 4), deadline)
    return _prefill_rates(row)


def _merged_layer(q: torch.Tensor, split: int, retrieval, local) -> torch.Tensor:
    """The layer's attention as the model runs it: the local heads write straight into the (1, L, Hq, D) output
    (``local(out=...)``), the retrieval heads' result is copied in (``SparseAttention.merged_output`` and
    ``merge_heads``). Returns it as (1, Hq, L, D)."""
    merged = q.new_empty(q.shape[0], q.shape[2], q.shape[1], q.shape[3]).transpose(1, 2)
    local(out=merged[:, split:])
    merged[:, :split].copy_(retrieval())
    return merged


def _sparse_prefill_timing(q, k, v, pos, split: int, n_ret: int, budget: int, sinks: int, local, suffix: str = ""
                           ) -> dict:
    """The layer with the retrieval heads on a block-sparse prefill: random 16-d indexer vectors score the
    blocks almost evenly, so top-p 0.999 keeps nearly every candidate and ``budget`` (max_blocks) decides
    how many; the sink block and a 512-token band come on top. Times include the block selection. The call is
    the model's for an unpadded prompt (``aligned``: its slots are already blocks of positions, so no layout
    gathers), on the kernels :func:`rtpurbo.ops.flex.set_sparse_prefill_kernel` chose (keys ``sparse_b{budget}`` +
    ``suffix``)."""
    length = q.shape[2]
    q_idx, k_idx = _randn(1, n_ret, length, INDEX_DIM), _randn(1, n_ret, length, INDEX_DIM)
    kept = {}

    def retrieval():
        out, kept["blocks"], kept["seen"] = api.sparse_prefill(
            q[:, :split], k[:, :n_ret], v[:, :n_ret], pos, pos, q_idx, k_idx, top_p=0.999, max_blocks=budget,
            sinks=sinks, band=512, impl="flex", aligned=True)
        return out

    layer = lambda: _merged_layer(q, split, retrieval, local)  # noqa: E731
    layer()
    ms = time_ms(layer)
    name = f"sparse_b{budget}{suffix}"
    return {f"{name}_ms": ms, f"{name}_retrieval_ms": time_ms(retrieval),
            f"{name}_kept": kept["blocks"].item() / max(1, kept["seen"].item())}


def profile_prefill(geom: Geometry, length: int, window: int, sinks: int, calls: int = 5) -> dict:
    """``torch.profiler`` over ``calls`` sparse prefill layers at ``length`` (after a warm-up): wall time
    against the summed kernel time (``busy_fraction``), kernels per layer, top operators."""
    from .decode_profile import profile

    n_ret, group, dim = geom.n_retrieval(), geom.group, geom.head_dim
    split = n_ret * group
    q, k, v = (_model_layout(length, n, dim) for n in (geom.n_q, geom.n_kv, geom.n_kv))
    pos = torch.arange(length, device=DEVICE)[None]
    plan = api.plan(pos, pos, window=window, sinks=sinks, plain=True, impl="flex")

    def layer():
        return _merged_layer(
            q, split, lambda: api.attention(q[:, :split], k[:, :n_ret], v[:, :n_ret], pos, pos, impl="flex", plain=True),
            lambda out: api.attention(q[:, split:], k[:, n_ret:], v[:, n_ret:], pos, pos, window=window, sinks=sinks,
                                      impl="flex", plain=True, plan=plan, out=out))

    layer()
    torch.cuda.synchronize()
    run = lambda: _once_ms(lambda: [layer() for _ in range(calls)])  # noqa: E731
    return dict(phase="prefill-profile", geometry=geom.name, L=length, calls=calls, **profile(run, calls, True))


def _prefill_rates(row: dict) -> dict:
    row["sparse_tflops"] = row["sparse_flops"] / row["sparse_ms"] / 1e9
    for name in DENSE_BACKENDS:
        ms = row.get(f"{name}_ms")
        row[f"{name}_tflops"] = None if ms is None else row["dense_flops"] / ms / 1e9
        row[f"speedup_vs_{name}"] = None if ms is None else ms / row["sparse_ms"]
    cudnn = row["speedup_vs_cudnn"]
    row["pct_of_ideal_vs_cudnn"] = None if cudnn is None else 100 * cudnn / row["ideal_speedup"]
    return row


def _prefill_spot_check(q, k, v, out, split, n_ret, window, sinks, n: int = 8) -> dict:
    """Relative error vs the fp32 reference on the first and last ``n`` queries, per role."""
    length = q.shape[2]
    rows = torch.cat([torch.arange(n), torch.arange(length - n, length)]).to(DEVICE)
    pos = torch.arange(length, device=DEVICE)[None]
    errors = {}
    for role, heads, kv, win, snk in (("retrieval", slice(0, split), slice(0, n_ret), None, 0),
                                      ("local", slice(split, None), slice(n_ret, None), window, sinks)):
        ref = reference.attention(q[:, heads][:, :, rows].float(), k[:, kv].float(), v[:, kv].float(), rows[None], pos,
                                  window=win, sinks=snk)
        got = out[:, heads][:, :, rows].float()
        errors[role] = ((got - ref).norm() / ref.norm()).item()
    return errors


# --- decode --------------------------------------------------------------------------------
def _ring_positions(length: int, window: int, sinks: int) -> torch.Tensor:
    """(1, S + W) positions of a local head's cache after ``length`` tokens (slot = S + (p - S) % W)."""
    pos = torch.full((sinks + window,), -1, dtype=torch.long)
    pos[: min(sinks, length)] = torch.arange(min(sinks, length))
    recent = torch.arange(max(sinks, length - window), length)
    pos[sinks + (recent - sinks) % window] = recent
    return pos.to(DEVICE)[None]


def decode_point(geom: Geometry, length: int, window: int, sinks: int, budget: str | int, deadline: float, spot: bool,
                 index_scale: float = 1.0) -> dict:
    n_ret, group, dim = geom.n_retrieval(), geom.group, geom.head_dim
    split, n_local = n_ret * group, geom.n_kv - n_ret
    q = _randn(1, geom.n_q, 1, dim)
    k, v = _randn(1, geom.n_kv, length, dim), _randn(1, geom.n_kv, length, dim)  # dense cache; retrieval heads first
    ring_k, ring_v = _randn(1, n_local, sinks + window, dim), _randn(1, n_local, sinks + window, dim)
    ring_pos = _ring_positions(length, window, sinks)
    q_idx, k_idx = _randn(1, n_ret, 1, INDEX_DIM), _randn(1, n_ret, length, INDEX_DIM) * index_scale
    q_pos, k_pos = torch.full((1, 1), length - 1, device=DEVICE), torch.arange(length, device=DEVICE)[None]
    tokens = dict(min_tokens=MIN_TOKENS, max_tokens=None) if budget == "top-p" else dict(min_tokens=budget, max_tokens=budget)
    topp = dict(top_p=TOP_P, sinks=sinks, recent=RECENT, **tokens)

    def local():
        return api.attention(q[:, split:], ring_k, ring_v, q_pos, ring_pos, window=window, sinks=sinks, impl="flex")

    def retrieval():
        return api.topp_attention(q[:, :split], k[:, :n_ret], v[:, :n_ret], q_pos, k_pos, q_idx, k_idx, **topp, impl="triton")

    def retrieval_all():  # below the seqlen threshold: every key, no selection
        return api.topp_attention(q[:, :split], k[:, :n_ret], v[:, :n_ret], q_pos, k_pos, q_idx, k_idx,
                                  **dict(topp, top_p=1.0), impl="triton")

    def sparse_serial():
        return torch.cat([retrieval()[0], local()], dim=1)

    side = torch.cuda.Stream(DEVICE)

    def overlapped(retrieval_step):  # as HeadwiseCache's static decode runs it: the local heads on a side stream
        main = torch.cuda.current_stream(DEVICE)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            local_out = local()
        retrieval_out = retrieval_step()[0]
        main.wait_stream(side)
        return torch.cat([retrieval_out, local_out], dim=1)

    sparse = lambda: overlapped(retrieval)  # noqa: E731

    from ..ops.triton import decode_roles  # Triton: imported where the GPU path runs, not with the CLI

    def one_launch(selecting: bool):  # as HeadwiseCache's static decode runs it by default: both roles in one launch
        chosen = {}
        if selecting:
            selection = triton_topp.select(q_idx, k_idx, q_pos, k_pos, **topp)
            chosen = dict(index=selection.order, n_index=selection.n_keep, always=selection.always, skip_sinks=sinks,
                          skip_recent=RECENT)
        return decode_roles.two_role_decode(q[:, :split], k[:, :n_ret], v[:, :n_ret], k_pos, q[:, split:], ring_k, ring_v,
                                            ring_pos, q_pos, scale=dim**-0.5, window=window, sinks=sinks, **chosen)[0]

    out, counts = retrieval()
    selected = counts.float().mean().item()
    dense_bytes, sparse_bytes = decode_bytes(geom, length, window, sinks, selected)
    row = dict(phase="decode", geometry=geom.name, L=length, budget=budget, index_scale=index_scale, retrieval_kv_heads=n_ret, selected=selected,
               top_p=TOP_P, recent=RECENT, dense_bytes=dense_bytes, sparse_bytes=sparse_bytes,
               ideal_speedup=dense_bytes / sparse_bytes)
    if spot:
        row["spot_rel_err"] = _decode_spot_check(q, k, v, ring_k, ring_v, ring_pos, q_pos, k_pos, q_idx, k_idx, topp,
                                                 out, counts, local(), split, n_ret, window, sinks)
    row["sparse_us"], row["sparse_serial_us"], row["local_us"] = graph_us(sparse), graph_us(sparse_serial), graph_us(local)
    row["retrieval_us"] = graph_us(lambda: retrieval()[0])
    row["retrieval_all_us"] = graph_us(lambda: retrieval_all()[0])  # the same heads without selection
    row["sparse_all_us"] = graph_us(lambda: overlapped(retrieval_all))  # the step below the seqlen threshold
    row["sparse_one_us"] = graph_us(lambda: one_launch(True))
    row["sparse_all_one_us"] = graph_us(lambda: one_launch(False))  # below the seqlen threshold
    row["one_launch_rel_err"] = dict(select=_rel_err(one_launch(True), sparse()), all=_rel_err(
        one_launch(False), overlapped(retrieval_all)))
    row["sparse_all_bytes"] = decode_bytes(geom, length, window, sinks, None)[1]  # every key, no indexer keys
    row["select_pass_bytes"] = n_ret * length * 4
    for method in triton_topp.METHODS:
        row[f"select_{method}_us"] = graph_us(lambda m=method: triton_topp.select(q_idx, k_idx, q_pos, k_pos, **topp, method=m).n_keep)
    for name in DENSE_BACKENDS:
        key = f"{name}_us"
        _measure(row, key, lambda: graph_us(_dense(name, q, k, v, False, row, key)), 1.0, deadline)
    return _decode_rates(row)


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """Relative error of the one-launch step's (B, 1, Hq * D) output against the two-launch (B, Hq, 1, D) one."""
    want = want.transpose(1, 2).reshape(got.shape).float()
    return ((got.float() - want).norm() / want.norm()).item()


def _decode_rates(row: dict) -> dict:
    """Bandwidths, speedups and the share of the bytes ceiling (the faster dense backend's rate applied to the
    step's bytes) of every step variant: with selection (``sparse``, ``sparse_one``) and over every key
    (``sparse_all``, ``sparse_all_one``: the steps below the seqlen threshold)."""
    row["sparse_gbps"] = row["sparse_bytes"] / row["sparse_us"] / 1e3
    best = None
    for name in DENSE_BACKENDS:
        us = row.get(f"{name}_us")
        row[f"{name}_gbps"] = None if us is None else row["dense_bytes"] / us / 1e3
        row[f"speedup_vs_{name}"] = None if us is None else us / row["sparse_us"]
        best = us if best is None or (us is not None and us < best) else best
    row["pct_of_ideal_vs_best_dense"] = None if best is None else 100 * best / row["sparse_us"] / row["ideal_speedup"]
    for step, nbytes in (("sparse_one", "sparse_bytes"), ("sparse_all", "sparse_all_bytes"),
                         ("sparse_all_one", "sparse_all_bytes")):
        us = row.get(f"{step}_us")
        if us is None or best is None or nbytes not in row:
            continue
        row[f"{step}_speedup_vs_best_dense"] = best / us
        row[f"{step}_pct_of_ideal"] = 100 * best / us / (row["dense_bytes"] / row[nbytes])
    return row


def _decode_spot_check(q, k, v, ring_k, ring_v, ring_pos, q_pos, k_pos, q_idx, k_idx, topp, out, counts, local_out,
                       split, n_ret, window, sinks) -> dict:
    """Relative errors vs the fp32 reference and whether the selected counts agree."""
    ref, ref_counts = reference.topp_attention(q[:, :split].float(), k[:, :n_ret].float(), v[:, :n_ret].float(),
                                               q_pos, k_pos, q_idx, k_idx, **topp)
    local_ref = reference.attention(q[:, split:].float(), ring_k.float(), ring_v.float(), q_pos, ring_pos,
                                    window=window, sinks=sinks)
    rel = lambda got, want: ((got.float() - want).norm() / want.norm()).item()
    return dict(retrieval=rel(out, ref), local=rel(local_out, local_ref), counts_match=bool(torch.equal(counts, ref_counts)))


# --- report --------------------------------------------------------------------------------
def environment() -> dict:
    """The GPU, CUDA / cuDNN, the window kernel, and :func:`.provenance.provenance` (date, command line, rtpurbo
    checkout, library versions)."""
    props = torch.cuda.get_device_properties(0)
    return dict(device=props.name, sms=props.multi_processor_count, cuda=torch.version.cuda,
                cudnn=torch.backends.cudnn.version(), window_kernel=flex.window_kernel(),
                sparse_prefill_kernel=flex.sparse_prefill_kernel(), **provenance())


def _fmt(x, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def table(rows: list[dict]) -> str:
    """Human-readable tables of prefill and decode rows."""
    lines = ["PREFILL (ms; TFLOP/s; speedups vs dense SDPA; ideal = FLOP ratio)",
             f"{'model':<15}{'L':>9}{'sparse':>10}{'local':>9}{'cuDNN':>10}{'flash':>10}{'x cuDNN':>9}{'x flash':>9}"
             f"{'ideal':>8}{'%ideal':>8}{'TF/s sp':>9}{'TF/s lo':>9}{'TF/s cu':>9}{'TF/s fl':>9}"]
    for r in (r for r in rows if r["phase"] == "prefill" and "error" not in r):
        lines.append(f"{r['geometry']:<15}{r['L']:>9}{_fmt(r['sparse_ms']):>10}{_fmt(r['local_ms']):>9}"
                     f"{_fmt(r.get('cudnn_ms')):>10}{_fmt(r.get('flash_ms')):>10}{_fmt(r['speedup_vs_cudnn']):>9}"
                     f"{_fmt(r['speedup_vs_flash']):>9}{_fmt(r['ideal_speedup']):>8}{_fmt(r['pct_of_ideal_vs_cudnn'], '.0f'):>8}"
                     f"{_fmt(r['sparse_tflops'], '.0f'):>9}{_fmt(r.get('local_tflops'), '.0f'):>9}"
                     f"{_fmt(r['cudnn_tflops'], '.0f'):>9}{_fmt(r['flash_tflops'], '.0f'):>9}")
    lines += ["", "DECODE, batch 1 (us per layer step, CUDA graphs; GB/s; ideal = bytes ratio; %ideal vs the faster dense)",
              f"{'model':<15}{'L':>9}{'budget':>8}{'selected':>10}{'sparse':>9}{'serial':>8}{'local':>8}{'retr':>8}{'r all':>8}"
              f"{'sp all':>8}{'sel thr':>8}{'sel srt':>8}{'pass MB':>8}{'cuDNN':>9}"
              f"{'flash':>9}{'x cuDNN':>9}{'x flash':>9}{'ideal':>8}{'%ideal':>8}{'GB/s sp':>9}{'GB/s cu':>9}{'GB/s fl':>9}"]
    for r in (r for r in rows if r["phase"] == "decode" and "error" not in r):
        lines.append(f"{r['geometry']:<15}{r['L']:>9}{str(r['budget']):>8}{r['selected']:>10.0f}{_fmt(r['sparse_us'], '.1f'):>9}"
                     f"{_fmt(r.get('sparse_serial_us'), '.1f'):>8}{_fmt(r['local_us'], '.1f'):>8}{_fmt(r['retrieval_us'], '.1f'):>8}"
                     f"{_fmt(r.get('retrieval_all_us'), '.1f'):>8}{_fmt(r.get('sparse_all_us'), '.1f'):>8}"
                     f"{_fmt(r.get('select_threshold_us'), '.1f'):>8}{_fmt(r.get('select_sort_us'), '.1f'):>8}"
                     f"{_fmt(r.get('select_pass_bytes', 0) / 1e6, '.1f'):>8}"
                     f"{_fmt(r.get('cudnn_us'), '.1f'):>9}"
                     f"{_fmt(r.get('flash_us'), '.1f'):>9}{_fmt(r['speedup_vs_cudnn']):>9}{_fmt(r['speedup_vs_flash']):>9}"
                     f"{_fmt(r['ideal_speedup']):>8}{_fmt(r['pct_of_ideal_vs_best_dense'], '.0f'):>8}"
                     f"{_fmt(r['sparse_gbps'], '.0f'):>9}{_fmt(r['cudnn_gbps'], '.0f'):>9}{_fmt(r['flash_gbps'], '.0f'):>9}")
    one = [r for r in rows if r["phase"] == "decode" and "error" not in r and "sparse_one_us" in r]
    if one:
        lines += ["", "DECODE STEP, both kinds of heads in one launch vs two launches on two streams (us per layer step; "
                      "%ideal: share of the bytes ceiling at the faster dense backend's rate)",
                  f"{'model':<15}{'L':>9}{'budget':>8}{'select 2':>10}{'select 1':>10}{'%ideal':>8}{'all 2':>9}"
                  f"{'all 1':>9}{'%ideal':>8}{'x dense':>9}{'err sel':>10}{'err all':>10}"]
        for r in one:
            err = r.get("one_launch_rel_err", {})
            lines.append(f"{r['geometry']:<15}{r['L']:>9}{str(r['budget']):>8}{_fmt(r['sparse_us'], '.1f'):>10}"
                         f"{_fmt(r['sparse_one_us'], '.1f'):>10}{_fmt(r.get('sparse_one_pct_of_ideal'), '.0f'):>8}"
                         f"{_fmt(r.get('sparse_all_us'), '.1f'):>9}{_fmt(r['sparse_all_one_us'], '.1f'):>9}"
                         f"{_fmt(r.get('sparse_all_one_pct_of_ideal'), '.0f'):>8}"
                         f"{_fmt(r.get('sparse_all_one_speedup_vs_best_dense')):>9}"
                         f"{_fmt(err.get('select'), '.1e'):>10}{_fmt(err.get('all'), '.1e'):>10}")
    sparse_rows = [r for r in rows if r["phase"] == "prefill" and "error" not in r and any("_b" in k for k in r)]
    if sparse_rows:
        lines += ["", "PREFILL with sparse retrieval heads (ms; kept = chosen / visible key blocks; x vs dense SDPA)"]
        for r in sparse_rows:
            for key in sorted(k for k in r if k.startswith("sparse_b") and k.endswith("_ms") and "retrieval" not in k):
                variant = key[len("sparse_b"):-len("_ms")]  # budget, then _kernel unless flex
                budget, _, kernel = variant.partition("_")
                ms = r[key]
                vs = "  ".join(f"x {name} {r[f'{name}_ms'] / ms:.2f}" for name in DENSE_BACKENDS if r.get(f"{name}_ms"))
                lines.append(f"{r['geometry']:<15}{r['L']:>9}  max {budget:>5} blocks, {kernel or 'flex':<6}: {ms:9.2f} "
                             f"ms (retrieval {r[f'sparse_b{variant}_retrieval_ms']:.2f}), kept "
                             f"{r[f'sparse_b{variant}_kept']:.1%}  {vs}")
    for r in (r for r in rows if r["phase"] == "prefill-profile" and "error" not in r):
        lines += ["", f"PREFILL PROFILE {r['geometry']} L={r['L']}: {r['wall_ms_per_step']:.2f} ms wall per layer, "
                      f"{r['device_ms_per_step']:.2f} ms of kernels ({r['busy_fraction']:.1%} busy), "
                      f"{r['kernels_per_step']:.0f} kernels, {r['ops_per_step']:.0f} aten ops"]
        lines += [f"  {t['name'][:70]:<72}{t['calls_per_step']:>6.1f}{t['self_device_us_per_step'] or 0:>12.0f} us"
                  for t in r["top"][:8]]
    notes = [f"  {r['phase']} {r['geometry']} L={r['L']} {r.get('budget', '')} {k}: {v}"
             for r in rows for k, v in r.items() if k.endswith("_note") or k in ("error", "spot_rel_err")]
    return "\n".join(lines + (["", "notes:"] + notes if notes else []))


def budget(value: str) -> str | int:
    """A decode budget: 'top-p' or a token count (2048, 2K)."""
    if value == "top-p":
        return value
    try:
        return tokens(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"a budget is top-p or a token count like 2048 or 2K, got {value!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's flags (shared by ``benchmarks/attention_bench.py`` and ``rtpurbo bench attention``)."""
    lengths = comma_list(tokens)
    parser.add_argument("--geometries", type=comma_list(one_of(list(GEOMETRIES))), default=",".join(GEOMETRIES),
                        help="comma-separated: " + ", ".join(GEOMETRIES))
    parser.add_argument("--prefill", type=lengths, default=[8192, 32768, 131072, 524288, 1048576],
                        help="prefill lengths, comma-separated (8192 or 8K)")
    parser.add_argument("--decode", type=lengths, default=[32768, 131072, 524288, 1048576],
                        help="decode context lengths, comma-separated (32768 or 32K)")
    parser.add_argument("--budgets", type=comma_list(budget), default="top-p,2048,8192",
                        help="decode budgets, comma-separated: top-p and/or fixed token counts (2048 or 2K)")
    parser.add_argument("--index-scale", type=float, default=1.0,
                        help="decode: scale of the random indexer keys. 1: indexer scores ~ N(0, 16), peaked like trained "
                             "indexers (top-p 0.9 keeps ~0.1-1 %% of 1M keys); 0.01: nearly flat, like untrained "
                             "indexers on random weights (top-p keeps most keys)")
    parser.add_argument("--window", type=tokens, default=8192)
    parser.add_argument("--sinks", type=count_value, default=4)
    parser.add_argument("--deadline-s", type=count_float, default=1e9, help="start no dense point that would end later")
    parser.add_argument("--prefill-blocks", type=comma_list(positive_int), default=[], help="also time the layer with its retrieval "
                        "heads on a sparse prefill keeping at most this many key blocks of 128 per query block")
    parser.add_argument("--sparse-prefill-kernels", type=comma_list(one_of(flex.SPARSE_PREFILL_KERNELS)), default=None,
                        help="with --prefill-blocks: time the retrieval heads' sparse prefill on each of these "
                             f"kernels, comma-separated ({', '.join(flex.SPARSE_PREFILL_KERNELS)}; default: the "
                             "current choice, RTPURBO_SPARSE_PREFILL_KERNEL, else flex)")
    parser.add_argument("--profile-prefill", type=lengths, default=[], help="also profile the sparse prefill layer at "
                        "these lengths (torch.profiler: wall vs device-busy time, kernels, top operators)")
    parser.add_argument("--window-kernel", choices=flex.WINDOW_KERNELS, default=None, help="local heads' plain "
                        "prefill kernel: rtpurbo's Triton kernel or cuDNN's band + sinks merge (default: "
                        "RTPURBO_WINDOW_KERNEL, else triton)")
    parser.add_argument("--json", dest="json_path", default=None,
                        help="also write all rows here (rewritten after every point)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser)
    run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> dict:
    """Every point of ``args``: one JSON line per point while running, then the tables, then one JSON line.

    Returns {"environment": ..., "rows": [...]}.
    """
    deadline = time.time() + args.deadline_s
    if args.window_kernel:
        flex.set_window_kernel(args.window_kernel)
    geoms = [GEOMETRIES[name] for name in args.geometries]
    budgets = args.budgets
    env = environment()
    print(json.dumps(env), flush=True)
    rows: list[dict] = []

    def record(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.json_path:
            with open(args.json_path, "w") as f:
                json.dump(dict(environment=env, rows=rows), f, indent=1)

    def attempt(phase: str, geom: Geometry, length: int, point, *point_args) -> None:
        try:
            record(point(geom, length, args.window, args.sinks, *point_args))
        except Exception as err:  # one broken point must not lose the others
            record(dict(phase=phase, geometry=geom.name, L=length, error=f"{type(err).__name__}: {str(err)[:300]}"))
        torch.cuda.empty_cache()

    torch.manual_seed(0)
    for length in args.prefill:
        for geom in geoms:
            attempt("prefill", geom, length, prefill_point, deadline, length == max(args.prefill),
                    tuple(args.prefill_blocks), tuple(args.sparse_prefill_kernels or ()))
    for length in args.profile_prefill:
        for geom in geoms:
            attempt("prefill-profile", geom, length, profile_prefill)
    for geom in geoms:
        for length in args.decode:
            for budget in budgets:
                spot = length == max(args.decode) and budget == budgets[0]
                attempt("decode", geom, length, decode_point, budget, deadline, spot, args.index_scale)
    print(table(rows))
    print(json.dumps(dict(environment=env, rows=rows)))
    return dict(environment=env, rows=rows)
