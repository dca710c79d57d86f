"""GPU numerics of the fast attention backends: ``flex`` (prefill + one-query decode) and
``triton`` (top-p retrieval decode).

Every check runs on random, non-zero inputs against the fp32 reference
(:mod:`rtpurbo.ops.reference` on upcast inputs). The budget: the fast path's relative error
at bf16/fp16 is at most twice that of eager PyTorch at the same precision (the reference's
math done on the low-precision tensors in low precision: matmul, masked softmax, matmul).
Before each fast call the allocator's free memory is poisoned with NaN, so an output element
the kernel never writes shows up as NaN.
"""
from __future__ import annotations

import dataclasses
import zlib

import pytest
import torch

from rtpurbo.ops import api, flex, flex_plans, reference
from rtpurbo.ops.triton import topp as triton_topp
from rtpurbo.ops.semantics import visible

from .test_ops_threshold_interpret import CASES as SELECT_CASES
from .test_ops_threshold_interpret import check_selection, select_inputs

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="GPU backends (flex, triton top-p decode) need a CUDA device"
)

BF16, FP16 = torch.bfloat16, torch.float16


@pytest.fixture(autouse=True, scope="module")
def _many_compiled_shapes():
    """The grid compiles flex for more (dtype, head dim, GQA, batch) variants than dynamo's default 8."""
    with torch._dynamo.config.patch(recompile_limit=64):
        yield


# --- helpers ---------------------------------------------------------------------------
def _poison() -> None:
    """Fill the caching allocator's free blocks (large and small pools) with NaN."""
    big = torch.full((64 << 20,), float("nan"), device="cuda")
    small = [torch.full((1 << 17,), float("nan"), device="cuda") for _ in range(32)]
    del big, small


def _rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref.double()).norm() / ref.double().norm()).item()


def _eager(q, k, v, q_pos, k_pos, window=None, sinks=0, key_mask=None, scale=None) -> torch.Tensor:
    """Eager attention in the inputs' low precision (the error yardstick). Shapes as reference."""
    group = q.shape[1] // k.shape[1]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    mask = visible(q_pos, k_pos, window, sinks)[:, None]  # (B, 1, Lq, Lk)
    if key_mask is not None:
        mask = mask & key_mask
    mask = mask.expand(q.shape[0], k.shape[1], q.shape[2], k.shape[2]).repeat_interleave(group, dim=1)
    scores = (q @ k.repeat_interleave(group, 1).transpose(-1, -2)) * scale
    probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1).nan_to_num(0.0)
    return probs @ v.repeat_interleave(group, 1)


def _assert_budget(fast: torch.Tensor, ref: torch.Tensor, eager: torch.Tensor, what: str) -> None:
    assert not fast.isnan().any(), f"{what}: NaN in output (unwritten or invalid) for shape {tuple(fast.shape)}"
    err, err_eager = _rel(fast, ref), _rel(eager, ref)
    assert err <= 2 * err_eager + 1e-6, f"{what}: error {err:.3e} > 2 x eager {err_eager:.3e}"


def _qkv(batch, n_q, n_kv, q_len, k_len, dim, dtype):
    q = torch.randn(batch, n_q, q_len, dim, device="cuda", dtype=dtype)
    k = torch.randn(batch, n_kv, k_len, dim, device="cuda", dtype=dtype)
    v = torch.randn(batch, n_kv, k_len, dim, device="cuda", dtype=dtype)
    return q, k, v


def _positions(kind: str, batch: int, q_len: int, k_len: int, window: int | None, sinks: int):
    """(q_pos (B, Lq), k_pos (B, Lk)) for a layout kind (see PREFILL_CASES)."""
    arange = lambda n: torch.arange(n, device="cuda").repeat(batch, 1)
    if kind in ("plain", "keymask"):
        return arange(q_len), arange(k_len)
    if kind == "pad":  # left padding of row 1 (and of nothing else)
        pos = arange(q_len)
        pos[-1, :300] = -1
        pos[-1, 300:] -= 300
        return pos, pos.clone()
    if kind == "offset":  # chunked prefill: the last Lq of Lk tokens
        return arange(k_len)[:, k_len - q_len :], arange(k_len)
    if kind == "ring":  # local chunk: S sinks + ring of W (rotated, 3 empty slots) + the new chunk
        start = 5000
        ring = torch.arange(start - window, start, device="cuda").roll(start % window)
        ring[:3] = -1
        cached = torch.cat([torch.arange(sinks, device="cuda"), ring])
        new = torch.arange(start, start + q_len, device="cuda")
        return new.repeat(batch, 1), torch.cat([cached, new]).repeat(batch, 1)
    raise ValueError(kind)


# --- flex prefill -----------------------------------------------------------------------
# (name, kind, B, Lq, Lk, Hkv, G, D, window, sinks, dtype)
PREFILL_CASES = [
    ("plain-97-g1-w16", "plain", 1, 97, 97, 4, 1, 64, 16, 0, BF16),
    ("plain-97-g3-w1-s4", "plain", 2, 97, 97, 2, 3, 128, 1, 4, BF16),
    ("plain-1025-g4-w256-s4", "plain", 1, 1025, 1025, 2, 4, 64, 256, 4, BF16),
    ("plain-1025-g8-w>L", "plain", 2, 1025, 1025, 1, 8, 128, 4096, 0, BF16),
    ("plain-4096-g4-w1024-s4", "plain", 1, 4096, 4096, 2, 4, 128, 1024, 4, BF16),
    ("plain-4096-g8-full", "plain", 1, 4096, 4096, 1, 8, 128, None, 0, BF16),
    ("plain-1025-g3-full", "plain", 2, 1025, 1025, 2, 3, 64, None, 0, BF16),
    ("plain-1025-g1-w128-s4-fp16", "plain", 1, 1025, 1025, 4, 1, 128, 128, 4, FP16),
    ("plain-97-g4-full-fp16", "plain", 1, 97, 97, 2, 4, 64, None, 0, FP16),
    ("pad-1025-g4-w64-s4", "pad", 2, 1025, 1025, 2, 4, 128, 64, 4, BF16),
    ("pad-1025-g4-full", "pad", 2, 1025, 1025, 2, 4, 128, None, 0, BF16),
    ("pad-4096-g4-w1024-s4", "pad", 2, 4096, 4096, 2, 4, 128, 1024, 4, BF16),
    ("offset-513of1025-g3-w64-s4", "offset", 2, 513, 1025, 2, 3, 64, 64, 4, BF16),
    ("offset-513of1025-g8-full", "offset", 1, 513, 1025, 1, 8, 128, None, 0, BF16),
    ("ring-97-g4-w256-s4", "ring", 2, 97, 4 + 256 + 97, 2, 4, 128, 256, 4, BF16),
    ("keymask-97-g4-full", "keymask", 2, 97, 97, 2, 4, 64, None, 0, BF16),
    ("keymask-97-g3-w32-s4", "keymask", 1, 97, 97, 2, 3, 128, 32, 4, BF16),
]


