"""GPU attention backend: same contract as :func:`rtpurbo.ops.reference.attention`.

Which path runs, decided per call from the arguments alone (never from tensor values, so no
call waits for the GPU):

1. ``Lq == 1`` (decode): the Triton split-K kernel of :mod:`rtpurbo.ops.triton.decode` over the
   keys it is given. CUDA-graph capturable.
2. ``plain=True`` -- the caller states that every row has ``q_pos == k_pos == 0..L-1`` (a first
   prefill chunk without padding; :class:`rtpurbo.cache.HeadwiseCache` knows this from its own
   state) and there is no ``key_mask``:

   * full causal (``window`` None, or ``window >= L``, which sees the same keys): SDPA with
     ``is_causal``, cuDNN backend first, GQA-native (``enable_gqa``, no K/V repeat);
   * window + sinks, no gradient: the Triton window kernel of :mod:`rtpurbo.ops.triton.window`
     (GQA-native, reads the model's q/k/v views in place; 1.2x flex's speed on an H200) whenever
     :func:`~rtpurbo.ops.triton.window.unsupported` accepts the tensors (fp16 / bf16, head dim a
     power of two up to 256, contiguous last dim); or, after ``set_window_kernel("cudnn")``, cuDNN's banded SDPA
     with the sinks merged in by log-sum-exp (:mod:`rtpurbo.ops.cudnn_window`), which raises where it cannot run;
   * window + sinks otherwise (gradients, other dtypes or head dims): compiled ``flex_attention``
     with an index-only mask and a block mask built arithmetically from the band (no L x L tensor
     anywhere), cached per length. Both paths are fused; neither materialises scores.
3. ``chunk_start=P`` -- the caller states that this is a later chunk of a plain prompt with its keys
   in position order (the sinks, positions ``P-W..P-1``, the chunk; the head-wise cache unrolls its
   ring so), no gradient, no ``key_mask``: the same Triton window kernel, in its chunk layout, when
   it accepts the tensors.
4. Anything else (padding, other chunk layouts, ring buffers, ``key_mask``): compiled
   ``flex_attention`` whose mask reads the position tensors (and ``key_mask``); its block mask
   comes from per-block position ranges, so a local head still skips the blocks outside its
   window. :func:`rtpurbo.ops.flex_plans.plan` builds it once; every layer of a forward can reuse it.

Compiled-path guarantees (steady state never recompiles, never runs unfused):

* lengths are padded to multiples of 128 (empty slots at position -1), so the kernel always
  runs without bounds checks and no length changes the compiled variant;
* each mask kind has its own compiled entry (its own dynamo cache); mask functions are defined
  once at module level (:mod:`rtpurbo.ops.flex_plans`) and read their data from closure tensors, which dynamo
  guards by shape and dtype only (dynamic shapes), never by object identity;
* entries compile with ``fullgraph=True``: if dynamo would recompile past its limit it raises
  :class:`FlexRecompileError` instead of running flex unfused (which materialises L x L scores).
"""
from __future__ import annotations

import functools
import os
import types
from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import AuxRequest, BlockMask, flex_attention

from . import cudnn_window
from .flex_plans import BLOCK, FlexPlan, plan
from .semantics import check_window

try:
    from .triton import block_sparse as block_sparse_kernels
    from .triton import decode as decode_kernels
    from .triton import window as window_kernels
except ImportError:  # triton missing (CPU-only install): available() is False
    block_sparse_kernels = decode_kernels = window_kernels = None

class _KernelChoice:
    """A process-wide choice among ``choices``; the environment variable ``env`` sets the initial one."""

    def __init__(self, what: str, env: str, choices: tuple[str, ...], default: str) -> None:
        self.what, self.env, self.choices = what, env, choices
        self.name = os.environ.get(env, default)

    def set(self, name: str) -> str:
        """Choose ``name``; returns the previous choice."""
        if name not in self.choices:
            raise ValueError(f"{self.what} must be one of {self.choices}, got {name!r}")
        previous, self.name = self.name, name
        return previous

    def get(self) -> str:
        """The current choice (one from the environment is checked here, when it is first used)."""
        if self.name not in self.choices:
            raise ValueError(f"{self.env} must be one of {self.choices}, got {self.name!r}")
        return self.name


