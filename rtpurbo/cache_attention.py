"""How one layer's forward attends through :class:`rtpurbo.cache.HeadwiseCache`: which kernels run.

:class:`LayerAttention` is the part of the cache that routes a forward of ``L`` new tokens, per kind of head, to
:mod:`rtpurbo.ops` (the storage, positions and writes are :mod:`rtpurbo.cache` and :mod:`rtpurbo.cache_layer`):

* a prefill chunk: local heads over [ring + chunk] (the first chunk over its own keys, writing the layer output in
  place), retrieval heads causal over their store, or over their ring on a windowed base layer, or on the sparse
  prefill (``SparseConfig.retrieval_prefill``);
* a decode step: both kinds of heads in one launch when the retrieval heads read every key
  (:func:`rtpurbo.ops.triton.decode_roles.two_role_decode`); when they select, the local heads on a side stream
  overlapping the selection chain, forked once the index scores are launched (so that the ring does not take SMs
  from them; from :data:`rtpurbo.ops.triton.topp.FORK_AFTER_LEVEL0_KEYS` cached keys, once level 0 of the search is
  launched); in static (graphed) decode the token goes into both stores in one append kernel.
"""
from __future__ import annotations

import contextlib
import functools

import torch

from . import cache_layer
from .cache_layer import LayerCache
from .ops import api as ops


@functools.cache
def _triton_append():
    """:mod:`rtpurbo.ops.triton.append`, or None without Triton (imported once)."""
    try:
        from .ops.triton import append
    except ImportError:
        return None
    return append


@functools.cache
def _triton_decode():
    """:mod:`rtpurbo.ops.triton.decode_roles`, or None without Triton (imported once)."""
    try:
        from .ops.triton import decode_roles
    except ImportError:
        return None
    return decode_roles


def _append_kernels(like: torch.Tensor):
    """:mod:`rtpurbo.ops.triton.append` where it can run on ``like``'s device (CUDA + Triton), else None."""
    return _triton_append() if like.is_cuda else None


