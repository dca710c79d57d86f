"""Public attention ops: validate shapes, then dispatch on an explicit ``impl=``.

Backends never import each other. Asking for a backend that is not available
raises; nothing falls back silently. ``impl="auto"`` picks the fastest backend
available for the tensors' device (``sdpa`` on CPU), and says which through
:func:`resolve_impl`.
"""
from __future__ import annotations

import importlib
from typing import Callable

import torch

from . import block_layout, reference
from .block_scores import block_roles
from .semantics import check_window

# name -> (module path, function name, available(device) predicate description)
_BACKENDS: dict[str, str] = {
    "reference": "rtpurbo.ops.reference",
    "sdpa": "rtpurbo.ops.sdpa",
    "flex": "rtpurbo.ops.flex",
}
_AUTO_ORDER = {"cuda": ("flex", "sdpa"), "cpu": ("sdpa",)}
ATTENTION_IMPLS = ("auto", *_BACKENDS)  # what SparseConfig.impl may name


class BackendUnavailable(RuntimeError):
    """The requested attention backend cannot run here."""


def _load_backend(table: dict[str, str], impl: str, op: str) -> Callable:
    """Function ``op`` of backend ``impl`` from ``table``; raises if unknown or unavailable here."""
    if impl not in table:
        raise ValueError(f"unknown {op} impl {impl!r}; choose one of {list(table)}")
    try:
        module = importlib.import_module(table[impl])
    except ImportError as err:
        raise BackendUnavailable(f"{op} impl {impl!r} is not available: {err}") from err
    available = getattr(module, "available", None)
    if available is not None and not available():
        raise BackendUnavailable(f"{op} impl {impl!r} is not available on this machine")
    return getattr(module, op)


def _load(impl: str) -> Callable:
    return _load_backend(_BACKENDS, impl, "attention")


def resolve_impl(impl: str, device: torch.device) -> str:
    """The concrete backend name ``impl`` stands for on ``device``."""
    if impl != "auto":
        return impl
    for name in _AUTO_ORDER.get(device.type, ("sdpa",)):
        try:
            _load(name)
            return name
        except BackendUnavailable:
            continue
    return "reference"


def _check_shapes(q, k, v, q_pos, k_pos, key_mask) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"q, k, v must be (B, H, L, D); got q{tuple(q.shape)}, k{tuple(k.shape)}, v{tuple(v.shape)}"
        )
    batch, n_q_heads, q_len, head_dim = q.shape
    if k.shape != v.shape or k.shape[0] != batch or k.shape[3] != head_dim:
        raise ValueError(f"k{tuple(k.shape)} and v{tuple(v.shape)} must match q{tuple(q.shape)} in B and D")
    if n_q_heads % k.shape[1] != 0:
        raise ValueError(f"query heads ({n_q_heads}) must be a multiple of KV heads ({k.shape[1]})")
    if tuple(q_pos.shape) != (batch, q_len):
        raise ValueError(f"q_pos must be (B, Lq) = {(batch, q_len)}, got {tuple(q_pos.shape)}")
    if tuple(k_pos.shape) != (batch, k.shape[2]):
        raise ValueError(f"k_pos must be (B, Lk) = {(batch, k.shape[2])}, got {tuple(k_pos.shape)}")
    if key_mask is not None and (key_mask.dtype != torch.bool or key_mask.dim() != 4):
        raise ValueError(f"key_mask must be a bool tensor broadcastable to (B, Hkv, Lq, Lk), got {key_mask.dtype}")


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    *,
    window: int | None = None,
    sinks: int = 0,
    key_mask: torch.Tensor | None = None,
    scale: float | None = None,
    impl: str = "auto",
    plain: bool = False,
    plan: object | None = None,
    out: torch.Tensor | None = None,
    out_heads: torch.Tensor | None = None,
    chunk_start: int | None = None,
) -> torch.Tensor:
    """Head-wise attention (full causal if ``window`` is None, else window + sinks).

    Shapes and conventions: see :mod:`rtpurbo.ops.reference`. Returns (B, Hq, Lq, D), or ``out``.

    Args:
        plain: the caller states that every row has ``q_pos == k_pos == 0..L-1`` (a first
            prefill chunk without padding); GPU backends then use their plain-prefill kernels
            without looking at the positions. Checked here only on the CPU, where it is free.
        plan: from :func:`plan` with the same positions, window and sinks (reused across layers).
        out: optional destination, (B, Hq, Lq, D); with ``out_heads`` (an integer (Hq,) tensor) it is
            (B, H_out, Lq, D) and query head ``h`` goes to ``out[:, out_heads[h]]`` (e.g. the local heads
            of a layer written straight into the layer's merged output). The Triton window kernel writes
            there itself; other kernels' results are copied in.
        chunk_start: the caller states that this is a later chunk of a plain prompt in the Triton window kernel's
            layout (:func:`rtpurbo.ops.triton.window.window_attention`): every row's queries are positions
            ``P..P+Lq-1`` and its keys the S sinks, the positions ``P-W..P-1`` in order (-1 where none), then the
            chunk's own keys (``k_pos`` says so). GPU backends may then skip the positions; checked here only on
            the CPU.
    """
    check_window(window, sinks)
    _check_shapes(q, k, v, q_pos, k_pos, key_mask)
    if plain and q_pos.device.type == "cpu":
        _check_plain(q_pos, k_pos)
    if chunk_start is not None and q_pos.device.type == "cpu":
        _check_chunk(q_pos, k_pos, chunk_start, window, sinks)
    name = resolve_impl(impl, q.device)
    extra = {"plan_": plan, "out": out, "out_heads": out_heads, "chunk_start": chunk_start} if name == "flex" else {}
    result = _load(name)(q, k, v, q_pos, k_pos, window=window, sinks=sinks, key_mask=key_mask, scale=scale,
                         plain=plain, **extra)
    return _into(result, out, out_heads)