WINDOW_KERNELS = ("triton", "cudnn")  # plain window + sinks prefill without gradients: rtpurbo's Triton kernel, cuDNN
_window_choice = _KernelChoice("window kernel", "RTPURBO_WINDOW_KERNEL", WINDOW_KERNELS, "triton")


def set_window_kernel(name: str) -> str:
    """Choose the kernel of plain window + sinks prefill without gradients (process-wide; the environment
    variable ``RTPURBO_WINDOW_KERNEL`` sets the initial choice). Returns the previous choice."""
    return _window_choice.set(name)


def window_kernel() -> str:
    """The current choice of :func:`set_window_kernel`."""
    return _window_choice.get()


# retrieval heads' aligned sparse prefill without gradients: the Triton kernels where they take the tensors, else flex
SPARSE_PREFILL_KERNELS = ("auto", "triton", "flex")
_sparse_prefill_choice = _KernelChoice("sparse prefill kernel", "RTPURBO_SPARSE_PREFILL_KERNEL",
                                       SPARSE_PREFILL_KERNELS, "auto")


def set_sparse_prefill_kernel(name: str) -> str:
    """Choose the kernels of the retrieval heads' sparse prefill for aligned calls without gradients (the model's
    unpadded prompts; process-wide, ``RTPURBO_SPARSE_PREFILL_KERNEL`` sets the initial choice):

    * ``auto`` (default): ``triton`` wherever :func:`triton_sparse_prefill_takes` the tensors (fp16 / bf16, head dim
      a power of two up to 256, contiguous last dim; decided from dtypes and shapes, no value read), ``flex``
      otherwise. On an H200 the Triton kernels made a Llama-3.1-8B-geometry layer 1.08x (32K) and 1.13x (128K)
      faster than flex (``benchmarks/results/llama-3.1-8b_h200_2026-12-05_sparse-prefill-kernels.md``);
    * ``triton``: the block choice, the attention and the dense tail as Triton kernels
      (:mod:`rtpurbo.ops.triton.block_sparse`), which raise where they cannot run;
    * ``flex``: the block choice in PyTorch ops and compiled flex attention over its block mask.

    Both keep the same blocks (the flex path ranks tied blocks in top-k's order, the Triton one lower blocks first,
    as the reference). Padded or unaligned calls and calls with gradients always run flex. Returns the previous
    choice."""
    return _sparse_prefill_choice.set(name)


def triton_sparse_prefill_takes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether the Triton sparse-prefill kernels run an aligned call on these tensors (dtypes, shapes and strides
    only)."""
    return block_sparse_kernels is not None and block_sparse_kernels.unsupported(q, k, v) is None


def sparse_prefill_kernel() -> str:
    """The current choice of :func:`set_sparse_prefill_kernel`."""
    return _sparse_prefill_choice.get()


_SDPA_ORDER = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
# lengths are multiples of BLOCK, so the flex template may skip its bounds checks (an internal
# option of the template; under dynamic shapes inductor cannot prove divisibility itself). TMA loads
# ("USE_TMA") made the window kernel 8 % faster on an H200 when compiled for static shapes, but the
# template turns them off under the dynamic shapes these entries need (benchmarks/window_kernels.py).
_KERNEL_OPTIONS = {"IS_DIVISIBLE": True}


class FlexRecompileError(RuntimeError):
    """Compiled flex attention would recompile past dynamo's limit (and then run unfused)."""