class LayerAttention:
    """The attention routing of :class:`rtpurbo.cache.HeadwiseCache` (a mixin: it reads the cache's storage, state
    and settings through ``self``)."""

    def attend(self, module, q, k, v, positions, q_raw, k_raw, rope) -> torch.Tensor:
        """Attention of ``L`` new tokens of one layer through the cache. Returns (B, L, Hq * D).

        q (B, Hq, L, D) and k, v (B, Hkv, L, D) post-RoPE; q_raw / k_raw pre-RoPE; positions (B, L).
        """
        layer = self._layer(module, k)
        if layer.r_window is not None and not layer.r_ring and layer.r_len + q.shape[2] > layer.r_window:
            cache_layer.to_ring(layer)  # the appended store would outgrow the base window
        if self.static_capacity is not None:
            if q.shape[2] != 1:
                raise ValueError(f"static decode takes one token per forward, got {q.shape[2]}: this cache was switched "
                                 "to static decode (static_decode, or generate(cuda_graph=True)); start a new "
                                 "HeadwiseCache to feed several tokens")
            if module.retrieval_heads and not layer.r_ring and layer.r_len >= self.static_capacity:
                raise ValueError(f"static decode cache is full ({self.static_capacity} slots)")
        parts = module.split_heads(q, k, v)
        q_idx = k_idx = None
        if module.retrieval_heads and module.indexer is not None:
            q_idx, k_idx = module.index_vectors(q_raw, k_raw, rope)
        kernels = _append_kernels(k) if self.static_capacity is not None else None
        if kernels is not None:
            return self._attend_static_fused(kernels, module, layer, parts, q_idx, k_idx, positions)
        if q.shape[2] == 1 and layer.seen > 0 and self._one_launch_step(module, layer.r_len + 1, q.device):
            # decode without selection: write the token to both stores, then one launch for both kinds of heads
            self._write_ring(layer, *parts["local"][1:], positions)
            self._store_retrieval(layer, *parts["retrieval"][1:], k_idx, positions)
            return self._attend_two_roles(module, layer, parts, positions)
        local_out = retrieval_out = merged = None
        if module.local_heads:
            ql, kl, vl = parts["local"]
            one_token = q.shape[2] == 1 and layer.seen > 0
            if not one_token:  # a prefill chunk: the local heads write the layer output in place
                merged, into_merged = module.merged_output(q)
            if layer.seen == 0:  # a fresh ring holds nothing: attend over the chunk's own keys
                local_out = self._local_attention(module, ql, kl, vl, positions, positions, first=True, **into_merged)
            elif one_token:
                # decode: write first, then attend over the ring alone (no copy of it). The slot the
                # token takes held position p - W (or nothing), outside the window of query p.
                self._write_ring(layer, kl, vl, positions)
                local_out = self._local_attention(module, ql, layer.l_k, layer.l_v, layer.l_pos, positions)
            else:  # a later chunk: its queries still need the keys its own tokens will overwrite
                local_out = self._local_chunk(module, layer, ql, kl, vl, positions, **into_merged)
            if not one_token:
                self._write_ring(layer, kl, vl, positions)
        if module.retrieval_heads:
            qr, kr, vr = parts["retrieval"]
            if layer.r_ring and q.shape[2] > 1:  # a prefill chunk: its queries need the slots its tokens overwrite
                retrieval_out = self._ring_retrieval_chunk(module, layer, qr, kr, vr, positions)
                self._store_retrieval(layer, kr, vr, k_idx, positions)
            else:  # a ring's slot for the new token held position p - W_b, outside the window of query p
                self._store_retrieval(layer, kr, vr, k_idx, positions)
                retrieval_out = self._retrieval_attention(module, layer, qr, q_idx, positions)
        layer.seen += q.shape[2]
        return module.merge_heads(retrieval_out, local_out, into=merged)

    def _attend_static_fused(self, kernels, module, layer: LayerCache, parts, q_idx, k_idx, positions
                             ) -> torch.Tensor:
        """Static decode on a GPU: the token goes into both roles' storage in one kernel launch
        (``kernels``: :mod:`rtpurbo.ops.triton.append`), then the local heads attend over their ring
        on a side stream while the retrieval heads run their chain of small, latency-bound kernels
        (scores, selection, attention) on the current one (:meth:`_local_step`)."""
        sparse = self.sparse
        kernels.append_token(
            layer, *(parts["retrieval"][1:] if module.retrieval_heads else (None, None)), k_idx,
            *(parts["local"][1:] if module.local_heads else (None, None)), positions,
            sinks=sparse.sinks, window=sparse.window, retrieval_ring=layer.r_window if layer.r_ring else 0,
        )
        if module.retrieval_heads and layer.r_ring:  # each row wrote its own ring slot
            layer.r_len += 1
        elif module.retrieval_heads:
            self._advance_static(layer)
        local_out = retrieval_out = None
        both = module.local_heads and module.retrieval_heads
        if self._one_launch_step(module, layer.r_len, positions.device):
            return self._attend_two_roles(module, layer, parts, positions)
        side = self._side_stream(positions.device) if self.overlap_roles and both and positions.is_cuda else None
        main = None if side is None else torch.cuda.current_stream(positions.device)
        # both kinds of heads write the layer's output (B, 1, Hq, D) in the module's head order themselves: no copy
        # launches to merge them after the step
        merged = module.merged_output(parts["local"][0])[0] if both else None
        local_into = retrieval_into = {}
        if merged is not None:
            local_into = dict(out=merged.transpose(1, 2), out_heads=module.q_local)
            retrieval_into = dict(out=merged.transpose(1, 2), out_heads=module.q_retrieval)

        def local_step() -> None:
            nonlocal local_out
            if side is not None:
                side.wait_stream(main)  # q and the written ring are ready
            with contextlib.nullcontext() if side is None else torch.cuda.stream(side):
                beside = side is not None and self._step_selects(module, layer.r_len)
                local_out = self._local_step(module, parts["local"][0], layer, positions, beside=beside,
                                             **local_into)

        if module.local_heads and side is None:
            local_step()
        if module.retrieval_heads:  # on a side stream, the local heads start once the index scores (or level 0) launch
            retrieval_out = self._retrieval_attention(
                module, layer, parts["retrieval"][0], q_idx, positions, after_scores=None if side is None else local_step,
                **retrieval_into)
        if side is not None:
            main.wait_stream(side)  # the next layer reuses side's memory only after its own wait on main
        layer.seen += 1
        if merged is not None:
            return merged.view(merged.shape[0], merged.shape[1], -1)
        return module.merge_heads(retrieval_out, local_out)

    def _one_launch_step(self, module, cached: int, device: torch.device) -> bool:
        """Whether a one-token step of this layer, with ``cached`` retrieval keys stored (the new one included),
        runs both kinds of heads in one launch: the layer has both, ``fuse_roles`` is on, the retrieval heads do not
        select (:meth:`_step_selects`), and the step runs on CUDA with Triton and the flex backend (whose one-query
        path is the same Triton kernel)."""
        if self.prompt_slots is not None and self.sparse.retrieval_prefill != "dense":
            return False  # a one-token chunk of a prompt: its retrieval heads follow the sparse / topp prefill rule
        return (bool(module.local_heads and module.retrieval_heads) and self.fuse_roles
                and not self._step_selects(module, cached) and device.type == "cuda" and _triton_decode() is not None
                and ops.resolve_impl(self.sparse.impl, device) == "flex")

    def _attend_two_roles(self, module, layer: LayerCache, parts, positions) -> torch.Tensor:
        """Decode of one token per row (written to both stores), the retrieval heads over every key (no selection),
        with both kinds of heads in one attention launch and one combine
        (:func:`rtpurbo.ops.triton.decode_roles.two_role_decode`). Returns (B, 1, Hq * D) in the module's head
        order. A step that selects keeps two launches: its local heads overlap the selection's chain of
        latency-bound kernels on a side stream, which one launch after the selection would not (measured slower)."""
        decode_roles = _triton_decode()
        sparse = self.sparse
        keys, values, _, key_pos = self._retrieval_view(layer)
        out, _ = decode_roles.two_role_decode(
            parts["retrieval"][0], keys, values, key_pos, parts["local"][0], layer.l_k, layer.l_v, layer.l_pos,
            positions, scale=module.scaling, window=sparse.window, sinks=sparse.sinks, heads=module.q_order,
            ret_window=module.base_window,
        )
        layer.seen += 1
        return out

    def _side_stream(self, device: torch.device) -> torch.cuda.Stream:
        """The local heads' stream beside a selecting step, at the default priority, like the stream a decode graph is
        captured on: a graph with the retrieval heads' chain at high priority, or with the ring at high priority, was
        no faster (within 1 us per layer, H100,
        ``benchmarks/results/llama-3.1-8b_h100_2026-12-07_stream-priorities.md``)."""
        stream = self._streams.get(device)
        if stream is None:
            stream = self._streams[device] = torch.cuda.Stream(device)
        return stream

    def _local_attention(self, module, q, keys, values, key_pos, positions, first: bool = False,
                         chunk_start: int | None = None, **into) -> torch.Tensor:
        """Window + sinks attention of the local heads' queries q (B, Hl*G, L, D) over the given keys.

        ``first``: the keys are the forward's own tokens (a fresh ring), plain if the forward is; ``chunk_start``:
        see :func:`rtpurbo.ops.attention`; ``into``: ``out`` / ``out_heads`` of :func:`rtpurbo.ops.attention`
        (:meth:`SparseAttention.merged_output`)."""
        sparse = self.sparse
        plain, plan = self._prefill_plan("local", sparse.window, positions, key_pos, first)
        return ops.attention(q, keys, values, positions, key_pos, window=sparse.window, sinks=sparse.sinks,
                             scale=module.scaling, impl=sparse.impl, plain=plain, plan=plan, chunk_start=chunk_start,
                             **into)

    def _local_step(self, module, q, layer: LayerCache, positions, beside: bool, **into) -> torch.Tensor:
        """One decode step of the local heads' queries q (B, Hl*G, 1, D) over their ring. ``beside``: on a side stream
        beside the retrieval heads' selection; where the flex backend runs rtpurbo's Triton decode kernel anyway, it
        then runs in the launch shape that leaves room for the selection's kernels
        (:func:`rtpurbo.ops.triton.decode_roles.ring_beside_selection`). ``into``: ``out`` / ``out_heads`` of
        :func:`rtpurbo.ops.attention`."""
        sparse = self.sparse
        if beside and _triton_decode() is not None and ops.resolve_impl(sparse.impl, positions.device) == "flex":
            return _triton_decode().ring_beside_selection(q, layer.l_k, layer.l_v, layer.l_pos, positions,
                                                          scale=module.scaling, window=sparse.window,
                                                          sinks=sparse.sinks, **into)
        return self._local_attention(module, q, layer.l_k, layer.l_v, layer.l_pos, positions, **into)

    def _local_chunk(self, module, layer: LayerCache, q, k, v, positions, **into) -> torch.Tensor:
        """Window + sinks attention of a later prefill chunk's local heads: q (B, Hl*G, L, D) over the ring and the
        chunk's own k, v (B, Hl, L, D), in the order of :meth:`_ring_and_chunk`."""
        keys, values, key_pos, start = self._ring_and_chunk(layer.l_k, layer.l_v, layer.l_pos, k, v, positions,
                                                            layer.seen, self.sparse.sinks)
        return self._local_attention(module, q, keys, values, key_pos, positions, chunk_start=start, **into)

    def _ring_retrieval_chunk(self, module, layer: LayerCache, q, k, v, positions) -> torch.Tensor:
        """Attention of a prefill chunk's retrieval heads whose store is a ring (``r_ring``), within the base window
        W_b: q (B, Hr*G, L, D) over the ring and the chunk's own k, v (B, Hr, L, D) in the order of
        :meth:`_ring_and_chunk`, or over the chunk alone into a fresh cache. Returns (B, Hr*G, L, D); the chunk is
        written to the ring afterwards."""
        window = module.base_window
        first = layer.seen == 0
        if first:
            keys, values, key_pos, start = k, v, positions, None
        else:
            keys, values, key_pos, start = self._ring_and_chunk(layer.r_k, layer.r_v, layer.r_pos, k, v, positions,
                                                                layer.seen, sinks=0)
        plain, plan = self._prefill_plan("retrieval", window, positions, key_pos, first)
        return ops.attention(q, keys, values, positions, key_pos, window=window, scale=module.scaling,
                             impl=self.sparse.impl, plain=plain, plan=plan, chunk_start=start)

    def _ring_and_chunk(self, k_store, v_store, store_pos, k, v, positions, start: int, sinks: int
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int | None]:
        """Keys of a later prefill chunk over ``sinks`` slots then a ring of W (k_store, v_store (B, H, S + W, D),
        store_pos (B, S + W)) and the chunk's own k, v (B, H, L, D) at positions (B, L): (keys, values
        (B, H, S + W + L, D), key positions (B, S + W + L), chunk_start). In a plain prompt past its sinks they go
        in position order (the sinks, the ring unrolled to the W positions before the chunk, the chunk: ``chunk_start``
        = ``start``, the chunk's first position, of :func:`rtpurbo.ops.attention`, the Triton window kernel's
        layout); otherwise in slot order (``chunk_start`` None)."""
        f = self._shared(positions)
        if f is None or not f.continues or start < sinks:
            keys, values = torch.cat([k_store, k], dim=2), torch.cat([v_store, v], dim=2)
            return keys, values, torch.cat([store_pos, positions], dim=1), None
        turn = -((start - sinks) % (store_pos.shape[1] - sinks))  # ring slot S + (p - S) % W -> index p - (start - W)

        def ordered(store: torch.Tensor, new: torch.Tensor, dim: int) -> torch.Tensor:  # sinks, ring, chunk
            head, ring = store.narrow(dim, 0, sinks), store.narrow(dim, sinks, store.shape[dim] - sinks)
            return torch.cat([head, ring.roll(turn, dims=dim), new], dim=dim)

        return ordered(k_store, k, 2), ordered(v_store, v, 2), ordered(store_pos, positions, 1), start

    def _prefill_plan(self, role: str, window: int | None, positions, key_pos, first: bool):
        """(plain, plan) of a multi-token attention call of this forward: the plan is built by the first layer
        that needs it and reused by the others (every layer holds the same positions). (False, None) at decode."""
        f = self._shared(positions)
        if positions.shape[1] == 1 or f is None:
            return False, None
        plain = first and f.plain
        key = (role, window, plain)
        if key not in f.plans:
            sinks = self.sparse.sinks if role == "local" else 0
            f.plans[key] = ops.plan(positions, key_pos, window=window, sinks=sinks, plain=plain, impl=self.sparse.impl,
                                    backward=torch.is_grad_enabled())
        return plain, f.plans[key]

    def _retrieval_attention(self, module, layer: LayerCache, q, q_idx, positions, after_scores=None,
                             **into) -> torch.Tensor:
        """Retrieval heads' queries q (B, Hr*G, L, D) over their stored keys (the new ones included): the
        indexer's top-p selection at decode; at prefill full causal attention, the indexer's block
        selection (``retrieval_prefill == "sparse"``; q_idx: this forward's indexer queries) or every query's
        token selection (``topp``). ``after_scores``: called once, when the selection's index scores are launched
        (from ``FORK_AFTER_LEVEL0_KEYS`` cached keys: level 0 of its search; :func:`rtpurbo.ops.api.topp_attention`),
        or first where this step does not select. ``into``: ``out`` / ``out_heads`` of :func:`rtpurbo.ops.attention`
        (one-token steps only)."""
        sparse = self.sparse
        keys, values, key_idx, key_pos = self._retrieval_view(layer)
        # a chunk of a prompt (prefilling_prompt) follows the prefill rule even when it holds one token
        prompt = q.shape[2] > 1 or self.prompt_slots is not None
        decode = not prompt and self._step_selects(module, layer.r_len)
        if after_scores is not None and not decode:
            after_scores()
        if into and prompt:
            raise ValueError("a prefill chunk's retrieval heads return their output; out / out_heads are for decode")
        if prompt and sparse.retrieval_prefill == "sparse" and module.base_window is None:
            tail = None  # the module's own: this forward's last prefill_dense_tail queries
            if self.prompt_slots is not None:  # the prompt's last ones that fall in this chunk
                end = layer.seen + q.shape[2]
                tail = max(0, min(q.shape[2], end - (self.prompt_slots - sparse.prefill_dense_tail)))
            f = self._shared(positions)  # an unpadded prompt whose chunk starts on a block: slots are blocks already
            aligned = f is not None and (f.plain or (f.continues and layer.seen % ops.BLOCK_SIZE == 0))
            out, kept, seen = module.sparse_prefill(q, keys, values, positions, key_pos, q_idx, key_idx, tail=tail,
                                                    aligned=aligned)
            self.stats.record_prefill(module.layer_idx, kept, seen)
            return out
        if prompt and sparse.retrieval_prefill == "topp" and module.base_window is None:
            with torch.no_grad():  # every query over its indexer's token selection, as without a cache
                key_mask = module.select(q_idx, key_idx, positions, key_pos)
            return ops.attention(q, keys, values, positions, key_pos, window=None, key_mask=key_mask,
                                 scale=module.scaling, impl=sparse.impl)
        if not decode:
            first = layer.r_len == q.shape[2]  # the keys are this forward's own tokens
            plain, plan = self._prefill_plan("retrieval", module.base_window, positions, key_pos, first)
            return ops.attention(q, keys, values, positions, key_pos, window=module.base_window,
                                 scale=module.scaling, impl=sparse.impl, plain=plain, plan=plan, **into)
        key_sums = self.stats.step_sums(module.layer_idx, q.shape[0], keys.shape[1], q.device)
        out, _ = ops.topp_attention(
            q, keys, values, positions, key_pos, q_idx, key_idx,
            top_p=sparse.top_p, min_tokens=sparse.min_tokens, max_tokens=sparse.max_tokens,
            sinks=sparse.sinks, recent=sparse.recent, scale=module.scaling, impl=sparse.decode_impl,
            after_scores=after_scores, key_sums=key_sums, **into,
        )
        return out