def plan(
    q_pos: torch.Tensor, k_pos: torch.Tensor, *, window: int | None, sinks: int, plain: bool = False,
    impl: str = "auto", backward: bool = False,
) -> object | None:
    """Metadata of a multi-query :func:`attention` call that every call with the same positions,
    window and sinks can reuse (the layers of one forward): the flex block mask; None for the
    backends and cases that need none. Builds on the device, no host sync.

    Args: q_pos (B, Lq), k_pos (B, Lk) int64; the rest as in :func:`attention`;
    ``backward``: the plan will also serve a backward pass.
    """
    check_window(window, sinks)
    name = resolve_impl(impl, q_pos.device)
    q_len = q_pos.shape[-1]
    if name != "flex" or q_len == 1 or (plain and (window is None or window >= q_len)):
        return None
    return importlib.import_module(_BACKENDS["flex"]).plan(
        q_pos, k_pos, window=window, sinks=sinks, plain=plain, backward=backward
    )


def _check_plain(q_pos: torch.Tensor, k_pos: torch.Tensor) -> None:
    steps = torch.arange(q_pos.shape[-1], device=q_pos.device)
    if q_pos.shape != k_pos.shape or not bool(((q_pos == steps) & (k_pos == steps)).all()):
        raise ValueError("plain=True needs q_pos == k_pos == 0..L-1 in every row (no padding, no offset)")


def _check_chunk(q_pos: torch.Tensor, k_pos: torch.Tensor, start: int, window: int | None, sinks: int) -> None:
    q_len = q_pos.shape[-1]
    if window is None or start < sinks or k_pos.shape[-1] != sinks + window + q_len:
        raise ValueError(f"chunk_start={start} needs a window, a start at or after the {sinks} sinks and S + W + Lq "
                         f"keys; got window={window}, {k_pos.shape[-1]} keys for {q_len} queries")
    want = torch.arange(start - window, start)
    want = torch.cat([torch.arange(sinks), torch.where(want < sinks, -1, want), torch.arange(start, start + q_len)])
    if not bool((q_pos == torch.arange(start, start + q_len)).all()) or not bool(
            ((k_pos == want) | ((k_pos < 0) & (want < 0))).all()):
        raise ValueError(f"chunk_start={start} needs q_pos == {start}..{start + q_len - 1} and the sinks, positions "
                         f"{start - window}..{start - 1} (-1 where none) and the chunk as keys, in every row")


_TOPP_BACKENDS: dict[str, str] = {"reference": "rtpurbo.ops.reference", "triton": "rtpurbo.ops.triton.topp"}
DECODE_IMPLS = ("auto", *_TOPP_BACKENDS)  # what SparseConfig.decode_impl may name


