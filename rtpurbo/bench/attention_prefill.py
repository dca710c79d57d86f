"""Prefill half of the attention-layer benchmark (:mod:`rtpurbo.bench.attention`).

* Prefill of ``L`` tokens. Sparse: both roles through ``ops.api.attention(impl="flex")`` plus the
  head merge. Dense: one SDPA call (``is_causal``, GQA) with only the cuDNN, resp. flash, backend
  enabled. Ideal speedup = dense FLOPs / sparse FLOPs, at 4 * D FLOPs per visible (query, key) pair.
* Optionally the retrieval heads on a block-sparse prefill (at most ``budget`` key blocks per query block), and a
  ``torch.profiler`` view of the sparse layer (:func:`profile_prefill`).

The sparse path is always run once before timing (flex compile, block-mask build).
"""
from __future__ import annotations

import torch

from ..ops import api, flex, reference
from .attention_common import (_EXPECTED_TFLOPS, DENSE_BACKENDS, DEVICE, INDEX_DIM, Geometry, _dense, _measure, _once_ms,
                               _randn, prefill_flops, time_ms)


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