@pytest.mark.parametrize("case", PREFILL_CASES, ids=[c[0] for c in PREFILL_CASES])
def test_flex_prefill_matches_reference(case):
    name, kind, batch, q_len, k_len, n_kv, group, dim, window, sinks, dtype = case
    torch.manual_seed(zlib.crc32(name.encode()))
    q, k, v = _qkv(batch, n_kv * group, n_kv, q_len, k_len, dim, dtype)
    q_pos, k_pos = _positions(kind, batch, q_len, k_len, window, sinks)
    key_mask = torch.rand(batch, n_kv, q_len, k_len, device="cuda") > 0.5 if kind == "keymask" else None
    ref = reference.attention(q.float(), k.float(), v.float(), q_pos, k_pos, window=window, sinks=sinks, key_mask=key_mask)
    eager = _eager(q, k, v, q_pos, k_pos, window, sinks, key_mask)
    _poison()
    out = api.attention(q, k, v, q_pos, k_pos, window=window, sinks=sinks, key_mask=key_mask, impl="flex")
    assert out.shape == q.shape and out.dtype == dtype
    _assert_budget(out, ref, eager, name)
    if kind == "pad":  # padding queries see nothing and must come out as exact zeros
        assert (out[-1, :, :300] == 0).all(), f"{name}: padding rows are not zero"


# (name, B, L, Hkv, G, D, window, sinks, dtype, model layout)
WINDOW_CASES = [
    ("97-g1-w16", 1, 97, 4, 1, 64, 16, 0, BF16, False),
    ("1025-g4-w256-s4-layout", 2, 1025, 2, 4, 128, 256, 4, BF16, True),
    ("4096-g4-w1024-s4", 1, 4096, 2, 4, 128, 1024, 4, BF16, False),
    ("3000-g7-w1000-s4-layout", 1, 3000, 1, 7, 128, 1000, 4, BF16, True),
    ("1025-g3-w>L", 1, 1025, 2, 3, 64, 4096, 4, BF16, False),
    ("1025-g2-w100-s200-fp16", 1, 1025, 2, 2, 128, 100, 200, FP16, False),
    ("777-g4-w8-s0-fp16", 1, 777, 1, 4, 64, 8, 0, FP16, True),
    ("1500-g2-w600-s4-d256", 1, 1500, 2, 2, 256, 600, 4, BF16, True),
]


@pytest.mark.parametrize("case", WINDOW_CASES, ids=[c[0] for c in WINDOW_CASES])
@pytest.mark.parametrize("tma", [True, False], ids=["tma", "pointers"])
def test_triton_window_kernel_matches_reference(case, tma):
    """The Triton window kernel of a plain prefill, every launch kind, against the fp32 reference."""
    from rtpurbo.ops.triton import window as triton_window

    name, batch, length, n_kv, group, dim, window, sinks, dtype, layout = case
    torch.manual_seed(zlib.crc32(name.encode()))
    if layout:  # the model's (B, L, H, D) projections, transposed
        q, k, v = (torch.randn(batch, length, n, dim, device="cuda", dtype=dtype).transpose(1, 2)
                   for n in (n_kv * group, n_kv, n_kv))
    else:
        q, k, v = _qkv(batch, n_kv * group, n_kv, length, length, dim, dtype)
    pos = torch.arange(length, device="cuda").repeat(batch, 1)
    ref = reference.attention(q.float(), k.float(), v.float(), pos, pos, window=window, sinks=sinks)
    eager = _eager(q, k, v, pos, pos, window, sinks)
    default = dataclasses.replace(triton_window.default_launch(dim), tma=tma)
    for launch in (default, dataclasses.replace(default, block_n=64, num_warps=4, num_stages=2)):
        _poison()
        out = triton_window.window_attention(q, k, v, window=window, sinks=sinks, scale=dim**-0.5, launch=launch)
        assert out.shape == q.shape and out.dtype == dtype
        _assert_budget(out, ref, eager, f"{name} {launch}")


# (name, B, chunk start P, chunk length, Hkv, G, D, window, sinks, dtype)
WINDOW_CHUNK_CASES = [
    ("full-ring-8192", 1, 20000, 3000, 2, 4, 128, 8192, 4, BF16),
    ("ring-filling", 2, 700, 1500, 1, 7, 128, 1024, 4, BF16),
    ("at-the-sinks-fp16", 1, 4, 1025, 2, 2, 64, 256, 4, FP16),
]


@pytest.mark.parametrize("case", WINDOW_CHUNK_CASES, ids=[c[0] for c in WINDOW_CHUNK_CASES])
def test_triton_window_kernel_chunk_layout_matches_reference(case):
    """A later prefill chunk in the kernel's layout (sinks, ring unrolled to positions P-W..P-1, chunk) against the
    fp32 reference over the whole prefix; through ops.attention (chunk_start) it is the kernel, bit for bit."""
    from rtpurbo.ops.triton import window as triton_window

    name, batch, start, length, n_kv, group, dim, window, sinks, dtype = case
    torch.manual_seed(zlib.crc32(name.encode()))
    total = start + length
    q, k, v = _qkv(batch, n_kv * group, n_kv, total, total, dim, dtype)
    pos = torch.arange(total, device="cuda")
    ring_pos = torch.arange(start - window, start, device="cuda")
    held = ring_pos >= sinks
    key_pos = torch.cat([pos[:sinks], torch.where(held, ring_pos, -1), pos[start:]]).repeat(batch, 1)

    def layout(x):
        ring = torch.zeros(batch, n_kv, window, dim, device="cuda", dtype=dtype)
        ring[:, :, held] = x[:, :, ring_pos[held]]
        return torch.cat([x[:, :, :sinks], ring, x[:, :, start:]], dim=2)

    q_pos = pos[start:].repeat(batch, 1)
    ref = reference.attention(q[:, :, start:].float(), k.float(), v.float(), q_pos, pos.repeat(batch, 1),
                              window=window, sinks=sinks)
    eager = _eager(q[:, :, start:], k, v, q_pos, pos.repeat(batch, 1), window, sinks)
    kk, vv = layout(k), layout(v)
    _poison()
    out = triton_window.window_attention(q[:, :, start:], kk, vv, window=window, sinks=sinks, scale=dim**-0.5,
                                         chunk_start=start)
    _assert_budget(out, ref, eager, name)
    with torch.no_grad():
        via_api = api.attention(q[:, :, start:], kk, vv, q_pos, key_pos, window=window, sinks=sinks, impl="flex",
                                chunk_start=start)
    assert torch.equal(via_api, out)


def test_sparse_prefill_dense_tail_through_flex_matches_reference():
    """api.sparse_prefill(tail=T) on compiled flex: the last T queries attend densely, the rest keep the sparse
    rule (the fp32 reference's output), with gradients through both parts; and flex.dense_tail split over keys."""
    torch.manual_seed(5)
    length, tail = 2000, 300
    q, k, v = _qkv(1, 4, 2, length, length, 64, BF16)
    q_idx, k_idx = torch.randn(1, 2, length, 16, device="cuda"), torch.randn(1, 2, length, 16, device="cuda")
    pos = torch.arange(length, device="cuda")[None]
    budget = dict(top_p=0.5, sinks=4, band=256, scoring="mass")
    ref, _ = reference.block_sparse_attention(q.float(), k.float(), v.float(), pos, pos, q_idx, k_idx, block=128,
                                              tail=tail, **budget)
    q.requires_grad_(True)
    out, kept, seen = api.sparse_prefill(q, k, v, pos, pos, q_idx, k_idx, tail=tail, impl="flex", **budget)
    assert ((out.float() - ref).norm() / ref.norm()).item() < 1e-2 and int(kept) < int(seen)
    out.float().sum().backward()
    assert torch.isfinite(q.grad).all() and q.grad[:, :, -tail:].abs().sum() > 0
    with torch.no_grad():  # without gradients a long tail runs in parts of keys, merged by log-sum-exp
        parts = flex.dense_tail(q[:, :, -tail:], k, v, pos[:, -tail:], pos, 64**-0.5, split_keys=512)
    want = reference.attention(q[:, :, -tail:].float(), k.float(), v.float(), pos[:, -tail:], pos)
    assert ((parts.float() - want).norm() / want.norm()).item() < 1e-2