def topp_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    q_idx: torch.Tensor,
    k_idx: torch.Tensor,
    *,
    top_p: float,
    min_tokens: int = 0,
    max_tokens: int | None = None,
    sinks: int = 0,
    recent: int = 0,
    scale: float | None = None,
    impl: str = "auto",
    after_scores: Callable[[], object] | None = None,
    out: torch.Tensor | None = None,
    out_heads: torch.Tensor | None = None,
    key_sums: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Retrieval-head attention over the indexer's top-p selection (decode).

    See :func:`rtpurbo.ops.reference.topp_attention`. Returns (out (B, Hq, Lq, D),
    selected-key counts (B, Hkv, Lq)). ``impl="auto"``: ``triton`` for one CUDA query
    per row when available, else ``reference``. ``after_scores``: called once, on the current stream, when the
    indexer scores are launched (``triton``, or from ``triton.topp.FORK_AFTER_LEVEL0_KEYS`` keys when level 0 of the
    search is; other backends: before anything), so that a caller can start work on another stream that does not
    take the GPU from the index-score kernel (the local heads of a layer).
    ``out`` / ``out_heads``: a destination as in :func:`attention` (returned as the output); the Triton backend's
    combine writes there itself (no copy launch), the reference's result is copied in.
    ``key_sums``: (B, Hkv, 2) int64 running sums of the selected and the visible keys that the call adds to
    (:func:`rtpurbo.ops.reference.add_key_sums`); the Triton backend's combine adds them itself (no launch of its own).
    """
    _check_shapes(q, k, v, q_pos, k_pos, None)
    if q_idx.shape[:3] != (k.shape[0], k.shape[1], q.shape[2]) or k_idx.shape[:3] != k.shape[:3]:
        raise ValueError(
            f"q_idx must be (B, Hkv, Lq, d) and k_idx (B, Hkv, Lk, d); got q_idx{tuple(q_idx.shape)}, "
            f"k_idx{tuple(k_idx.shape)} for k{tuple(k.shape)}"
        )
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if key_sums is not None and (tuple(key_sums.shape) != (k.shape[0], k.shape[1], 2)
                                 or key_sums.dtype != torch.int64 or key_sums.device != q.device):
        raise ValueError(f"key_sums must be ({k.shape[0]}, {k.shape[1]}, 2) int64 on {q.device}; got "
                         f"{tuple(key_sums.shape)} {key_sums.dtype} on {key_sums.device}")
    if impl == "auto":
        impl = "reference"
        if q.is_cuda and q.shape[2] == 1:
            try:
                _load_backend(_TOPP_BACKENDS, "triton", "topp_attention")
                impl = "triton"
            except BackendUnavailable:
                pass
    fn = _load_backend(_TOPP_BACKENDS, impl, "topp_attention")
    hook = {}
    if impl == "triton":
        hook = dict(after_scores=after_scores, out=out, out_heads=out_heads, key_sums=key_sums)
    elif after_scores is not None:
        after_scores()
    result, counts = fn(
        q, k, v, q_pos, k_pos, q_idx, k_idx, top_p=top_p, min_tokens=min_tokens, max_tokens=max_tokens,
        sinks=sinks, recent=recent, scale=scale, **hook,
    )
    if key_sums is not None and impl != "triton":
        reference.add_key_sums(key_sums, counts, q_pos, k_pos)
    return _into(result, out, out_heads), counts


_ROTARY_BACKENDS: dict[str, str] = {"reference": "rtpurbo.ops.reference", "triton": "rtpurbo.ops.triton.rotary"}


def rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, impl: str = "reference"
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary position embedding of q (B, Hq, L, D) and k (B, Hkv, L, D) by cos, sin (B, L, D), rotate-half layout,
    rounded once (:func:`rtpurbo.ops.reference.rotary`). ``impl="triton"``: both in one launch on a GPU, the outputs
    in the inputs' strides (:mod:`rtpurbo.ops.triton.rotary`)."""
    _check_rotary(q, k, cos, sin)
    return _load_backend(_ROTARY_BACKENDS, impl, "rotary")(q, k, cos, sin)


