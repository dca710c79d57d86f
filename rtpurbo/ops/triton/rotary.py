"""Rotary position embedding of a layer's queries and keys in one launch (the rotate-half layout of every family
:mod:`rtpurbo.families` lists): same contract as :func:`rtpurbo.ops.reference.rotary`.

transformers' ``apply_rotary_pos_emb`` launches five elementwise kernels per tensor (``x * cos``, the negation and
concatenation of ``rotate_half``, ``* sin``, the sum), ten per layer; in a graphed decode step each is a launch of
a few microseconds on the critical path of every layer. Here one program per (batch row, token, block of heads)
rotates its heads in fp32 and rounds once, so the result is the exact rotation rounded to the input's dtype, where
transformers rounds after each of its three operations.

Shapes (checked by :func:`rtpurbo.ops.api.rotary`): q (B, Hq, L, D), k (B, Hkv, L, D), any strides; cos, sin
(B, L, D) (the model's rotary embedding, any float dtype and strides). The outputs keep the inputs' strides
(``torch.empty_like``). D even, any size (lanes past it, up to the next power of two, are masked).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

HEADS_PER_PROGRAM = 16


def available() -> bool:
    """True when a CUDA device is present (this module imports only with triton)."""
    return torch.cuda.is_available()


@triton.jit
def _rotate_heads(x_ptr, o_ptr, b, l, h0, n_heads, sxb, sxh, sxl, sxd, sob, soh, sol, sod, cos, sin, d, partner,
                  sign, d_ok, H_BLOCK: tl.constexpr):
    """Heads ``h0 .. h0 + H_BLOCK - 1`` (those below ``n_heads``) of row ``b``, token ``l``: x * cos + rotate_half(x)
    * sin, where rotate_half(x)[d] = sign[d] * x[partner[d]]."""
    h = h0 + tl.arange(0, H_BLOCK)
    ok = (h < n_heads)[:, None] & d_ok[None, :]
    base = x_ptr + b * sxb + l * sxl + h.to(tl.int64)[:, None] * sxh
    x = tl.load(base + d[None, :] * sxd, mask=ok, other=0.0).to(tl.float32)
    x_partner = tl.load(base + partner[None, :] * sxd, mask=ok, other=0.0).to(tl.float32)
    out = x * cos[None, :] + sign[None, :] * x_partner * sin[None, :]
    dest = o_ptr + b * sob + l * sol + h.to(tl.int64)[:, None] * soh + d[None, :] * sod
    tl.store(dest, out.to(o_ptr.dtype.element_ty, fp_downcast_rounding="rtne"), mask=ok)


@triton.jit
def _rotary_kernel(
    q_ptr, k_ptr, cos_ptr, sin_ptr, qo_ptr, ko_ptr, n_q, n_k, length, head_dim,
    s_qb, s_qh, s_ql, s_qd, s_kb, s_kh, s_kl, s_kd, s_cb, s_cl, s_cd, s_sb, s_sl, s_sd,
    s_qob, s_qoh, s_qol, s_qod, s_kob, s_koh, s_kol, s_kod,
    H_BLOCK: tl.constexpr, D_PAD: tl.constexpr,
):
    """Program (row, block): token ``row % length`` of batch row ``row // length``; blocks of ``H_BLOCK`` heads, the
    queries' first, then the keys'."""
    row = tl.program_id(0)
    block = tl.program_id(1)
    b = (row // length).to(tl.int64)
    l = (row % length).to(tl.int64)
    d = tl.arange(0, D_PAD)
    d_ok = d < head_dim
    half = head_dim // 2
    partner = tl.where(d < half, d + half, d - half)
    sign = tl.where(d < half, -1.0, 1.0)
    cos = tl.load(cos_ptr + b * s_cb + l * s_cl + d * s_cd, mask=d_ok, other=0.0).to(tl.float32)
    sin = tl.load(sin_ptr + b * s_sb + l * s_sl + d * s_sd, mask=d_ok, other=0.0).to(tl.float32)
    q_blocks = tl.cdiv(n_q, H_BLOCK)
    if block < q_blocks:
        _rotate_heads(q_ptr, qo_ptr, b, l, block * H_BLOCK, n_q, s_qb, s_qh, s_ql, s_qd, s_qob, s_qoh, s_qol, s_qod,
                      cos, sin, d, partner, sign, d_ok, H_BLOCK)
    else:
        _rotate_heads(k_ptr, ko_ptr, b, l, (block - q_blocks) * H_BLOCK, n_k, s_kb, s_kh, s_kl, s_kd, s_kob, s_koh,
                      s_kol, s_kod, cos, sin, d, partner, sign, d_ok, H_BLOCK)


def rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, k) rotated (shapes and layout: the module docstring, as :func:`rtpurbo.ops.api.rotary` checks them). One
    launch; CUDA-graph capturable."""
    batch, n_q, length, head_dim = q.shape
    n_k = k.shape[1]
    q_out, k_out = torch.empty_like(q), torch.empty_like(k)
    if batch * length == 0 or n_q + n_k == 0:
        return q_out, k_out
    h_block = min(HEADS_PER_PROGRAM, triton.next_power_of_2(max(n_q, n_k)))
    blocks = triton.cdiv(n_q, h_block) + triton.cdiv(n_k, h_block)
    _rotary_kernel[(batch * length, blocks)](
        q, k, cos, sin, q_out, k_out, n_q, n_k, length, head_dim,
        *q.stride(), *k.stride(), *cos.stride(), *sin.stride(), *q_out.stride(), *k_out.stride(),
        H_BLOCK=h_block, D_PAD=max(16, triton.next_power_of_2(head_dim)),
        num_warps=4 if h_block * head_dim > 2048 else 2,
    )
    return q_out, k_out