def test_plain_window_prefill_runs_the_triton_kernel_without_gradients():
    """ops.attention's plain window prefill is the Triton window kernel (bit for bit) when no gradient is needed,
    and compiled flex, with gradients, when one is."""
    from rtpurbo.ops.triton import window as triton_window

    torch.manual_seed(3)
    q, k, v = (torch.randn(1, 4096, n, 128, device="cuda", dtype=BF16).transpose(1, 2) for n in (8, 2, 2))
    pos = torch.arange(4096, device="cuda")[None]
    with torch.no_grad():
        out = api.attention(q, k, v, pos, pos, window=1024, sinks=4, impl="flex", plain=True)
    assert torch.equal(out, triton_window.window_attention(q, k, v, window=1024, sinks=4, scale=128**-0.5))
    leaf = q.detach().requires_grad_()
    trained = api.attention(leaf, k, v, pos, pos, window=1024, sinks=4, impl="flex", plain=True)
    trained.float().square().sum().backward()
    assert leaf.grad is not None and leaf.grad.isfinite().all()
    assert (trained.detach().float() - out.float()).abs().max() < 2e-2  # flex: same function, other rounding


def test_flex_local_mask_is_cached_and_sparse():
    """One block mask per (L, W, S, device); its blocks grow with W, not with L."""
    small = flex_plans._index_block_mask(8192, 1024, 4, torch.device("cuda"), False)
    assert flex_plans._index_block_mask(8192, 1024, 4, torch.device("cuda"), False) is small
    large = flex_plans._index_block_mask(32768, 1024, 4, torch.device("cuda"), False)
    per_row = lambda m: (m.kv_num_blocks + m.full_kv_num_blocks).float().mean().item()
    assert per_row(large) <= 1024 / 128 + 3
    assert abs(per_row(large) - per_row(small)) < 1.0


# --- flex one-query decode --------------------------------------------------------------
# (name, kind, B, Lk, Hkv, G, D, window, sinks, dtype); kind: ring (local cache), cache (retrieval), keymask
DECODE_CASES = [
    ("ring-g3-w256-s4", "ring", 2, 4 + 256, 2, 3, 128, 256, 4, BF16),
    ("cache-4097-g8-full", "cache", 1, 4097, 1, 8, 64, None, 0, BF16),
    ("keymask-1025-g4-full", "keymask", 2, 1025, 2, 4, 128, None, 0, BF16),
    ("cache-97-g1-w1-s4-fp16", "cache", 2, 97, 4, 1, 64, 1, 4, FP16),
    ("cache-97-g4-w>L", "cache", 1, 97, 2, 4, 128, 1000, 0, BF16),
]


def _decode_positions(kind: str, batch: int, k_len: int, window: int | None, sinks: int):
    """q_pos (B, 1), k_pos (B, Lk): a rotated ring with empty slots, or a cache with an empty tail."""
    if kind == "ring":
        start = 7001
        ring = torch.arange(start - window + 1, start + 1, device="cuda").roll(3)
        ring[:2] = -1
        k_pos = torch.cat([torch.arange(sinks, device="cuda"), ring]).repeat(batch, 1)
        return torch.full((batch, 1), start, device="cuda"), k_pos
    k_pos = torch.arange(k_len, device="cuda").repeat(batch, 1)
    k_pos[:, k_len - 17 :] = -1  # slots not yet written
    q_pos = torch.full((batch, 1), k_len - 18, device="cuda")
    q_pos[-1] = k_len // 2  # a shorter row: later slots are in its future
    return q_pos, k_pos


@pytest.mark.parametrize("case", DECODE_CASES, ids=[c[0] for c in DECODE_CASES])
def test_flex_decode_matches_reference(case):
    name, kind, batch, k_len, n_kv, group, dim, window, sinks, dtype = case
    torch.manual_seed(zlib.crc32(name.encode()))
    q, k, v = _qkv(batch, n_kv * group, n_kv, 1, k_len, dim, dtype)
    q_pos, k_pos = _decode_positions(kind, batch, k_len, window, sinks)
    key_mask = torch.rand(batch, n_kv, 1, k_len, device="cuda") > 0.7 if kind == "keymask" else None
    ref = reference.attention(q.float(), k.float(), v.float(), q_pos, k_pos, window=window, sinks=sinks, key_mask=key_mask)
    eager = _eager(q, k, v, q_pos, k_pos, window, sinks, key_mask)
    _poison()
    out = api.attention(q, k, v, q_pos, k_pos, window=window, sinks=sinks, key_mask=key_mask, impl="flex")
    _assert_budget(out, ref, eager, name)


RING_BESIDE_CASES = [("ring-g4-w8192-s4-b2", 2, 4 + 8192, 7, 4, 128, 8192, 4, BF16),
                     ("ring-g8-w256-s4-fp16", 1, 4 + 256, 3, 8, 64, 256, 4, FP16)]


@pytest.mark.parametrize("case", RING_BESIDE_CASES, ids=[c[0] for c in RING_BESIDE_CASES])
def test_ring_beside_selection_matches_reference(case):
    """The local heads' decode in the launch shape of a side stream beside a selection (about one program per SM,
    32-key steps), over a rotated ring with empty slots: within the eager-error budget."""
    from rtpurbo.ops.triton import decode_roles

    name, batch, k_len, n_kv, group, dim, window, sinks, dtype = case
    torch.manual_seed(zlib.crc32(name.encode()))
    q, k, v = _qkv(batch, n_kv * group, n_kv, 1, k_len, dim, dtype)
    q_pos, k_pos = _decode_positions("ring", batch, k_len, window, sinks)
    ref = reference.attention(q.float(), k.float(), v.float(), q_pos, k_pos, window=window, sinks=sinks)
    _poison()
    out = decode_roles.ring_beside_selection(q, k, v, k_pos, q_pos, scale=dim**-0.5, window=window, sinks=sinks)
    _assert_budget(out, ref, _eager(q, k, v, q_pos, k_pos, window, sinks), name)


# --- both kinds of heads in one decode launch ------------------------------------------------
# (name, B, retrieval keys, retrieval KV heads, local KV heads, G, D, W, S, dtype, selecting)
TWO_ROLE_CASES = [
    ("40k-g4-bf16", 1, 40000, 1, 7, 4, 128, 8192, 4, BF16, False),
    ("5k-g8-b2-bf16-select", 2, 5000, 1, 3, 8, 128, 1024, 4, BF16, True),
    ("3k-g3-b2-fp16", 2, 3001, 2, 2, 3, 64, 512, 4, FP16, False),
]