def available() -> bool:
    """True with a CUDA device and Triton (flex attention itself ships with torch >= 2.5)."""
    return decode_kernels is not None and torch.cuda.is_available()


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
    plain: bool = False,
    plan_: FlexPlan | None = None,
    out: torch.Tensor | None = None,
    out_heads: torch.Tensor | None = None,
    chunk_start: int | None = None,
) -> torch.Tensor:
    """See :func:`rtpurbo.ops.reference.attention`. Returns (B, Hq, Lq, D) in ``q.dtype``.

    Args:
        q: (B, Hq, Lq, D); k, v: (B, Hkv, Lk, D); q_pos: (B, Lq); k_pos: (B, Lk) int64.
        key_mask: optional bool, broadcastable to (B, Hkv, Lq, Lk).
        plain: the caller's statement that positions are ``0..L-1`` in every row (not checked).
        plan_: a :func:`plan` of these positions, window and sinks (built here if None).
        out, out_heads: where the Triton window kernel writes (see :func:`rtpurbo.ops.api.attention`, which
            copies the other paths' results there); returned when written.
        chunk_start: the caller's statement that the keys are in the window kernel's later-chunk layout (see
            :func:`rtpurbo.ops.api.attention`; not checked).
    """
    check_window(window, sinks)
    if not q.is_cuda:
        raise ValueError(f"the flex backend needs CUDA tensors; got q{tuple(q.shape)} on {q.device}")
    batch, n_q_heads, q_len, head_dim = q.shape
    group = n_q_heads // k.shape[1]
    scale = head_dim**-0.5 if scale is None else scale
    if q_len == 1:
        out, _ = decode_kernels.decode_attention(
            q, k, v, q_pos, k_pos, scale=scale, window=window, sinks=sinks, key_mask=key_mask
        )
        return out
    if plain and key_mask is None and (window is None or window >= q_len):
        return _causal_sdpa(q, k, v, scale, group)
    if (plain or chunk_start is not None) and key_mask is None and window is not None and not _needs_grad(q, k, v):
        if plain and window_kernel() == "cudnn":
            return cudnn_window.window_attention(q, k, v, window=window, sinks=sinks, scale=scale, out=out,
                                                 out_heads=out_heads)
        n_keys = window_kernels.key_slots(q_len, window, sinks, chunk_start)
        if window_kernels.unsupported(q, k, v, out=out, n_keys=n_keys) is None:
            return window_kernels.window_attention(q, k, v, window=window, sinks=sinks, scale=scale,
                                                   chunk_start=chunk_start, out=out, out_heads=out_heads)
    if plan_ is None:
        plan_ = plan(q_pos, k_pos, window=window, sinks=sinks, plain=plain, key_mask=key_mask, group=group,
                     backward=_needs_grad(q, k, v))
    return run(plan_, q, k, v, scale)


def _needs_grad(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)


