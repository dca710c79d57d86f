"""Decode half of the attention-layer benchmark (:mod:`rtpurbo.bench.attention`).

* Decode of one token after ``L``. Sparse, one CUDA graph: local heads over their ``S + W`` ring
  slots on a side stream (the Triton decode kernel, in the launch shape of
  :func:`rtpurbo.ops.triton.decode_roles.ring_beside_selection`, forked once the index scores are launched),
  overlapping the retrieval heads through ``topp_attention(impl="triton")`` over the ``L`` cached keys (as the static
  decode of :class:`rtpurbo.cache.HeadwiseCache` runs them; ``sparse_serial_us``: one after the other, ``local_us``: the
  local heads alone through ``impl="flex"``).
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
"""
from __future__ import annotations

import torch

from ..cache_layer import STATIC_POSITIONS
from ..ops import api, reference
from ..ops.triton import topp as triton_topp
from .attention_common import (DENSE_BACKENDS, DEVICE, INDEX_DIM, MIN_TOKENS, RECENT, TOP_P, Geometry, _dense, _measure,
                               _randn, decode_bytes, graph_us)


def _ring_positions(length: int, window: int, sinks: int) -> torch.Tensor:
    """(1, S + W) positions of a local head's cache after ``length`` tokens (slot = S + (p - S) % W)."""
    pos = torch.full((sinks + window,), -1, dtype=torch.long)
    pos[: min(sinks, length)] = torch.arange(min(sinks, length))
    recent = torch.arange(max(sinks, length - window), length)
    pos[sinks + (recent - sinks) % window] = recent
    return pos.to(DEVICE)[None]


def decode_point(geom: Geometry, length: int, window: int, sinks: int, budget: str | int, deadline: float, spot: bool,
                 index_scale: float = 1.0) -> dict:
    from ..ops.triton import decode_roles  # Triton: imported where the GPU path runs, not with the CLI

    n_ret, group, dim = geom.n_retrieval(), geom.group, geom.head_dim
    split, n_local = n_ret * group, geom.n_kv - n_ret
    q = _randn(1, geom.n_q, 1, dim)
    k, v = _randn(1, geom.n_kv, length, dim), _randn(1, geom.n_kv, length, dim)  # dense cache; retrieval heads first
    ring_k, ring_v = _randn(1, n_local, sinks + window, dim), _randn(1, n_local, sinks + window, dim)
    ring_pos = _ring_positions(length, window, sinks)
    q_idx, k_idx = _randn(1, n_ret, 1, INDEX_DIM), _randn(1, n_ret, length, INDEX_DIM) * index_scale
    q_pos = torch.full((1, 1), length - 1, device=DEVICE)
    k_pos = torch.arange(length, device=DEVICE, dtype=STATIC_POSITIONS)[None]  # as a static-decode cache holds them
    tokens = dict(min_tokens=MIN_TOKENS, max_tokens=None) if budget == "top-p" else dict(min_tokens=budget, max_tokens=budget)
    topp = dict(top_p=TOP_P, sinks=sinks, recent=RECENT, **tokens)

    def local():
        return api.attention(q[:, split:], ring_k, ring_v, q_pos, ring_pos, window=window, sinks=sinks, impl="flex")

    def local_beside():  # beside a selection, in the launch shape HeadwiseCache's static decode gives it there
        return decode_roles.ring_beside_selection(q[:, split:], ring_k, ring_v, ring_pos, q_pos, scale=dim**-0.5,
                                                  window=window, sinks=sinks)

    def retrieval(after_scores=None):
        return api.topp_attention(q[:, :split], k[:, :n_ret], v[:, :n_ret], q_pos, k_pos, q_idx, k_idx, **topp,
                                  impl="triton", after_scores=after_scores)

    def retrieval_all(after_scores=None):  # below the seqlen threshold: every key, no selection
        return api.topp_attention(q[:, :split], k[:, :n_ret], v[:, :n_ret], q_pos, k_pos, q_idx, k_idx,
                                  **dict(topp, top_p=1.0), impl="triton", after_scores=after_scores)

    def sparse_serial():
        return torch.cat([retrieval()[0], local()], dim=1)

    side = torch.cuda.Stream(DEVICE)

    def overlapped(retrieval_step, local_step=local, fork_after_scores=False):
        """As HeadwiseCache's static decode: local heads on a side stream, forked before the retrieval heads or, where
        they select, once their index scores are launched."""
        main = torch.cuda.current_stream(DEVICE)
        local_out = []

        def fork():
            side.wait_stream(main)
            with torch.cuda.stream(side):
                local_out.append(local_step())
        if not fork_after_scores:
            fork()
        retrieval_out = retrieval_step(after_scores=fork if fork_after_scores else None)[0]
        main.wait_stream(side)
        return torch.cat([retrieval_out, local_out[0]], dim=1)

    sparse = lambda: overlapped(retrieval, local_beside, fork_after_scores=True)  # noqa: E731

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