@pytest.mark.parametrize("case", TWO_ROLE_CASES, ids=[c[0] for c in TWO_ROLE_CASES])
def test_two_role_decode_matches_reference(case):
    """One launch for a layer's retrieval heads (every key, or a top-p selection) and local heads (a rotated ring
    with empty slots), written in a shuffled head order: each role within the eager-error budget of its reference."""
    from rtpurbo.ops.triton import decode, decode_roles

    name, batch, k_len, n_ret, n_loc, group, dim, window, sinks, dtype, selecting = case
    torch.manual_seed(zlib.crc32(name.encode()))
    q_ret, k_ret, v_ret = _qkv(batch, n_ret * group, n_ret, 1, k_len, dim, dtype)
    q_pos, k_pos = _decode_positions("tail", batch, k_len, None, 0)
    q_loc, k_loc, v_loc = _qkv(batch, n_loc * group, n_loc, 1, sinks + window, dim, dtype)
    loc_pos = torch.full((batch, sinks + window), -1, device="cuda")
    for b, p in enumerate(q_pos[:, 0].tolist()):  # each row's ring (slot S + (p - S) % W), the last row's part empty
        loc_pos[b, :sinks] = torch.arange(sinks)
        recent = torch.arange(max(sinks, p + 1 - window), p + 1, device="cuda")
        loc_pos[b, sinks + (recent - sinks) % window] = recent
    order = torch.randperm((n_ret + n_loc) * group, device="cuda")
    chosen, key_mask = {}, None
    if selecting:  # the Triton selection (tested against the reference elsewhere), as the attention's input
        q_idx, k_idx = torch.randn(batch, n_ret, 1, 16, device="cuda"), torch.randn(batch, n_ret, k_len, 16, device="cuda")
        selection = triton_topp.select(q_idx, k_idx, q_pos, k_pos, top_p=0.9, min_tokens=16, sinks=sinks, recent=64)
        listed = torch.arange(k_len, device="cuda") < selection.n_keep[..., None]  # (B, Hr, C); the rest unspecified
        always = decode.named_always(selection.always, q_pos, k_pos, n_kv=n_ret, sinks=sinks,
                                     recent=64).view(batch, n_ret, -1)
        hits = torch.zeros(batch, n_ret, k_len, dtype=torch.int32, device="cuda")
        hits.scatter_add_(-1, torch.where(listed, selection.order, 0), listed.int())
        hits.scatter_add_(-1, always.clamp(min=0), (always >= 0).int())
        key_mask = (hits > 0)[:, :, None]
        chosen = dict(index=selection.order, n_index=selection.n_keep, always=selection.always, skip_sinks=sinks,
                      skip_recent=64)
    _poison()
    out, counts = decode_roles.two_role_decode(q_ret, k_ret, v_ret, k_pos, q_loc, k_loc, v_loc, loc_pos, q_pos,
                                               scale=dim**-0.5, window=window, sinks=sinks, heads=order.int(), **chosen)
    got = out.view(batch, -1, dim)[:, order]  # back to role order: retrieval heads, then local
    n_qr = n_ret * group
    ref_ret = reference.attention(q_ret.float(), k_ret.float(), v_ret.float(), q_pos, k_pos, key_mask=key_mask)
    ref_loc = reference.attention(q_loc.float(), k_loc.float(), v_loc.float(), q_pos, loc_pos, window=window, sinks=sinks)
    _assert_budget(got[:, :n_qr, None], ref_ret, _eager(q_ret, k_ret, v_ret, q_pos, k_pos, key_mask=key_mask),
                   f"{name} retrieval")
    _assert_budget(got[:, n_qr:, None], ref_loc, _eager(q_loc, k_loc, v_loc, q_pos, loc_pos, window, sinks),
                   f"{name} local")
    seen = (k_pos >= 0) & (k_pos <= q_pos)
    want = (key_mask[:, :, 0] & seen[:, None]).sum(-1) if selecting else seen.sum(-1, keepdim=True).expand(batch, n_ret)
    assert torch.equal(counts, want)


# --- triton top-p decode ----------------------------------------------------------------
# (name, B, Lk, Hkv, G, D, dtype, top_p ("mid" = well inside a mass gap), min, max, sinks, recent)
TOPP_CASES = [
    ("97-g4", 1, 97, 1, 4, 64, BF16, "mid", 0, None, 4, 8),
    ("1025-g3-b2", 2, 1025, 2, 3, 128, BF16, "mid", 16, None, 4, 16),
    ("4096-g8-max512", 1, 4096, 1, 8, 128, BF16, "mid", 0, 512, 4, 64),
    ("4096-g1-b2-fp16", 2, 4096, 2, 1, 64, FP16, "mid", 64, 256, 0, 0),
    ("1025-g4-full", 1, 1025, 2, 4, 128, BF16, 1.0, 0, None, 4, 8),
    ("97-g8-min>visible", 2, 97, 1, 8, 64, BF16, "mid", 200, None, 4, 8),
]


def _topp_inputs(batch, k_len, n_kv, group, dim, dtype):
    q, k, v = _qkv(batch, n_kv * group, n_kv, 1, k_len, dim, dtype)
    q_idx = torch.randn(batch, n_kv, 1, 16, device="cuda", dtype=dtype)
    k_idx = torch.randn(batch, n_kv, k_len, 16, device="cuda", dtype=dtype)
    k_pos = torch.arange(k_len, device="cuda").repeat(batch, 1)
    k_pos[-1, :5] = -1  # padding of the last row
    k_pos[:, k_len - 3 :] = -1  # empty tail
    q_pos = torch.full((batch, 1), k_len - 4, device="cuda")
    return q, k, v, q_pos, k_pos, q_idx, k_idx


def _separated_top_p(q_idx, k_idx, q_pos, k_pos) -> float:
    """A top_p whose selection boundary no rounding can move: far from every row's prefix masses."""
    scores = reference.indexer_scores(q_idx, k_idx)
    candidates = visible(q_pos, k_pos, None, 0)[:, None]
    probs = torch.softmax(scores.masked_fill(~candidates, float("-inf")), -1).nan_to_num(0.0)
    cum = probs.sort(-1, descending=True).values.cumsum(-1).flatten()
    grid = torch.linspace(0.3, 0.95, 131, device=cum.device)
    gap = (grid[:, None] - cum[None]).abs().amin(-1)
    assert gap.max() > 1e-4, "no well-separated top_p found"
    return grid[gap.argmax()].item()


def _selection_mask(chosen: triton_topp.Selection, k_len: int, q_pos: torch.Tensor, k_pos: torch.Tensor, sinks: int,
                    recent: int) -> torch.Tensor:
    """(B, Hkv, Lk) bool from a Selection: first n_keep of order (the rest is unspecified), plus the keys the always
    list names (its other entries hold anything)."""
    from rtpurbo.ops.triton import decode
    batch, n_kv, budget = chosen.order.shape
    mask = torch.zeros(batch, n_kv, k_len + 1, dtype=torch.bool, device=chosen.order.device)
    listed = torch.arange(budget, device=mask.device) < chosen.n_keep[..., None]
    mask.scatter_(-1, torch.where(listed, chosen.order, k_len), True)  # unlisted entries land in the extra column
    mask = mask[..., :k_len].contiguous()
    always = decode.named_always(chosen.always, q_pos, k_pos, n_kv=n_kv, sinks=sinks, recent=recent).view(batch, n_kv, -1)
    mask.scatter_(-1, always.clamp(min=0), mask.gather(-1, always.clamp(min=0)) | (always >= 0))
    return mask