def _check_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"q and k must be (B, H, L, D) with the same B, L and D; got q{tuple(q.shape)}, "
                         f"k{tuple(k.shape)}")
    batch, _, length, head_dim = q.shape
    if head_dim % 2:
        raise ValueError(f"the rotate-half rotation needs an even head dim, got {head_dim}")
    for name, table in (("cos", cos), ("sin", sin)):
        if tuple(table.shape) != (batch, length, head_dim):
            raise ValueError(f"{name} must be (B, L, D) = {(batch, length, head_dim)} (a rotation of every dim of the "
                             f"head); got {tuple(table.shape)}")
    devices = {t.device for t in (q, k, cos, sin)}
    if len(devices) != 1:
        raise ValueError(f"q, k, cos and sin must be on one device, got {sorted(map(str, devices))}")
    if not (q.dtype.is_floating_point and k.dtype == q.dtype and cos.dtype.is_floating_point
            and sin.dtype == cos.dtype):
        raise ValueError(f"q and k must share a float dtype, and cos and sin another; got {q.dtype}, {k.dtype}, "
                         f"{cos.dtype}, {sin.dtype}")


def _into(result: torch.Tensor, out: torch.Tensor | None, out_heads: torch.Tensor | None) -> torch.Tensor:
    """``result`` (B, Hq, Lq, D) in ``out`` (as :func:`attention`'s ``out`` / ``out_heads`` say), unless a backend
    wrote it there itself or there is no ``out``."""
    if out is None or result is out:
        return result
    if out_heads is None:
        return out.copy_(result)
    return out.index_copy_(1, out_heads.to(device=out.device, dtype=torch.long), result.to(out.dtype))  # as copy_ casts


