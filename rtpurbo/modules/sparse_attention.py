"""``SparseAttention``: drop-in replacement for a Hugging Face attention module.

It reuses the base module's projections (``q_proj``/``k_proj``/``v_proj``/``o_proj``)
and per-head norms, so parameter names, PEFT targets and state-dict keys stay those
of the base model. Per layer, KV heads are split into two role groups:

* retrieval heads: full causal attention at prefill (the base model's own window if it
  has one); decode through the indexer's top-p selection when a cache is used;
* local heads: window ``W`` + ``S`` sinks (see :mod:`rtpurbo.ops.semantics`).

Every query head of a GQA group follows its KV head's role.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from .._compat import cache_from_kwargs
from ..config import SparseConfig
from ..families import Family
from ..ops import api as ops
from .indexer import LowRankIndexer


class SparseAttention(nn.Module):
    """Head-wise sparse attention for one layer.

    Args:
        base: the family's attention module (its submodules are reused, not copied).
        family: the family table row.
        retrieval_heads: KV-head indices of this layer that keep full attention.
        sparse: the sparse configuration (window, sinks, backend, ...).
        base_window: the base model's own sliding window for this layer, if any.
    """

    # where a forward without a cache records its sparse prefill (kept / visible key blocks); set for
    # the duration of a block by :func:`rtpurbo.selection_stats.recording_prefill`
    prefill_stats: Any = None

    def __init__(
        self,
        base: nn.Module,
        family: Family,
        retrieval_heads: list[int],
        num_q_heads: int,
        num_kv_heads: int,
        sparse: SparseConfig,
        base_window: int | None = None,
    ) -> None:
        super().__init__()
        self.layer_idx = base.layer_idx
        self.head_dim = base.head_dim
        self.scaling = base.scaling
        self.num_q_heads, self.num_kv_heads = num_q_heads, num_kv_heads
        self.group = num_q_heads // num_kv_heads
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = base.q_proj, base.k_proj, base.v_proj, base.o_proj
        if family.qk_norm:
            self.q_norm, self.k_norm = base.q_norm, base.k_norm
        self.family = family
        self._apply_rotary = family.apply_rotary()
        self.sparse = sparse
        self.base_window = base_window
        self.observer = None  # optional callable(module, q, k, positions), used by profiling and stage 1
        self.set_roles(retrieval_heads)

    # --- head bookkeeping ---------------------------------------------------------
    def set_roles(self, retrieval_heads: list[int]) -> None:
        """(Re)assign which KV heads are retrieval heads; all others are local.

        The layer gets a fresh (untrained) indexer for its retrieval heads, or none.
        """
        device = self.q_proj.weight.device
        self.retrieval_heads = sorted(retrieval_heads)
        self.local_heads = [h for h in range(self.num_kv_heads) if h not in set(self.retrieval_heads)]
        self._register_head_index(device)
        self.indexer = None
        if self.retrieval_heads:
            self.indexer = LowRankIndexer(
                len(self.retrieval_heads), self.group, self.head_dim, self.sparse.index_dim, self.sparse.index_rope_dims
            ).to(device)

    def _register_head_index(self, device: torch.device) -> None:
        """Index buffers: KV heads and query heads of each role, and the merge order."""
        def q_heads(kv_heads: list[int]) -> list[int]:
            return [kv * self.group + g for kv in kv_heads for g in range(self.group)]

        order = q_heads(self.retrieval_heads) + q_heads(self.local_heads)
        inverse = sorted(range(self.num_q_heads), key=lambda i: order[i])
        self.heads_contiguous = order == list(range(self.num_q_heads))
        for name, values in (
            ("kv_retrieval", self.retrieval_heads),
            ("kv_local", self.local_heads),
            ("q_retrieval", q_heads(self.retrieval_heads)),
            ("q_local", q_heads(self.local_heads)),
            ("q_merge", inverse),
        ):
            self.register_buffer(name, torch.tensor(values, dtype=torch.long, device=device), persistent=False)
        # the layer's query head of each role query head, retrieval first (one-launch decode writes through it)
        self.register_buffer("q_order", torch.tensor(order, dtype=torch.int32, device=device), persistent=False)

    def _take(self, x: torch.Tensor, index: torch.Tensor, n_before: int) -> torch.Tensor:
        """Heads ``index`` of x (B, H, L, D); a view when the roles are contiguous."""
        if self.heads_contiguous:
            return x[:, n_before : n_before + index.numel()]
        return x.index_select(1, index)

    def split_heads(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> dict[str, tuple]:
        """{"retrieval": (q, k, v), "local": (q, k, v)} with (B, H_role, L, D) tensors."""
        n_rq, n_rkv = self.q_retrieval.numel(), self.kv_retrieval.numel()
        if self.heads_contiguous:  # views, one split per tensor
            (qr, ql), (kr, kl), (vr, vl) = (
                x.split([n, x.shape[1] - n], dim=1) for x, n in ((q, n_rq), (k, n_rkv), (v, n_rkv))
            )
            return {"retrieval": (qr, kr, vr), "local": (ql, kl, vl)}
        return {
            "retrieval": (
                self._take(q, self.q_retrieval, 0),
                self._take(k, self.kv_retrieval, 0),
                self._take(v, self.kv_retrieval, 0),
            ),
            "local": (
                self._take(q, self.q_local, n_rq),
                self._take(k, self.kv_local, n_rkv),
                self._take(v, self.kv_local, n_rkv),
            ),
        }

    def merged_output(self, q: torch.Tensor) -> tuple[torch.Tensor | None, dict]:
        """For a forward without gradients: the layer's output buffer (B, L, Hq, D) and the ``out`` / ``out_heads``
        arguments of :func:`rtpurbo.ops.attention` that put the local heads' attention straight into it (the
        Triton window kernel writes there itself), for :meth:`merge_heads`'s ``into``. (None, {}) otherwise."""
        if torch.is_grad_enabled() or not self.local_heads:
            return None, {}
        batch, _, length, dim = q.shape
        merged = q.new_empty(batch, length, self.num_q_heads, dim)
        return merged, {"out": merged.transpose(1, 2), "out_heads": self.q_local}

    def merge_heads(self, retrieval_out: torch.Tensor | None, local_out: torch.Tensor | None,
                    into: torch.Tensor | None = None) -> torch.Tensor:
        """Inverse of :meth:`split_heads` for outputs (B, H_role, L, D), straight into the token layout
        ``o_proj`` reads: (B, L, Hq * D) in the module's head order, one copy of each part. ``into``: the
        :meth:`merged_output` buffer that already holds the local heads; only the retrieval heads are copied."""
        if into is not None:
            if retrieval_out is not None:
                if self.heads_contiguous:
                    into[:, :, : retrieval_out.shape[1]].copy_(retrieval_out.transpose(1, 2))
                else:
                    into.index_copy_(2, self.q_retrieval, retrieval_out.transpose(1, 2).to(into.dtype))
            return into.view(into.shape[0], into.shape[1], -1)
        parts = [(t, index) for t, index in ((retrieval_out, self.q_retrieval), (local_out, self.q_local))
                 if t is not None]
        batch, _, length, dim = parts[0][0].shape
        if len(parts) == 1:  # one role: its heads are all of them, in order
            return parts[0][0].transpose(1, 2).reshape(batch, length, -1)
        out = parts[0][0].new_empty(batch, length, self.num_q_heads, dim)
        start = 0
        for part, index in parts:
            if self.heads_contiguous:
                out[:, :, start : start + part.shape[1]].copy_(part.transpose(1, 2))
                start += part.shape[1]
            else:
                out.index_copy_(2, index, part.transpose(1, 2).to(out.dtype))  # roles may differ under autocast
        return out.view(batch, length, -1)

    # --- projections ----------------------------------------------------------------
    def project(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pre-RoPE q (B, Hq, L, D), k and v (B, Hkv, L, D), after the family's q/k norms."""
        batch, length, _ = hidden_states.shape
        q = self.q_proj(hidden_states).view(batch, length, -1, self.head_dim)
        k = self.k_proj(hidden_states).view(batch, length, -1, self.head_dim)
        v = self.v_proj(hidden_states).view(batch, length, -1, self.head_dim)
        if self.family.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def rotate(self, q_raw: torch.Tensor, k_raw: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Post-RoPE q (B, Hq, L, D) and k (B, Hkv, L, D): on the GPU path (CUDA, the ``flex`` backend) without
        gradients both in one launch (:func:`rtpurbo.ops.rotary`, rounded once), else the family's own
        ``apply_rotary_pos_emb`` (five kernels per tensor, rounded after each operation)."""
        cos, sin = rope
        if (q_raw.is_cuda and not torch.is_grad_enabled()
                and ops.resolve_impl(self.sparse.impl, q_raw.device) == "flex"):
            return ops.rotary(q_raw, k_raw, cos, sin, impl="triton")
        return self._apply_rotary(q_raw, k_raw, cos, sin)

    def retrieval_raw(self, q_raw: torch.Tensor, k_raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-RoPE q (B, Hr*G, L, D) and k (B, Hr, L, D) of the retrieval heads (indexer inputs)."""
        return self._take(q_raw, self.q_retrieval, 0), self._take(k_raw, self.kv_retrieval, 0)

    @staticmethod
    def token_positions(
        position_ids: torch.Tensor | None, padding_mask: torch.Tensor | None, batch: int, length: int, offset: int,
        device: torch.device,
    ) -> torch.Tensor:
        """(B, L) int64 positions of the current tokens; padding tokens get -1.

        A token's position is the number of real tokens before it in its row: with a padding mask that covers
        every token so far ((B, offset + L), as transformers passes it), positions are counted along the mask,
        whatever ``position_ids`` say (a left-padded row's first real token is position 0, so the sinks are its
        first real tokens; transformers' default ``position_ids`` count the padding). Otherwise
        ``position_ids``, or ``offset .. offset + L - 1`` without them. No host sync."""
        mask = None if padding_mask is None else padding_mask.to(device=device)
        if mask is not None and mask.shape[-1] == offset + length:
            positions = mask.to(torch.long).cumsum(-1)[:, -length:] - 1
        elif position_ids is None:
            positions = torch.arange(offset, offset + length, device=device)[None]
        else:
            positions = position_ids.to(device=device, dtype=torch.long)
        positions = positions.expand(batch, length)
        if mask is not None:
            valid = mask[:, -length:].to(torch.bool)
            positions = torch.where(valid, positions, torch.full_like(positions, -1))
        return positions

    # --- forward --------------------------------------------------------------------
    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        """hidden_states (B, L, hidden) -> (output (B, L, hidden), None)."""
        batch, length, _ = hidden_states.shape
        cache = cache_from_kwargs(kwargs)
        if cache is not None and not hasattr(cache, "attend"):
            raise TypeError(
                f"a converted model needs rtpurbo's head-wise cache, got {type(cache).__name__}; "
                "use rtpurbo.generate or pass use_cache=False"
            )
        if cache is None:
            positions = _NO_CACHE.positions(self, position_ids, attention_mask, batch, length, hidden_states.device)
        else:  # computed once per forward, shared by the layers
            positions = cache.token_positions(self, position_ids, attention_mask, batch, length, hidden_states.device)
        q_raw, k_raw, v = self.project(hidden_states)
        q, k = self.rotate(q_raw, k_raw, position_embeddings)
        if self.observer is not None:
            self.observer(self, q, k, positions)
        if cache is not None:
            out = cache.attend(self, q, k, v, positions, q_raw, k_raw, position_embeddings)
        else:
            out = self.attend_prefill(q, k, v, positions, q_raw, k_raw, position_embeddings)
        return self.o_proj(out), None

    def attend_prefill(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        positions: torch.Tensor,
        q_raw: torch.Tensor,
        k_raw: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        """Head-wise attention over the current tokens only (no cache). Returns (B, L, Hq * D)."""
        parts = self.split_heads(q, k, v)
        retrieval_out = local_out = None
        if self.retrieval_heads and self.sparse.retrieval_prefill == "sparse" and self.base_window is None:
            with torch.no_grad():  # the block choice is hard: no gradient flows through it
                q_idx, k_idx = self.index_vectors(q_raw, k_raw, rope)
            retrieval_out, kept, seen = self.sparse_prefill(*parts["retrieval"], positions, positions, q_idx, k_idx,
                                                            aligned=_NO_CACHE.is_plain(positions))
            if self.prefill_stats is not None:
                self.prefill_stats.record_prefill(self.layer_idx, kept, seen)
        elif self.retrieval_heads:
            key_mask = None
            if self.sparse.retrieval_prefill == "topp" and self.base_window is None:
                with torch.no_grad():  # a hard choice: no gradient flows through it, so build no graph
                    q_idx, k_idx = self.index_vectors(q_raw, k_raw, rope)
                    key_mask = self.select(q_idx, k_idx, positions, positions)
            qr, kr, vr = parts["retrieval"]
            plain, plan = (False, None) if key_mask is not None else _NO_CACHE.plan(self, positions, self.base_window, 0)
            retrieval_out = ops.attention(
                qr, kr, vr, positions, positions, window=self.base_window, key_mask=key_mask,
                scale=self.scaling, impl=self.sparse.impl, plain=plain, plan=plan,
            )
        merged, into_merged = self.merged_output(q)
        if self.local_heads:
            ql, kl, vl = parts["local"]
            plain, plan = _NO_CACHE.plan(self, positions, self.sparse.window, self.sparse.sinks)
            local_out = ops.attention(
                ql, kl, vl, positions, positions, window=self.sparse.window, sinks=self.sparse.sinks,
                scale=self.scaling, impl=self.sparse.impl, plain=plain, plan=plan, **into_merged,
            )
        return self.merge_heads(retrieval_out, local_out, into=merged)

    def sparse_prefill(self, q, k, v, q_pos, k_pos, q_idx, k_idx, tail: int | None = None, aligned: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Retrieval heads' sparse prefill (``retrieval_prefill == "sparse"``): q (B, Hr*G, Lq, D) over k, v
        (B, Hr, Lk, D) with indexer vectors q_idx (B, Hr, Lq, d_idx), k_idx (B, Hr, Lk, d_idx); the last ``tail``
        queries attend densely (None: ``prefill_dense_tail``); ``aligned`` as :func:`rtpurbo.ops.api.sparse_prefill`.
        Returns (out (B, Hr*G, Lq, D), kept key blocks (), visible key blocks ())."""
        cfg = self.sparse
        return ops.sparse_prefill(
            q, k, v, q_pos, k_pos, q_idx.detach(), k_idx.detach(), top_p=cfg.prefill_top_p,
            min_blocks=cfg.prefill_min_blocks, max_blocks=cfg.prefill_max_blocks, sinks=cfg.sinks,
            band=cfg.prefill_band, scale=self.scaling, impl=cfg.impl, scoring=cfg.prefill_scoring,
            tail=cfg.prefill_dense_tail if tail is None else tail, aligned=aligned,
        )

    # --- indexer --------------------------------------------------------------------
    def index_vectors(
        self, q_raw: torch.Tensor, k_raw: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Indexer queries and keys (B, Hr, L, d_idx) of the current tokens."""
        q_r, k_r = self.retrieval_raw(q_raw, k_raw)
        cos, sin = rope
        return self.indexer.queries(q_r, cos, sin), self.indexer.keys(k_r, cos, sin)

    def select(self, q_idx: torch.Tensor, k_idx: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """Top-p key selection (B, Hr, Lq, Lk) from indexer vectors, per the sparse config."""
        cfg = self.sparse
        return ops.select_topp(
            ops.indexer_scores(q_idx, k_idx), q_pos, k_pos, top_p=cfg.top_p, min_tokens=cfg.min_tokens,
            max_tokens=cfg.max_tokens, sinks=cfg.sinks, recent=cfg.recent,
        )

    def extra_repr(self) -> str:
        return (
            f"layer={self.layer_idx}, retrieval_kv_heads={self.retrieval_heads}, window={self.sparse.window}, "
            f"sinks={self.sparse.sinks}, impl={self.sparse.impl!r}"
        )


class _ForwardWithoutCache:
    """What the layers of one cache-free forward (training, teacher-forced scoring) share.

    The layers of a forward receive the same ``position_ids`` and padding-mask objects; the
    first layer computes the token positions, whether they are plain (``0..L-1`` in every row:
    one host check per forward, not per layer) and, per window, the attention plan.
    """

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.value: torch.Tensor | None = None
        self.plain = False
        self.plans: dict = {}

    def positions(self, module, position_ids, padding_mask, batch: int, length: int, device) -> torch.Tensor:
        key = (position_ids, padding_mask, batch, length, device)
        same = self.key is not None and self.key[0] is position_ids and self.key[1] is padding_mask
        if not (same and self.key[2:] == key[2:]):
            self.value = module.token_positions(position_ids, padding_mask, batch, length, 0, device)
            steps = torch.arange(length, device=device)
            self.plain = length > 1 and bool((self.value == steps).all())
            self.key, self.plans = key, {}
        return self.value

    def is_plain(self, positions: torch.Tensor) -> bool:
        """Whether ``positions`` are this forward's and every row holds 0..L-1."""
        return positions is self.value and self.plain

    def plan(self, module, positions: torch.Tensor, window: int | None, sinks: int):
        """(plain, ops.plan) for attention of ``positions`` over themselves, built once per forward."""
        if positions is not self.value:
            return False, None
        sparse = module.sparse
        key = (window, sinks, sparse.impl)
        if key not in self.plans:
            self.plans[key] = ops.plan(positions, positions, window=window, sinks=sinks, plain=self.plain,
                                       impl=sparse.impl, backward=torch.is_grad_enabled())
        return self.plain, self.plans[key]


_NO_CACHE = _ForwardWithoutCache()