def run(plan_: FlexPlan, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Compiled flex attention of q (B, Hq, Lq, D) over k, v (B, Hkv, Lk, D) under ``plan_``.

    K/V are copied into head-contiguous buffers padded to the plan's lengths: flex reads the
    model's head-interleaved K/V views at about half its rate (71 vs 37 ms per layer of local
    heads at 128K on an H200), and the copy costs ~0.2 ms there.
    """
    q_len = q.shape[2]
    q = _pad_length(q, plan_.q_len)
    k, v = _pad_length(k, plan_.k_len, copy=True), _pad_length(v, plan_.k_len, copy=True)
    return _call(plan_.kind, q, k, v, plan_.block_mask, scale)[:, :, :q_len]


def _call(kind: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: BlockMask, scale: float):
    """The compiled entry of ``kind`` for the variant of padded q, k, v; a clear error where dynamo would give up
    compiling."""
    variant = _variant(q, k, v)
    try:
        return _compiled(kind, variant)(q, k, v, block_mask, scale, q.shape[1] > k.shape[1], _KERNEL_OPTIONS)
    except torch._dynamo.exc.FailOnRecompileLimitHit as err:
        raise FlexRecompileError(
            f"compiled flex attention ({kind} mask, variant {variant}) hit dynamo's recompile limit "
            f"(torch._dynamo.config.recompile_limit = {torch._dynamo.config.recompile_limit}) at q{tuple(q.shape)}, "
            f"k{tuple(k.shape)}; rtpurbo does not run flex unfused (it would materialise the L x L scores). "
            "TORCH_LOGS=recompiles shows which guard failed."
        ) from err


# --- compiled entries ------------------------------------------------------------------------
# One function per mask kind, compiled per variant (_variant) under a code object of its own: dynamo keeps its
# compiled graphs and its recompile budget (recompile_limit, 8) per code object, and specialises a flex graph on
# dtype, head counts, head dims, a batch of one and gradients. So the mask kinds and variants a process mixes
# (layers with different numbers of local heads, training and eval, other models) never spend each other's
# budget; within a variant the lengths are dynamic.
def _flex_index(q, k, v, block_mask, scale, gqa, options):
    return flex_attention(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=gqa, kernel_options=options)


def _flex_position(q, k, v, block_mask, scale, gqa, options):
    return flex_attention(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=gqa, kernel_options=options)


def _flex_key_mask(q, k, v, block_mask, scale, gqa, options):
    return flex_attention(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=gqa, kernel_options=options)


def _flex_blocks(q, k, v, block_mask, scale, gqa, options):
    return flex_attention(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=gqa, kernel_options=options)


def _flex_dense_tail(q, k, v, block_mask, scale, gqa, options):
    return flex_attention(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=gqa, kernel_options=options)


_WITH_LSE = AuxRequest(lse=True)


def _flex_dense_tail_split(q, k, v, block_mask, scale, gqa, options):
    out, aux = flex_attention(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=gqa, kernel_options=options,
                              return_aux=_WITH_LSE)
    return out, aux.lse


_ENTRIES: dict[str, Callable] = {"index": _flex_index, "position": _flex_position, "key_mask": _flex_key_mask,
                                 "blocks": _flex_blocks, "dense_tail": _flex_dense_tail,
                                 "dense_tail_split": _flex_dense_tail_split}


def _variant(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple:
    """What a compiled flex graph specialises on besides lengths: (dtype, batch of one, query heads, KV heads,
    head dim, value head dim, gradients)."""
    return (str(q.dtype).removeprefix("torch."), q.shape[0] == 1, q.shape[1], k.shape[1], q.shape[3], v.shape[3],
            _needs_grad(q, k, v))


@functools.cache
def _compiled(kind: str, variant: tuple) -> Callable:
    """The compiled entry of a mask kind for one variant: its function under a code object of its own (its own
    dynamo cache and recompile budget); dynamic shapes, whole graph or an error."""
    entry = _ENTRIES[kind]
    name = f"{entry.__name__}__" + "_".join(str(part) for part in variant)
    code = entry.__code__.replace(co_name=name)
    return torch.compile(types.FunctionType(code, entry.__globals__, name, entry.__defaults__, entry.__closure__),
                         dynamic=True, fullgraph=True)


# --- sparse prefill of retrieval heads ---------------------------------------------------------
TAIL_SPLIT_KEYS = 16384  # keys per part of a long dense tail (flex runs one program per query block and head)


def dense_tail(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor,
               scale: float, split_keys: int = TAIL_SPLIT_KEYS) -> torch.Tensor:
    """Causal attention (by positions) of a sparse prefill's last queries q (B, Hq, T, D) over every key k, v
    (B, Hkv, Lk, D); q_pos (B, T), k_pos (B, Lk). Its own compiled entries: its shapes (T fixed, Lk growing)
    never spend the recompile budget of the model's other position-mask calls (the local heads').

    Flex gives a few query blocks one program each per head, which leaves most of a GPU idle over many keys;
    so without gradients, keys past ``split_keys`` are split into parts of that many (:func:`tail_parts`), each
    part a batch row of one flex call that also returns its log-sum-exp, and the parts merge by them
    (:func:`merge_tail_parts`)."""
    if split_keys <= 0 or split_keys % BLOCK:
        raise ValueError(f"split_keys must be a positive multiple of {BLOCK}, got {split_keys}")
    backward = _needs_grad(q, k, v)
    if backward or k.shape[2] <= split_keys:
        tail_plan = plan(q_pos, k_pos, window=None, sinks=0, group=q.shape[1] // k.shape[1], backward=backward)
        return run(FlexPlan("dense_tail", tail_plan.block_mask, tail_plan.q_len, tail_plan.k_len), q, k, v, scale)
    queries, keys, values, query_pos, key_pos = tail_parts(q, k, v, q_pos, k_pos, split_keys)
    tail_plan = plan(query_pos, key_pos, window=None, sinks=0, group=q.shape[1] // k.shape[1])
    out, lse = _call("dense_tail_split", _pad_length(queries, tail_plan.q_len), keys, values, tail_plan.block_mask,
                     scale)
    tail = q.shape[2]
    return merge_tail_parts(out[:, :, :tail], lse[:, :, :tail], q.shape[0]).to(q.dtype)


def tail_parts(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor,
               split_keys: int) -> tuple[torch.Tensor, ...]:
    """The keys in P = ceil(Lk / split_keys) parts as batch rows, each with every query: q (B, Hq, T, D), k, v
    (B, Hkv, Lk, D), q_pos (B, T), k_pos (B, Lk) -> q (B*P, Hq, T, D), k, v (B*P, Hkv, split_keys, D)
    head-contiguous (zero keys at position -1 pad the last part), q_pos (B*P, T), k_pos (B*P, split_keys);
    row b*P + p is batch row b's part p."""
    batch, n_q, tail, dim = q.shape
    parts = -(-k.shape[2] // split_keys)
    length = parts * split_keys

    def by_part(x: torch.Tensor) -> torch.Tensor:
        x = _pad_length(x, length).view(batch, x.shape[1], parts, split_keys, dim)
        return x.transpose(1, 2).reshape(batch * parts, x.shape[1], split_keys, dim)

    key_pos = F.pad(k_pos, (0, length - k_pos.shape[1]), value=-1).view(batch * parts, split_keys)
    query_pos = q_pos[:, None].expand(batch, parts, tail).reshape(batch * parts, tail)
    queries = q[:, None].expand(batch, parts, n_q, tail, dim).reshape(batch * parts, n_q, tail, dim)
    return queries, by_part(k), by_part(v), query_pos, key_pos


def merge_tail_parts(out: torch.Tensor, lse: torch.Tensor, batch: int) -> torch.Tensor:
    """Softmax outputs of the parts, out (B*P, Hq, T, D), and their natural log-sum-exps lse (B*P, Hq, T)
    (-inf: the query saw no key of that part) -> the attention over all parts (B, Hq, T, D), fp32; a query that
    saw no key at all gets zeros."""
    parts = out.shape[0] // batch
    out = out.reshape(batch, parts, *out.shape[1:]).float()
    weight = torch.softmax(lse.reshape(batch, parts, *lse.shape[1:]).float(), dim=1).nan_to_num(0.0)
    return (out * weight[..., None]).sum(1)


def aligned_sparse_prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor,
                           q_idx: torch.Tensor, k_idx: torch.Tensor, scale: float, budget: dict, tail: int = 0
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The sparse prefill of an aligned call without gradients through the Triton kernels, its dense tail included
    (:func:`rtpurbo.ops.triton.block_sparse.sparse_prefill`; ``budget``: its top_p ... scoring keywords). Returns
    (out, kept blocks (), seen blocks ())."""
    return block_sparse_kernels.sparse_prefill(q, k, v, q_pos, k_pos, q_idx, k_idx, scale=scale, tail=tail, **budget)


# --- helpers ---------------------------------------------------------------------------------
def _pad_length(x: torch.Tensor, length: int, copy: bool = False) -> torch.Tensor:
    """x (B, H, L, D) as (B, H, length, D), zeros after L; head-contiguous when ``copy``."""
    if x.shape[2] == length:
        return x.contiguous() if copy else x
    out = x.new_zeros(x.shape[0], x.shape[1], length, x.shape[3])
    out[:, :, : x.shape[2]] = x
    return out


def _causal_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, group: int) -> torch.Tensor:
    with sdpa_kernel(_SDPA_ORDER, set_priority=True):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=group > 1)