@pytest.mark.parametrize("case", TOPP_CASES, ids=[c[0] for c in TOPP_CASES])
def test_topp_decode_matches_reference(case):
    name, batch, k_len, n_kv, group, dim, dtype, top_p, min_tokens, max_tokens, sinks, recent = case
    torch.manual_seed(zlib.crc32(name.encode()))
    q, k, v, q_pos, k_pos, q_idx, k_idx = _topp_inputs(batch, k_len, n_kv, group, dim, dtype)
    top_p = _separated_top_p(q_idx, k_idx, q_pos, k_pos) if top_p == "mid" else top_p
    budget = dict(top_p=top_p, min_tokens=min_tokens, max_tokens=max_tokens, sinks=sinks, recent=recent)
    ref_out, ref_counts = reference.topp_attention(q.float(), k.float(), v.float(), q_pos, k_pos, q_idx, k_idx, **budget)
    selected = reference.select_topp(reference.indexer_scores(q_idx, k_idx), q_pos, k_pos, **budget)
    eager = _eager(q, k, v, q_pos, k_pos, key_mask=selected)
    _poison()
    sums, want_sums = (torch.arange(batch * n_kv * 2, device="cuda").view(batch, n_kv, 2) for _ in range(2))
    out, counts = api.topp_attention(q, k, v, q_pos, k_pos, q_idx, k_idx, **budget, impl="triton", key_sums=sums)
    assert torch.equal(counts, ref_counts), f"{name}: counts {counts.flatten().tolist()} != {ref_counts.flatten().tolist()}"
    _assert_budget(out, ref_out, eager, name)
    reference.add_key_sums(want_sums, ref_counts, q_pos, k_pos)
    assert torch.equal(sums, want_sums), f"{name}: key sums {sums.tolist()} != {want_sums.tolist()}"
    if top_p < 1:
        for method in triton_topp.METHODS:
            chosen = triton_topp.select(q_idx, k_idx, q_pos, k_pos, **budget, method=method)
            got = _selection_mask(chosen, k_len, q_pos, k_pos, sinks, recent)
            assert torch.equal(got, selected[:, :, 0]), f"{name}: {method}: selected set differs"


def test_list_path_adds_its_key_sums():
    """From ``CUT_ATTEND_MAX_KEYS`` keys the selection writes a list and the list attention's combine adds the running
    sums, the visible keys from the index scores' block counts: equal to the reference's, over two steps."""
    k_len = triton_topp.CUT_ATTEND_MAX_KEYS + 3000
    torch.manual_seed(7)
    q, k, v, q_pos, k_pos, q_idx, k_idx = _topp_inputs(2, k_len, 1, 4, 64, BF16)
    budget = dict(top_p=0.9, min_tokens=64, sinks=4, recent=64)
    sums = torch.zeros(2, 1, 2, dtype=torch.int64, device="cuda")
    for _ in range(2):
        _, counts = api.topp_attention(q, k, v, q_pos, k_pos, q_idx, k_idx, **budget, impl="triton", key_sums=sums)
    visible_keys = [k_len - 4 + 1, k_len - 4 + 1 - 5]  # positions 0..q_pos; the last row's first 5 are padding
    assert sums[:, 0, 1].tolist() == [2 * n for n in visible_keys]
    assert torch.equal(sums[..., 0], 2 * counts[..., 0]) and (counts > 0).all()


@pytest.mark.parametrize("fill", ["zeros", "slots", "positions-shifted"])
def test_always_list_garbage_changes_nothing(fill):
    """The index-score kernel leaves the always list's entries of absent keys as the memory held them: with free
    memory holding slot-like integers (zeros, slots 0..L-1, slots of the wrong entries), the top-p attention still
    uses exactly the reference's keys."""
    name, batch, k_len, n_kv, group, dim, dtype = "garbage", 2, 1025, 2, 4, 64, BF16
    torch.manual_seed(zlib.crc32(fill.encode()))
    q, k, v, q_pos, k_pos, q_idx, k_idx = _topp_inputs(batch, k_len, n_kv, group, dim, dtype)
    k_pos[0, k_len - 12 : k_len - 6] = -1  # absent recent keys: their entries are never written
    budget = dict(top_p=_separated_top_p(q_idx, k_idx, q_pos, k_pos), min_tokens=0, max_tokens=None, sinks=4, recent=16)
    ref_out, ref_counts = reference.topp_attention(q.float(), k.float(), v.float(), q_pos, k_pos, q_idx, k_idx, **budget)
    selected = reference.select_topp(reference.indexer_scores(q_idx, k_idx), q_pos, k_pos, **budget)
    eager = _eager(q, k, v, q_pos, k_pos, key_mask=selected)
    pattern = {"zeros": torch.zeros(1 << 16, dtype=torch.int32, device="cuda"),
               "slots": torch.arange(1 << 16, dtype=torch.int32, device="cuda") % k_len,
               "positions-shifted": (k_len - 1 - torch.arange(1 << 16, dtype=torch.int32, device="cuda")) % k_len}[fill]
    blocks = [pattern.clone() for _ in range(64)]  # freed below: torch.empty then hands this memory out
    del blocks
    out, counts = api.topp_attention(q, k, v, q_pos, k_pos, q_idx, k_idx, **budget, impl="triton")
    assert torch.equal(counts, ref_counts), f"{fill}: counts {counts.flatten().tolist()} != {ref_counts.flatten().tolist()}"
    _assert_budget(out, ref_out, eager, f"{name}-{fill}")


# --- sort-free top-p selection (method "threshold") ----------------------------------------
# SELECT_CASES (test_ops_threshold_interpret: odd lengths, batch > 1, several KV heads, ties, flat,
# spread and all-zero scores, min / max clamps, empty rows, many programs per row) plus long rows:
# many programs per row, the level-0 histogram and the key levels under contention. Same tuple:
# (name, B, Hkv, Lk, scores kind, top_p ("mid" = far from every prefix mass), min, max, block)
LONG_SELECT_CASES = [
    ("randn-1M+3-min64", 1, 1, (1 << 20) + 3, "randn", "mid", 64, None, 1024),
    ("randn-128K-1-b2", 2, 2, 131071, "randn", "mid", 0, None, 1024),
    ("randn-512K-1-max8192", 1, 2, 524287, "randn", "mid", 0, 8192, 1024),
    ("randn-512K-min=max2048", 1, 1, 524288, "randn", 0.9, 2048, 2048, 1024),
    ("randn-64K-block32", 2, 1, 65537, "randn", "mid", 0, None, 32),
    ("flat-20001", 2, 1, 20001, "flat", "mid", 0, None, 1024),
    ("flat-262K-max", 1, 2, 262147, "flat", 0.9, 0, 100000, 1024),
    ("ties-200K-max", 2, 1, 200003, "ties", 0.9, 0, 5000, 1024),
    ("ties-20003-topp", 1, 2, 20003, "ties", "mid", 0, None, 1024),
    ("spread-100K", 1, 1, 100001, "spread", "mid", 0, None, 1024),
]


@pytest.mark.parametrize("case", SELECT_CASES + LONG_SELECT_CASES, ids=[c[0] for c in SELECT_CASES + LONG_SELECT_CASES])
def test_threshold_select_matches_reference(case):
    torch.manual_seed(0)
    _poison()
    problems = check_selection(case, "cuda")
    assert problems == [], f"{case[0]}: " + "; ".join(problems)


