"""Sink tokens added to a window-only attention output by its log-sum-exp, as one Triton kernel.

A kernel that runs the sliding window alone (query ``i`` sees key ``j`` iff ``0 <= i - j < W``; e.g. cuDNN's
banded SDPA, :mod:`rtpurbo.ops.cudnn_window`) returns ``o`` and its log-sum-exp ``lse``. The sinks rule
(:mod:`rtpurbo.ops.semantics`) adds keys ``j < S`` to every row with ``i - j >= W``. Those rows are merged with
their sink keys exactly: with ``s_j`` the scaled scores of the sinks a row gained,

    o' = (o * e^lse + sum_j e^s_j v_j) / (e^lse + sum_j e^s_j)

(all relative to the row's largest term). Rows that gained nothing are copied unchanged. One program per
(query block, batch row x query head), fp32 arithmetic; the output can be written through a head map into a
wider layer output (as :func:`rtpurbo.ops.triton.window.window_attention` does).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

_LOG2E = tl.constexpr(1.4426950408889634)  # read by the kernel, so a constexpr


@triton.jit
def _sink_merge_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, out_ptr, out_heads_ptr,
    s_qb, s_qh, s_qm, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_ob, s_oh, s_om, s_lb, s_lh, s_lm, s_xb, s_xh, s_xm,
    n_q_heads, group, q_len, window, sinks, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, S_PAD: tl.constexpr, OUT_MAP: tl.constexpr,
    IN_PLACE: tl.constexpr,
):
    bh = tl.program_id(0)
    start_m = tl.program_id(1) * BLOCK_M
    b = (bh // n_q_heads).to(tl.int64)
    h = bh % n_q_heads
    kv = (h // group).to(tl.int64)
    out_head = h.to(tl.int64)
    if OUT_MAP:
        out_head = tl.load(out_heads_ptr + h).to(tl.int64)
    rows = start_m + tl.arange(0, BLOCK_M)
    rows64 = rows.to(tl.int64)
    offs_d = tl.arange(0, HEAD_DIM)
    in_range = rows < q_len
    no_gain = (sinks == 0) | (start_m + BLOCK_M - 1 < window)  # row i gains sink j iff i - j >= W
    if (no_gain == 0) | (IN_PLACE == 0):  # in place, a block that gains nothing is already right
        o = tl.load(o_ptr + b * s_ob + h.to(tl.int64) * s_oh + rows64[:, None] * s_om + offs_d[None, :],
                    mask=in_range[:, None], other=0.0)
        out_ptrs = out_ptr + b * s_xb + out_head * s_xh + rows64[:, None] * s_xm + offs_d[None, :]
        if no_gain:  # a copy
            tl.store(out_ptrs, o, mask=in_range[:, None])
        else:
            j = tl.arange(0, S_PAD)
            is_sink = j < tl.minimum(sinks, q_len)
            q = tl.load(q_ptr + b * s_qb + h.to(tl.int64) * s_qh + rows64[:, None] * s_qm + offs_d[None, :],
                        mask=in_range[:, None], other=0.0)
            k = tl.load(k_ptr + b * s_kb + kv * s_kh + j[:, None] * s_kn + offs_d[None, :], mask=is_sink[:, None],
                        other=0.0)
            v = tl.load(v_ptr + b * s_vb + kv * s_vh + j[:, None] * s_vn + offs_d[None, :], mask=is_sink[:, None],
                        other=0.0)
            gained = is_sink[None, :] & (rows[:, None] - j[None, :] >= window)
            s = tl.where(gained, tl.dot(q, tl.trans(k)) * qk_scale, float("-inf"))  # base 2
            lse = tl.load(lse_ptr + b * s_lb + h.to(tl.int64) * s_lh + rows64 * s_lm, mask=in_range, other=0.0)
            lse = lse * _LOG2E
            top = tl.maximum(lse, tl.max(s, 1))
            w_o = tl.math.exp2(lse - top)
            w_s = tl.math.exp2(s - top[:, None])
            merged = (o.to(tl.float32) * w_o[:, None] + tl.dot(w_s.to(v.dtype), v)) / (w_o + tl.sum(w_s, 1))[:, None]
            tl.store(out_ptrs, merged.to(out_ptr.dtype.element_ty), mask=in_range[:, None])


def sink_merge(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, lse: torch.Tensor, *, window: int, sinks: int,
    scale: float, out: torch.Tensor | None = None, out_heads: torch.Tensor | None = None, block_m: int = 64,
) -> torch.Tensor:
    """Add the sink keys to a window-only attention output.

    Args:
        q: (B, Hq, L, D) queries at positions ``0..L-1`` (any strides with a contiguous last dim), fp16 / bf16.
        k, v: (B, Hkv, L, D) their keys / values (``Hq`` a multiple of ``Hkv``); only the first ``sinks`` are read.
        o: (B, Hq, L, D) attention of each row over its window alone (``0 <= i - j < window``).
        lse: (B, Hq, L) fp32, the natural log-sum-exp of that attention's scaled scores (a trailing 1 is fine).
        out: where to write (default: ``o``, in place); with ``out_heads`` (Hq,) integer indices on q's device,
            query head ``h`` goes to ``out[:, out_heads[h]]`` (distinct; not checked on the device).
    Returns:
        out (B, Hq or H_out, L, D).
    """
    batch, n_q, length, dim = q.shape
    lse = lse.reshape(batch, n_q, length) if lse.dim() == 4 else lse
    if (o.shape != q.shape or k.shape != v.shape or k.shape[0] != batch or k.shape[2] != length or k.shape[3] != dim
            or n_q % k.shape[1] or lse.shape != q.shape[:3] or lse.dtype != torch.float32):
        raise ValueError(f"sink_merge needs q, o (B, Hq, L, D), k, v (B, Hkv, L, D) and an fp32 lse (B, Hq, L); got "
                         f"q{tuple(q.shape)}, k{tuple(k.shape)}, v{tuple(v.shape)}, o{tuple(o.shape)}, "
                         f"lse{tuple(lse.shape)} {lse.dtype}")
    if dim < 16 or dim & (dim - 1) or any(t.stride(-1) != 1 for t in (q, k, v, o)):
        raise ValueError(f"sink_merge needs a power-of-two head dim >= 16 and contiguous last dims; got {dim}")
    if window < 1 or sinks < 0:
        raise ValueError(f"window must be >= 1 and sinks >= 0, got window={window}, sinks={sinks}")
    out = o if out is None else out
    if out_heads is None and out.shape != q.shape:
        raise ValueError(f"out must be {tuple(q.shape)} without out_heads, got {tuple(out.shape)}")
    if out_heads is not None and (out_heads.shape != (n_q,) or out_heads.is_floating_point()
                                  or out.shape[:1] + out.shape[2:] != q.shape[:1] + q.shape[2:]):
        raise ValueError(f"out_heads needs {n_q} integer head indices and out (B, H_out, L, D); got "
                         f"{tuple(out_heads.shape)} {out_heads.dtype}, out{tuple(out.shape)}")
    s_pad = max(16, triton.next_power_of_2(max(sinks, 1)))
    grid = (batch * n_q, triton.cdiv(length, block_m))
    _sink_merge_kernel[grid](
        q, k, v, o, lse, out, out if out_heads is None else out_heads, *q.stride()[:3], *k.stride()[:3],
        *v.stride()[:3], *o.stride()[:3], *lse.stride()[:3], *out.stride()[:3], n_q, n_q // k.shape[1], length,
        window, sinks, scale * _LOG2E.value, HEAD_DIM=dim, BLOCK_M=block_m, S_PAD=s_pad, OUT_MAP=out_heads is not None,
        IN_PLACE=out is o, num_warps=4,
    )
    return out
