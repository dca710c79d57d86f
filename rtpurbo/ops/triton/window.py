"""Prefill attention of local (window + sinks) heads, GQA-native, as one Triton kernel.

Same contract as :func:`rtpurbo.ops.reference.attention` with ``window=W, sinks=S`` (query position
``i`` sees key position ``j`` iff ``j <= i`` and (``i - j < W`` or ``j < S``),
:mod:`rtpurbo.ops.semantics`) for chunks whose rows all hold the same positions, in two key layouts:

* plain: queries and keys are positions ``0..L-1`` (a first prefill chunk without padding);
* a later chunk (``chunk_start=P``): queries are positions ``P..P+L-1``; the keys are the S sinks,
  then positions ``P-W..P-1`` in order (a head-wise cache's ring, unrolled), then the chunk's own.
  Key slot ``j`` holds position ``j`` below S and ``j + P - W - S`` above; slots of the ring part
  whose position is below S (or 0) hold nothing and are never read as keys.

One program per (query block of ``BLOCK_M`` rows, batch row x query head); it reads the K / V of
its KV head (``h // G``) in place, any strides with a contiguous last dim (the model's
``(B, L, H, D)`` projections, transposed, are read without a copy). Its keys, in blocks of
``BLOCK_N``, in this order:

1. the sink blocks below the window's first block (mask: the slot is a sink);
2. the window's lower edge, where some rows already lost a key (the full rule as a mask);
3. the blocks every row sees whole: no mask at all (``W / BLOCK_N - BLOCK_M / BLOCK_N`` blocks
   per program for a long sequence; the masked ones are ``2 BLOCK_M / BLOCK_N + 1`` at most);
4. the diagonal (the full rule as a mask).

Softmax in base 2, online, fp32 accumulators. ``tma=True`` loads and stores through on-device
tensor descriptors (Hopper's bulk copies; out-of-range rows read as zeros) and ``warp_specialize``
splits the loop into producer / consumer warps where Triton supports it; ``tma=False`` uses plain
pointer loads. Every launch setting computes the same function; :func:`default_launch` picks one by
head dim, from the sweep of ``benchmarks/window_kernels.py``.

No host sync, no data-dependent shapes: integer arguments only change the compiled variant by
Triton's divisibility specialisation, so lengths never trigger a recompile beyond those few.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

_LOG2E = 1.4426950408889634


@dataclass(frozen=True)
class WindowLaunch:
    """Tile shape and pipeline of :func:`window_attention` (all compute the same function)."""

    block_m: int = 128
    block_n: int = 128
    num_warps: int = 8
    num_stages: int = 3
    tma: bool = True
    warp_specialize: bool = False


def default_launch(head_dim: int) -> WindowLaunch:
    """The fastest setting measured on an H200 for head dim 128 (128 x 128 tiles, 8 warps, 3 stages, TMA), with
    64-key tiles and 2 stages for head dims over 128 so that the stages fit in shared memory.

    Slower there (triton 3.6; ``benchmarks/results/llama-3.1-8b_h200_2026-12-04_window-launches-search-tail.md``):
    warp specialisation (within 1-2 %), 256-row tiles of 16 warps (-11 to -13 %), 64-key tiles of 4 warps (-14 %),
    issuing the next key block's ``q k^T`` before the softmax (-14 % at best: two live score tiles), 64-row tiles
    with two programs per SM (-8 to -41 %) and part of the exponentials as a polynomial on the FMA units (-2 to -15 %;
    ``llama-3.1-8b_h200_2026-12-04_cudnn-window.md``). cuDNN's banded SDPA is faster by 2-7 %
    (:mod:`rtpurbo.ops.cudnn_window`)."""
    if head_dim > 128:
        return WindowLaunch(block_m=128, block_n=64, num_warps=8, num_stages=2)
    return WindowLaunch(block_m=128, block_n=128, num_warps=8, num_stages=3)


@triton.jit
def _attend_blocks(acc, l_i, m_i, q, k_desc, v_desc, k_ptrs, v_ptrs, s_kn, s_vn, q_pos, lo, hi, n_keys,
                   window, sinks, sink_slots, key_shift, qk_scale,
                   MASK: tl.constexpr, BLOCK_N: tl.constexpr, TMA: tl.constexpr, WARP_SPEC: tl.constexpr):
    """Online-softmax update of (acc (M, D), l_i (M,), m_i (M,)) over the key slots [lo, hi), q_pos (M,) the
    rows' positions.

    MASK 0: every key visible; 1: sink slots only (``j < S``); 2: the full rule (window edge, diagonal)."""
    offs_n = tl.arange(0, BLOCK_N)
    for start in tl.range(lo, hi, BLOCK_N, warp_specialize=WARP_SPEC):
        start = tl.multiple_of(start, BLOCK_N)
        if TMA:
            k = k_desc.load([start, 0])
            v = v_desc.load([start, 0])
        else:
            ok = (start + offs_n) < n_keys
            k = tl.load(k_ptrs + start * s_kn, mask=ok[:, None], other=0.0)
            v = tl.load(v_ptrs + start * s_vn, mask=ok[:, None], other=0.0)
        qk = tl.dot(q, tl.trans(k))  # unscaled: the scale folds into the exponent's multiply-add
        if MASK != 0:
            j = (start + offs_n)[None, :]
            if MASK == 1:
                seen = (j < sinks) & (j < n_keys)
            else:
                i = q_pos[:, None]
                kp = tl.where(j < sink_slots, j, j + key_shift)  # the key's position
                seen = ((j < n_keys) & (kp >= 0) & (kp <= i) & ((i - kp < window) | (kp < sinks))
                        & ((j < sink_slots) | (kp >= sink_slots)))  # a cached chunk's sinks once
            qk = tl.where(seen, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        m_ref = m_new
        if MASK != 0:  # a row may have seen no key yet (m = -inf): subtract 0 instead
            m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(qk * qk_scale - m_ref[:, None])
        alpha = tl.math.exp2(m_i - m_ref)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _window_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, o_heads_ptr,
    s_qb, s_qh, s_qm, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_ob, s_oh, s_om,
    n_q_heads, group, q_len, n_keys, q_start, sink_slots, key_shift, window, sinks, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TMA: tl.constexpr,
    WARP_SPEC: tl.constexpr, OUT_MAP: tl.constexpr,
):
    """One (query head, query block): heads vary fastest over the launch, so the query heads of a KV head
    run side by side and share its K / V window in L2. ``OUT_MAP``: query head h writes output head
    ``o_heads[h]``. Key slot j holds position j below ``sink_slots``, else ``j + key_shift``."""
    bh = tl.program_id(0)
    start_m = tl.program_id(1) * BLOCK_M
    b = bh // n_q_heads
    h = bh % n_q_heads
    kv = h // group
    o_head = h
    if OUT_MAP:
        o_head = tl.load(o_heads_ptr + h).to(tl.int32)
    q_base = q_ptr + b.to(tl.int64) * s_qb + h.to(tl.int64) * s_qh
    k_base = k_ptr + b.to(tl.int64) * s_kb + kv.to(tl.int64) * s_kh
    v_base = v_ptr + b.to(tl.int64) * s_vb + kv.to(tl.int64) * s_vh
    o_base = o_ptr + b.to(tl.int64) * s_ob + o_head.to(tl.int64) * s_oh
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    k_ptrs = k_base + offs_n[:, None] * s_kn + offs_d[None, :]
    v_ptrs = v_base + offs_n[:, None] * s_vn + offs_d[None, :]
    if TMA:
        q_desc = tl.make_tensor_descriptor(q_base, shape=[q_len, HEAD_DIM], strides=[s_qm, 1],
                                           block_shape=[BLOCK_M, HEAD_DIM])
        k_desc = tl.make_tensor_descriptor(k_base, shape=[n_keys, HEAD_DIM], strides=[s_kn, 1],
                                           block_shape=[BLOCK_N, HEAD_DIM])
        v_desc = tl.make_tensor_descriptor(v_base, shape=[n_keys, HEAD_DIM], strides=[s_vn, 1],
                                           block_shape=[BLOCK_N, HEAD_DIM])
        o_desc = tl.make_tensor_descriptor(o_base, shape=[q_len, HEAD_DIM], strides=[s_om, 1],
                                           block_shape=[BLOCK_M, HEAD_DIM])
        q = q_desc.load([start_m, 0])
    else:
        k_desc = None
        v_desc = None
        o_desc = None
        q = tl.load(q_base + offs_m[:, None] * s_qm + offs_d[None, :], mask=(offs_m < q_len)[:, None], other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    # key slots: [0, sink_hi) sinks, [edge_lo, full_lo) window edge, [full_lo, diag_lo) whole, then the diagonal;
    # q_first / q_last: the block's first and last query positions
    q_first = q_start + start_m
    q_last = q_first + BLOCK_M - 1
    q_pos = q_start + offs_m
    edge_lo = tl.maximum(q_first - window + 1 - key_shift, 0) // BLOCK_N * BLOCK_N
    diag_lo = tl.maximum(q_first - key_shift + 1, 0) // BLOCK_N * BLOCK_N
    full_lo = tl.maximum(tl.cdiv(q_last - window + 1 - key_shift, BLOCK_N) * BLOCK_N, edge_lo)
    full_lo = tl.maximum(full_lo, tl.cdiv(tl.maximum(sink_slots, sink_slots - key_shift), BLOCK_N) * BLOCK_N)
    full_lo = tl.minimum(full_lo, diag_lo)
    sink_hi = tl.minimum(tl.cdiv(sinks, BLOCK_N) * BLOCK_N, edge_lo)
    diag_hi = tl.minimum(q_last - key_shift + 1, n_keys)
    acc, l_i, m_i = _attend_blocks(acc, l_i, m_i, q, k_desc, v_desc, k_ptrs, v_ptrs, s_kn, s_vn, q_pos, 0, sink_hi,
                                   n_keys, window, sinks, sink_slots, key_shift, qk_scale, 1, BLOCK_N, TMA, False)
    acc, l_i, m_i = _attend_blocks(acc, l_i, m_i, q, k_desc, v_desc, k_ptrs, v_ptrs, s_kn, s_vn, q_pos, edge_lo,
                                   full_lo, n_keys, window, sinks, sink_slots, key_shift, qk_scale, 2, BLOCK_N, TMA,
                                   False)
    acc, l_i, m_i = _attend_blocks(acc, l_i, m_i, q, k_desc, v_desc, k_ptrs, v_ptrs, s_kn, s_vn, q_pos, full_lo,
                                   diag_lo, n_keys, window, sinks, sink_slots, key_shift, qk_scale, 0, BLOCK_N, TMA,
                                   WARP_SPEC)
    acc, l_i, m_i = _attend_blocks(acc, l_i, m_i, q, k_desc, v_desc, k_ptrs, v_ptrs, s_kn, s_vn, q_pos, diag_lo,
                                   diag_hi, n_keys, window, sinks, sink_slots, key_shift, qk_scale, 2, BLOCK_N, TMA,
                                   False)
    out = (acc / l_i[:, None]).to(o_ptr.dtype.element_ty)
    if TMA:
        o_desc.store([start_m, 0], out)
    else:
        tl.store(o_base + offs_m[:, None] * s_om + offs_d[None, :], out, mask=(offs_m < q_len)[:, None])


def _allocate(size: int, alignment: int, stream) -> torch.Tensor:
    """Scratch for on-device tensor descriptors (Triton asks for it at launch)."""
    return torch.empty(size, dtype=torch.int8, device="cuda" if torch.cuda.is_available() else "cpu")


def key_slots(q_len: int, window: int, sinks: int, chunk_start: int | None) -> int:
    """Key slots :func:`window_attention` expects: ``L`` for a plain prefill, ``S + W + L`` for a later chunk."""
    return q_len if chunk_start is None else sinks + window + q_len


def unsupported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, launch: WindowLaunch | None = None,
                out: torch.Tensor | None = None, n_keys: int | None = None) -> str | None:
    """Why :func:`window_attention` cannot take these tensors (None: it can). Shapes as there; ``n_keys``: the key
    slots the call's layout needs (default: q's length, a plain prefill)."""
    launch = default_launch(q.shape[-1]) if launch is None else launch
    batch, n_q, length, dim = q.shape
    n_keys = length if n_keys is None else n_keys
    if k.shape != v.shape or k.shape[0] != batch or k.shape[2] != n_keys or k.shape[3] != dim or n_q % k.shape[1]:
        return (f"it needs q (B, Hq, L, D) and k, v (B, Hkv, {n_keys}, D) with Hq % Hkv == 0; got q{tuple(q.shape)}, "
                f"k{tuple(k.shape)}, v{tuple(v.shape)}")
    if dim < 16 or dim > 256 or dim & (dim - 1):
        return f"it needs a head dim that is a power of two in [16, 256], got {dim}"
    if q.dtype not in (torch.float16, torch.bfloat16) or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"it runs fp16 / bf16; got q {q.dtype}, k {k.dtype}, v {v.dtype}"
    for name, t in {"q": q, "k": k, "v": v, "out": out}.items():
        if t is not None and (t.stride(-1) != 1 or (launch.tma and any(s * t.element_size() % 16 for s in t.stride()[:-1]))):
            return f"{name} needs a contiguous last dim (and 16-byte strides for TMA); strides {t.stride()}"
    return None


def window_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, window: int, sinks: int, scale: float,
    chunk_start: int | None = None, out: torch.Tensor | None = None, out_heads: torch.Tensor | None = None,
    launch: WindowLaunch | None = None,
) -> torch.Tensor:
    """Window + sinks attention of a prefill chunk whose rows all hold the same positions.

    Args:
        q: (B, Hq, L, D), the last dim contiguous, D a power of two in [16, 256], fp16 or bf16; ``Hq`` a multiple
            of the KV heads.
        k, v: (B, Hkv, n, D), in one of two layouts:
            * ``chunk_start`` None, a plain prefill: queries and keys are positions ``0..L-1`` (n = L);
            * ``chunk_start`` P >= S, a later chunk: queries are positions ``P..P+L-1``; the keys are the S sinks
              (positions ``0..S-1``), then the W keys of positions ``P-W..P-1`` in order (a head-wise cache's ring,
              unrolled; positions below S or 0 there are never read as keys), then the chunk's own L keys
              (n = S + W + L).
        out: optional (B, Hq, L, D) to write into (any strides with a contiguous last dim), e.g. a view of
            the layer's merged head layout; with ``out_heads``, (B, H_out, L, D).
        out_heads: optional (Hq,) integer tensor on q's device: query head ``h`` is written to
            ``out[:, out_heads[h]]`` (indices in ``[0, H_out)``, distinct; not checked on the device).
        launch: tile shape and pipeline (default: :func:`default_launch` of the head dim).
    Returns:
        out (B, Hq, L, D) in q's dtype.
    """
    launch = default_launch(q.shape[-1]) if launch is None else launch
    if out_heads is not None and (out is None or out_heads.shape != (q.shape[1],) or out_heads.is_floating_point()
                                  or out_heads.device != q.device):
        raise ValueError(f"out_heads needs an out tensor and {q.shape[1]} integer head indices on {q.device}; got "
                         f"{None if out_heads is None else (tuple(out_heads.shape), out_heads.dtype, out_heads.device)}")
    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
    elif (out.shape if out_heads is None else out.shape[:1] + out.shape[2:]) != (
            q.shape if out_heads is None else q.shape[:1] + q.shape[2:]) or out.dtype != q.dtype:
        raise ValueError(f"out must be {tuple(q.shape)} {q.dtype} (any head count with out_heads), got "
                         f"{tuple(out.shape)} {out.dtype}")
    if window < 1 or sinks < 0:
        raise ValueError(f"window must be >= 1 and sinks >= 0, got window={window}, sinks={sinks}")
    if chunk_start is not None and chunk_start < sinks:
        raise ValueError(f"a later chunk must start at or after the sinks (position >= {sinks}), got {chunk_start}")
    batch, n_q, length, dim = q.shape
    n_keys = key_slots(length, window, sinks, chunk_start)
    problem = unsupported(q, k, v, launch, out, n_keys)
    if problem is not None:
        raise ValueError(f"the Triton window kernel cannot run this: {problem}")
    # key slot j holds position j below sink_slots, else j + key_shift
    q_start, sink_slots, key_shift = (0, 0, 0) if chunk_start is None else (
        chunk_start, sinks, chunk_start - window - sinks)
    if launch.tma:
        triton.set_allocator(_allocate)
    grid = (batch * n_q, triton.cdiv(length, launch.block_m))
    _window_kernel[grid](
        q, k, v, out, out if out_heads is None else out_heads, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
        *out.stride()[:3], n_q, n_q // k.shape[1], length, n_keys, q_start, sink_slots, key_shift, window, sinks,
        scale * _LOG2E, HEAD_DIM=dim, BLOCK_M=launch.block_m, BLOCK_N=launch.block_n, TMA=launch.tma,
        WARP_SPEC=launch.warp_specialize, OUT_MAP=out_heads is not None, num_warps=launch.num_warps,
        num_stages=launch.num_stages,
    )
    return out