def test_threshold_select_is_cuda_graph_capturable():
    """The selection captured once and replayed on new indexer inputs equals an eager call."""
    q_idx, k_idx, q_pos, k_pos = select_inputs("randn", 2, 2, 100003, seed=3, device="cuda")
    budget = dict(top_p=0.9, min_tokens=16, max_tokens=None, sinks=4, recent=32, method="threshold")
    triton_topp.select(q_idx, k_idx, q_pos, k_pos, **budget)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = triton_topp.select(q_idx, k_idx, q_pos, k_pos, **budget)
    q_idx.copy_(torch.randn_like(q_idx))
    k_idx.copy_(torch.randn_like(k_idx))
    graph.replay()
    expected = triton_topp.select(q_idx, k_idx, q_pos, k_pos, **budget)
    assert torch.equal(static.n_keep, expected.n_keep)
    for row in range(4):
        n = int(expected.n_keep.flatten()[row])
        assert torch.equal(static.order.flatten(0, 1)[row, :n], expected.order.flatten(0, 1)[row, :n])


@pytest.mark.parametrize("schedule, kind", [("fused", "randn"), ("phased", "ties")])
def test_threshold_search_waits_out_kernels_holding_the_sms(schedule, kind):
    """The programs of a row wait for each other in the fused search, and in the phased search's launch of levels
    2-3 (tied scores under a budget: level 1 leaves the rows unresolved). With matmuls on another stream holding the
    SMs when it starts, some programs become resident late: the others must wait for them (no stall), and the
    selection must equal the relay schedule's (one launch per phase, no waits)."""
    from rtpurbo.ops.triton import decode, threshold

    q_idx, k_idx, q_pos, k_pos = select_inputs(kind, 2, 3, 300007, seed=5, device="cuda")
    scored = decode.index_scores(q_idx, k_idx, q_pos, k_pos, sinks=0, recent=0)
    stats = (scored.scores.view(6, -1), scored.block_max, scored.block_sum, scored.block_count, scored.block_min)
    budget = dict(top_p=0.9, min_tokens=0, max_tokens=None if kind == "randn" else 5000)
    order, n_keep = threshold.topp_threshold(*stats, **budget, schedule="relay")
    a = torch.randn(8192, 8192, device="cuda", dtype=BF16)
    side = torch.cuda.Stream()
    for _ in range(3):
        sync = torch.zeros(6, threshold.N_SYNC, dtype=torch.int64, device="cuda")
        work = torch.zeros(6, threshold.N_LEVELS, 2 * threshold.N_BINS + 1, dtype=torch.int64, device="cuda")
        torch.cuda.synchronize()
        with torch.cuda.stream(side):
            for _ in range(4):
                a = a @ a / 90.0
        waited, n_waited = threshold.topp_threshold(*stats, **budget, schedule=schedule, sync=sync, work=work)
        torch.cuda.synchronize()
        assert int(sync[:, threshold.STALLS].sum()) == 0
        if schedule == "phased":
            assert int(work[:, 2, : threshold.N_BINS].sum()) > 0, "level 1 resolved every row: no level 2 to wait on"
        assert torch.equal(n_waited, n_keep)
        for row in range(6):
            assert torch.equal(waited[row, : n_keep[row]], order[row, : n_keep[row]])


def test_select_rejects_unknown_method():
    q_idx, k_idx, q_pos, k_pos = select_inputs("randn", 1, 1, 64, seed=0, device="cuda")
    with pytest.raises(ValueError, match="unknown selection method"):
        triton_topp.select(q_idx, k_idx, q_pos, k_pos, top_p=0.9, method="heap")


def _layer_step_inputs(k_len: int, window: int, sinks: int) -> tuple:
    """One layer's decode inputs (seeded), batch 2: a retrieval KV head (4 query heads, head dim 128, indexer 16) over
    ``k_len`` keys, then 3 local KV heads over a rotated ring of ``sinks + window`` slots: (q, k, v, q_pos, k_pos,
    q_idx, k_idx, q_loc, k_loc, v_loc, loc_q_pos, loc_pos)."""
    torch.manual_seed(0)
    retrieval = _topp_inputs(2, k_len, 1, 4, 128, BF16)
    local = _qkv(2, 12, 3, 1, sinks + window, 128, BF16)
    return (*retrieval, *local, *_decode_positions("ring", 2, sinks + window, window, sinks))


def test_decode_step_is_cuda_graph_capturable():
    """Local (flex) + retrieval (triton top-p) decode captured once, replayed on new inputs."""
    window, sinks = 256, 4
    q, k, v, q_pos, k_pos, q_idx, k_idx, ql, kl, vl, ql_pos, kl_pos = _layer_step_inputs(3000, window, sinks)
    budget = dict(top_p=0.9, min_tokens=16, max_tokens=None, sinks=sinks, recent=32)
    inputs = [q, k, v, q_idx, k_idx, ql, kl, vl]

    def step():
        local = flex.attention(ql, kl, vl, ql_pos, kl_pos, window=window, sinks=sinks)
        out, counts = triton_topp.topp_attention(q, k, v, q_pos, k_pos, q_idx, k_idx, **budget)
        return local, out, counts

    step()  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = step()
    for t in inputs:
        t.copy_(torch.randn_like(t))
    graph.replay()
    expected = step()
    for got, want in zip(static, expected):
        assert torch.equal(got, want), "graph replay differs from an eager call on the same inputs"