def sparse_prefill(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    q_idx: torch.Tensor,
    k_idx: torch.Tensor,
    *,
    top_p: float,
    min_blocks: int = 0,
    max_blocks: int | None = None,
    sinks: int = 0,
    band: int = 1,
    scale: float | None = None,
    impl: str = "auto",
    scoring: str = "pooled",
    tail: int = 0,
    aligned: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sparse prefill of retrieval heads: causal attention over the key blocks of ``BLOCK_SIZE`` positions that
    :func:`rtpurbo.ops.reference.select_blocks` keeps (top-p over indexer block scores by ``scoring``, the
    sink blocks and the local band always). ``top_p = 1`` is dense causal attention. The last ``tail``
    queries of the call attend densely (:func:`rtpurbo.ops.reference.block_sparse_attention`): with a
    chunked prefill, the last ``tail`` of every chunk, at most ``tail`` x keys more pairs per chunk.

    Args:
        q: (B, Hq, Lq, D); k, v: (B, Hkv, Lk, D); q_pos (B, Lq), k_pos (B, Lk), keys in position order.
        q_idx: (B, Hkv, Lq, d_idx); k_idx: (B, Hkv, Lk, d_idx).
        aligned: the caller states that every row holds an unpadded prompt's forward starting on a block: key slot
            ``j`` holds position ``j`` and query slot ``i`` position ``Lk - Lq + i``, ``Lk - Lq`` a multiple of
            ``BLOCK_SIZE`` (so slot blocks are position blocks); otherwise the tokens are laid out by position first
            (:mod:`rtpurbo.ops.block_layout`: gathers of the retrieval heads' q, k, v and indexer vectors).
            Checked here only on the CPU. Without gradients on CUDA, aligned calls run the kernels
            :func:`rtpurbo.ops.flex.set_sparse_prefill_kernel` chose.
    Returns:
        out (B, Hq, Lq, D), kept blocks () and the blocks their query blocks see at all (), summed.
    """
    _check_shapes(q, k, v, q_pos, k_pos, None)
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if tail < 0:
        raise ValueError(f"tail must be >= 0, got {tail}")
    name = resolve_impl(impl, q.device)
    budget = dict(top_p=top_p, min_blocks=min_blocks, max_blocks=max_blocks, sinks=sinks, band=band, scoring=scoring)
    if top_p >= 1.0:  # every block it sees: the dense prefill itself, exactly
        lq, lk = block_layout.lay_out(q_pos, BLOCK_SIZE), block_layout.lay_out(k_pos, BLOCK_SIZE)
        seen = block_roles(lq.pos, lk.pos, BLOCK_SIZE, sinks, band)[0].sum() * q_idx.shape[1]
        return _load(name)(q, k, v, q_pos, k_pos, scale=scale), seen, seen
    if aligned:
        if q_pos.device.type == "cpu" and not _is_aligned(q_pos, k_pos):
            raise ValueError("aligned=True, but the slots are not an unpadded prompt's positions on whole blocks "
                             f"(padding, or a forward that starts inside a block of {BLOCK_SIZE})")
        backend = _triton_sparse_prefill(name, q, k, v)
        if backend is not None:  # the block choice, the attention and the tail on the Triton kernels
            return backend.aligned_sparse_prefill(q, k, v, q_pos, k_pos, q_idx, k_idx,
                                               q.shape[-1] ** -0.5 if scale is None else scale, budget, tail)
        out, kept, seen = _block_sparse(name, q, k, v, q_pos, k_pos, q_idx, k_idx, scale, budget)
    else:
        lq, lk = block_layout.lay_out(q_pos, BLOCK_SIZE), block_layout.lay_out(k_pos, BLOCK_SIZE)
        take = block_layout.take
        out, kept, seen = _block_sparse(name, take(q, lq), take(k, lk), take(v, lk), lq.pos, lk.pos, take(q_idx, lq),
                                        take(k_idx, lk), scale, budget)
        out = block_layout.put_back(out, lq)
    if tail:  # the last queries of the call over every key they see (no in-place write: autograd keeps out)
        first = max(0, q.shape[2] - tail)
        out = torch.cat([out[:, :, :first], _dense(name, q[:, :, first:], k, v, q_pos[:, first:], k_pos, scale)],
                        dim=2)
    return out, kept, seen


def _is_aligned(q_pos: torch.Tensor, k_pos: torch.Tensor) -> bool:
    """Every row: keys at positions ``0..Lk-1``, queries at ``Lk-Lq..Lk-1``, ``Lk - Lq`` a multiple of
    ``BLOCK_SIZE`` (reads the positions: CPU checks)."""
    k_len, q_len = k_pos.shape[-1], q_pos.shape[-1]
    slots = torch.arange(k_len, device=k_pos.device)
    return (k_len - q_len) % BLOCK_SIZE == 0 and bool((k_pos == slots).all() and (q_pos == slots[k_len - q_len:]).all())


def _triton_sparse_prefill(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """The flex backend module where an aligned call runs on the Triton kernels (the flex backend, no gradients,
    :func:`rtpurbo.ops.flex.set_sparse_prefill_kernel`: ``triton``, or ``auto`` for tensors the kernels take), else
    None."""
    if name != "flex" or (torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))):
        return None
    flex = importlib.import_module(_BACKENDS["flex"])
    choice = flex.sparse_prefill_kernel()
    if choice == "flex" or (choice == "auto" and not flex.triton_sparse_prefill_takes(q, k, v)):
        return None
    return flex


def _block_sparse(name: str, q, k, v, q_pos, k_pos, q_idx, k_idx, scale: float | None, budget: dict
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`sparse_prefill` without its tail, on tensors whose slot blocks are position blocks."""
    if name == "flex":
        from . import flex_plans

        flex = importlib.import_module(_BACKENDS["flex"])
        plan_, kept, seen = flex_plans.block_sparse_plan(q_idx, k_idx, q_pos, k_pos, group=q.shape[1] // k.shape[1],
                                                         backward=q.requires_grad, **budget)
        return flex.run(plan_, q, k, v, q.shape[-1] ** -0.5 if scale is None else scale), kept, seen
    blocks = reference.select_blocks(q_idx, k_idx, q_pos, k_pos, block=BLOCK_SIZE, **budget)
    key_mask = reference.blocks_to_keys(blocks, BLOCK_SIZE, q.shape[2], k.shape[2])
    seen = reference.select_blocks(q_idx, k_idx, q_pos, k_pos, block=BLOCK_SIZE, top_p=1.0, sinks=budget["sinks"],
                                   band=budget["band"])
    out = _load(name)(q, k, v, q_pos, k_pos, key_mask=key_mask, scale=scale)
    return out, blocks.sum(), seen.sum()


def _dense(name: str, q, k, v, q_pos, k_pos, scale: float | None) -> torch.Tensor:
    """Causal attention by positions of queries over every key they see (a sparse prefill's dense tail)."""
    if name == "flex":
        flex = importlib.import_module(_BACKENDS["flex"])
        return flex.dense_tail(q, k, v, q_pos, k_pos, q.shape[-1] ** -0.5 if scale is None else scale)
    return _load(name)(q, k, v, q_pos, k_pos, scale=scale)


BLOCK_SIZE = 128  # key / query blocks of the sparse prefill (flex's block-mask tile)
indexer_scores = reference.indexer_scores
select_topp = reference.select_topp