@pytest.mark.parametrize("schedule", ["phased", "relay"])
def test_dependent_launch_changes_no_bits(monkeypatch, schedule):
    """The selecting step's chain (index scores, the search in ``schedule``, the list attention, its combine) and the
    step over every key (one launch for both kinds of heads, its combine), launched with programmatic dependent launch
    and without: the same kernels in the same launch shapes, only launched earlier, so the same bits. Eager, and
    captured with PDL in a CUDA graph (programmatic edges) and replayed on new inputs, after poisoning the
    allocator's free blocks; a kernel reading its predecessor's output before that finished would differ. The relay
    search selects the same keys as the phased one, so its step has the bits of the phased step on the list path
    (below ``CUT_ATTEND_MAX_KEYS`` the phased step attends through the cut attention instead, whose parts split the
    same keys differently: the same keys used there)."""
    from rtpurbo.ops.triton import decode_roles, dependent_launch

    if not dependent_launch.supported(torch.device("cuda")):
        pytest.skip("programmatic dependent launch needs a GPU of compute capability 9.0 or later")
    window, sinks = 256, 4
    q, k, v, q_pos, k_pos, q_idx, k_idx, q_loc, k_loc, v_loc, loc_q_pos, loc_pos = _layer_step_inputs(300007, window, sinks)
    budget = dict(top_p=0.9, min_tokens=16, max_tokens=None, sinks=sinks, recent=32)
    inputs = [q, k, v, q_idx, k_idx, q_loc, k_loc, v_loc]

    def step(search=schedule):
        out, counts = triton_topp.topp_attention(q, k, v, q_pos, k_pos, q_idx, k_idx, **budget, schedule=search)
        both, used = decode_roles.two_role_decode(q, k, v, k_pos, q_loc, k_loc, v_loc, loc_pos, loc_q_pos,
                                                  scale=128**-0.5, window=window, sinks=sinks)
        return out, counts, both, used

    def run(pdl: bool, search=schedule):
        monkeypatch.setattr(dependent_launch, "ENABLED", pdl)
        _poison()
        return step(search)

    for got, want in zip(run(True), run(False)):
        assert torch.equal(got, want), "PDL changed an eager step's output"
    phased_cut = run(False, "phased")
    monkeypatch.setattr(triton_topp, "CUT_ATTEND_MAX_KEYS", 0)  # the phased step on the list path
    for got, want in zip(run(False), run(False, "phased")):
        assert torch.equal(got, want), f"the {schedule} search's step differs from the phased one's"
    monkeypatch.undo()
    assert torch.equal(run(False)[1], phased_cut[1]), "the cut attention used other keys than the list attention"
    monkeypatch.setattr(dependent_launch, "ENABLED", True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = step()
    for t in inputs:
        t.copy_(torch.randn_like(t))
    _poison()
    graph.replay()
    for got, want in zip(static, run(False)):
        assert torch.equal(got, want), "the step captured with PDL differs from an eager step without it"


def test_backends_report_available():
    assert flex.available() and triton_topp.available()


# --- sparse prefill of retrieval heads (flex block plan) ------------------------------------------
@pytest.mark.parametrize("scoring", ["pooled", "mass"])
@pytest.mark.parametrize("length, group, padded", [(1000, 4, False), (2305, 8, True)])
def test_sparse_prefill_matches_reference(length, group, padded, scoring):
    """api.sparse_prefill on flex: the reference's block selection (same kept count) and its attention
    within 2x the eager bf16 error, with either block scoring; top-p 1 within the same budget of dense
    causal attention. Blocks are blocks of positions: a padded row is laid out by position first
    (:mod:`rtpurbo.ops.block_layout`), in the reference and in the eager yardstick alike."""
    from rtpurbo.ops.block_layout import lay_out, put_back, take

    torch.manual_seed(length)
    batch, n_kv = 2, 2
    q, k, v = _qkv(batch, n_kv * group, n_kv, length, length, 128, BF16)
    q_idx = torch.randn(batch, n_kv, length, 16, device="cuda", dtype=BF16)
    k_idx = torch.randn(batch, n_kv, length, 16, device="cuda", dtype=BF16)
    pos = torch.arange(length, device="cuda").repeat(batch, 1)
    if padded:
        pos[-1, :300] = -1
        pos[-1, 300:] -= 300
    for top_p in (0.7, 1.0):
        budget = dict(top_p=top_p, min_blocks=1, max_blocks=6, sinks=4, band=256, scoring=scoring)
        ref, blocks = reference.block_sparse_attention(q.float(), k.float(), v.float(), pos, pos, q_idx, k_idx,
                                                       block=128, **budget)
        laid = lay_out(pos, 128)
        key_mask = reference.blocks_to_keys(blocks, 128, laid.pos.shape[1], laid.pos.shape[1])
        eager = put_back(_eager(take(q, laid), take(k, laid), take(v, laid), laid.pos, laid.pos, key_mask=key_mask),
                         laid)
        _poison()
        out, kept, seen = api.sparse_prefill(q, k, v, pos, pos, q_idx, k_idx, impl="flex", **budget)
        assert int(kept) == int(blocks.sum()) and int(seen) >= int(kept)
        _assert_budget(out, ref, eager, f"sparse prefill L={length} top-p {top_p}")


@pytest.mark.parametrize("q_len, k_len, group, scoring, tail", [
    (3000, 3000, 4, "pooled", 0), (2305, 2305, 1, "mass", 0), (1000, 4072, 3, "mass", 0), (128, 128, 4, "pooled", 0),
    (3000, 20408, 4, "mass", 1000)])  # a later chunk starts on a block: Lk - Lq = 136 x 128
def test_triton_sparse_prefill_matches_reference_and_flex(q_len, k_len, group, scoring, tail):
    """Aligned calls without gradients on the Triton kernels (``set_sparse_prefill_kernel("triton")``): the
    reference's blocks (same kept and seen counts) and its attention within 2x the eager bf16 error, for a plain
    prompt and a later chunk, and with a dense tail split over keys; the flex path keeps the same number of
    blocks."""
    torch.manual_seed(q_len + k_len)
    batch, n_kv = 2, 2
    q, k, v = _qkv(batch, n_kv * group, n_kv, q_len, k_len, 128, BF16)
    q_idx = torch.randn(batch, n_kv, q_len, 16, device="cuda", dtype=BF16)
    k_idx = torch.randn(batch, n_kv, k_len, 16, device="cuda", dtype=BF16)
    k_pos = torch.arange(k_len, device="cuda").repeat(batch, 1)
    q_pos = k_pos[:, k_len - q_len:]
    budget = dict(top_p=0.7, min_blocks=1, max_blocks=6, sinks=4, band=256, scoring=scoring, tail=tail)
    ref, blocks = reference.block_sparse_attention(q.float(), k.float(), v.float(), q_pos, k_pos, q_idx, k_idx,
                                                   block=128, **budget)
    eager = _eager(q, k, v, q_pos, k_pos, key_mask=reference.blocks_to_keys(blocks, 128, q_len, k_len, tail=tail))
    previous = flex.set_sparse_prefill_kernel("triton")
    try:
        _poison()
        out, kept, seen = api.sparse_prefill(q, k, v, q_pos, k_pos, q_idx, k_idx, impl="flex", aligned=True, **budget)
    finally:
        flex.set_sparse_prefill_kernel(previous)
    flex_out, flex_kept, flex_seen = api.sparse_prefill(q, k, v, q_pos, k_pos, q_idx, k_idx, impl="flex",
                                                        aligned=True, **budget)
    assert int(kept) == int(blocks.sum()) == int(flex_kept) and int(seen) == int(flex_seen)
    _assert_budget(out, ref, eager, f"Triton sparse prefill Lq={q_len} Lk={k_len}")


def test_triton_sparse_prefill_refuses_what_it_cannot_run():
    """The Triton choice raises for tensors its kernels do not take (no quiet switch to flex)."""
    q, k, v = _qkv(1, 2, 1, 256, 256, 96, BF16)  # head dim 96: not a power of two
    idx = torch.randn(1, 1, 256, 16, device="cuda", dtype=BF16)
    pos = torch.arange(256, device="cuda")[None]
    previous = flex.set_sparse_prefill_kernel("triton")
    try:
        with pytest.raises(ValueError, match="Triton block-sparse kernel cannot run"):
            api.sparse_prefill(q, k, v, pos, pos, idx, idx, top_p=0.5, impl="flex", aligned=True)
    finally:
        flex.set_sparse_prefill_kernel(previous)


@pytest.mark.parametrize("length, padded", [(1000, False), (2305, True)])
def test_block_mass_kernel_matches_reference(length, padded):
    """The fused ``mass`` block-score kernel against the PyTorch reference on bf16 indexer vectors: the same
    candidate entries (-inf elsewhere) and log masses within 1e-4 (fp32, summation order only)."""
    from rtpurbo.ops import block_scores
    from rtpurbo.ops.triton import block_mass

    torch.manual_seed(length)
    batch, heads = 2, 2
    q_idx = torch.randn(batch, heads, length, 16, device="cuda", dtype=BF16) * 2
    k_idx = torch.randn(batch, heads, length, 16, device="cuda", dtype=BF16) * 2
    pos = torch.arange(length, device="cuda").repeat(batch, 1)
    if padded:
        pos[-1, :300] = -1
        pos[-1, 300:] -= 300
    seen, always = block_scores.block_roles(pos, pos, 128, sinks=4, band=256)
    for candidates in (seen & ~always, seen):
        want = block_scores.block_mass(q_idx, k_idx, pos, pos, candidates, 128)
        got = block_mass.block_mass(q_idx, k_idx, pos, pos, candidates, 128)
        assert torch.equal(torch.isinf(got), torch.isinf(want))
        finite = torch.isfinite(want)
        assert int(finite.sum()) > 0 and (got[finite] - want[finite]).abs().max().item() < 1e-4


@pytest.mark.parametrize("q_len, k_len, dtype, chunk_elements", [
    (32700, 32700, BF16, None), (4000, 32160, torch.float32, None), (30000, 30000, torch.float16, 1 << 18)])
def test_aligned_block_mass_kernels_match_reference(q_len, k_len, dtype, chunk_elements):
    """The aligned ``mass`` kernels (the Triton sparse prefill's scores) against the PyTorch reference with the
    prefill's candidates, at ~32K: a plain prompt with a partial last block, a later chunk, several chunks of query
    blocks; the model's (B, L, H, d) layout read in place. Same -inf entries, log masses within 1e-4, same sums."""
    from rtpurbo.ops import block_scores
    from rtpurbo.ops.triton import block_mass
    from rtpurbo.ops.triton.block_sparse import candidate_blocks

    torch.manual_seed(q_len + k_len)
    batch, heads, sinks, band = 2, 2, 4, 512
    q_idx = (torch.randn(batch, q_len, heads, 16, device="cuda") * 2).to(dtype).transpose(1, 2)
    k_idx = (torch.randn(batch, k_len, heads, 16, device="cuda") * 2).to(dtype).transpose(1, 2)
    k_pos = torch.arange(k_len, device="cuda").repeat(batch, 1)
    q_pos = k_pos[:, k_len - q_len:]
    candidates = candidate_blocks(q_len, k_len, sinks, band, q_idx.device)
    want = block_scores.block_mass(q_idx, k_idx, q_pos, k_pos, candidates, 128)
    chunked = {} if chunk_elements is None else {"chunk_elements": chunk_elements}
    _poison()
    got = block_mass.aligned_block_mass(q_idx, k_idx, sinks, band, 128, **chunked)
    assert torch.equal(torch.isinf(got), torch.isinf(want)) and not got.isnan().any()
    finite = torch.isfinite(want)
    assert int(finite.sum()) > 0 and (got[finite] - want[finite]).abs().max().item() < 1e-4
    assert torch.allclose(got.exp().sum(-1), want.exp().sum(-1), atol=1e-5)


# --- gradients (training: stage 1 and 2 run the student through these paths) -----------------------
@pytest.mark.parametrize("kind", ["window", "sparse"])
def test_flex_prefill_gradients_match_reference(kind):
    """Backward through compiled flex at L > W (the plain window band, the retrieval heads' sparse prefill):
    dq, dk, dv within 2x the eager bf16 error of fp32 autograd through the reference. The backward block
    lists must then cover every key block (a compact band once failed here with a device assert)."""
    torch.manual_seed(11)
    batch, n_kv, group, length, dim = 1, 2, 3, 2048, 64
    q, k, v = (t.requires_grad_() for t in _qkv(batch, n_kv * group, n_kv, length, length, dim, BF16))
    pos = torch.arange(length, device="cuda")[None]
    window, sinks, key_mask = 256, 4, None
    if kind == "window":
        out = api.attention(q, k, v, pos, pos, window=window, sinks=sinks, impl="flex", plain=True)
    else:
        q_idx = torch.randn(batch, n_kv, length, 16, device="cuda", dtype=BF16)
        k_idx = torch.randn(batch, n_kv, length, 16, device="cuda", dtype=BF16)
        budget = dict(top_p=0.7, min_blocks=1, max_blocks=4, sinks=sinks, band=256)
        out, kept, seen = api.sparse_prefill(q, k, v, pos, pos, q_idx, k_idx, impl="flex", **budget)
        assert 0 < int(kept) < int(seen)
        key_mask = reference.blocks_to_keys(reference.select_blocks(q_idx, k_idx, pos, pos, block=128, **budget),
                                            128, length, length)
        window, sinks = None, 0
    grad = torch.randn_like(out)
    out.backward(grad)
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    reference.attention(q32, k32, v32, pos, pos, window=window, sinks=sinks, key_mask=key_mask).backward(grad.float())
    q16, k16, v16 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    _eager(q16, k16, v16, pos, pos, window, sinks, key_mask).backward(grad)
    for name, fast, ref, eager in (("dq", q.grad, q32.grad, q16.grad), ("dk", k.grad, k32.grad, k16.grad),
                                   ("dv", v.grad, v32.grad, v16.grad)):
        _assert_budget(fast, ref, eager, f"{kind} {name}")


# --- rotary embedding ------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["decode-bf16", "prefill-bf16-d80", "decode-fp16-d64", "prefill-fp32-d64"])
def test_rotary_kernel_matches_reference(case):
    """The one-launch rotation on the GPU: within one rounding of the reference (the reference rounds its fp32 value
    once, the kernel too, up to fused multiply-adds), in the inputs' strides, and at least as close to the exact
    rotation as transformers' ``apply_rotary_pos_emb`` on average."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    from .test_rotary_interpret import CASES, _inputs, _ulp

    q, k, cos, sin = (t.cuda() for t in _inputs(next(c for c in CASES if c[0] == case)))
    _poison()
    got = api.rotary(q, k, cos, sin, impl="triton")
    exact = reference.rotary(q.double(), k.double(), cos.double(), sin.double())
    for name, x, out, ref, theirs, want in zip("qk", (q, k), got, reference.rotary(q, k, cos, sin),
                                                apply_rotary_pos_emb(q, k, cos, sin), exact):
        assert out.stride() == x.stride() and out.dtype == x.dtype, name
        assert bool(((out.double() - ref.double()).abs() <= _ulp(ref)).all()), f"{case}: {name} off the reference"
        ours, family = ((t.double() - want).abs().mean().item() for t in (out, theirs))
        assert ours <= family * 1.01 + 1e-12, f"{case}: {name} mean error {ours:.3g}, the family's {family:.3g}"


def test_converted_layer_rotates_in_one_launch_on_the_gpu_path(monkeypatch):
    """A converted layer on CUDA with the flex backend rotates through ``ops.rotary(impl="triton")`` without gradients
    and through the family's function with them; both agree within one rounding."""
    from rtpurbo.config import HeadPlan, SparseConfig
    from rtpurbo.convert import convert
    from rtpurbo.families import attention_modules, geometry
    from rtpurbo.testing import tiny_model

    model = tiny_model("llama").cuda().to(BF16)
    layers, n_kv, n_q, _ = geometry(model.config)
    convert(model, HeadPlan(layers, n_kv, n_q, [[0]] * layers), SparseConfig(impl="flex"))
    module = attention_modules(model)[0]
    calls = []
    real = api.rotary
    monkeypatch.setattr(api, "rotary", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    q, k, cos, sin = (t.cuda() for t in _inputs(("", 2, 3, n_q, n_kv, module.head_dim, "bfloat16", "projected")))
    with torch.no_grad():
        fast = module.rotate(q, k, (cos, sin))
    slow = module.rotate(q, k, (cos, sin))
    assert calls == [dict(impl="triton")]
    for a, b in zip(fast, slow):
        assert (a.float() - b.float()).abs().max() <= 2 * b.float().abs().max() * 2**-8
