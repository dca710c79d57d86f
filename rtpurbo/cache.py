"""Head-wise KV cache: it really is smaller.

Per layer:

* retrieval KV heads keep K and V of every token, plus their ``d_idx``-wide indexer keys
  (storage grows by doubling); on a layer where the base model has its own sliding window
  ``W_b`` (``module.base_window``: Mistral's ``sliding_window``, Qwen's windowed layers) they
  attend within it, so their storage stops growing at ``W_b`` slots and then becomes a ring
  of ``W_b`` slots (no sinks), as the base model's own cache holds only its window;
* local KV heads keep ``S`` sink slots and a ring of ``W`` slots: never more than ``S + W``
  entries, whatever the context.

Every slot carries its token position (``-1`` = empty or padding), so attention masks
come from :mod:`rtpurbo.ops.semantics` and the ring needs no ordering. A layer's tensors and their writes are
:mod:`rtpurbo.cache_layer`; what the heads keep is counted in :mod:`rtpurbo.selection_stats`. Stock
transformers caches are per layer, not per head, so this one is ours; it subclasses
``transformers.Cache`` only so that ``generate()`` accepts it.

Forward semantics with a cache (``L`` new tokens):

* local heads attend over [cached slots + the new tokens] with window + sinks, then the
  new tokens are written to the ring (only those still inside the window); a single-token
  forward (decode) writes its token first and attends over the ring alone (the slot it
  takes held a token outside the window);
* retrieval heads append the new tokens; a multi-token forward (prefill chunk) runs
  full causal attention, a single-token forward (decode) attends over the indexer's
  top-p selection (full attention when ``top_p == 1``);
* retrieval heads whose store is a ring (a windowed base layer past ``W_b`` tokens) attend
  within ``W_b`` as local heads do within ``W``: a prefill chunk over [ring + the new tokens],
  then the tokens are written; a single-token forward writes first, then attends over the ring.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from typing import Iterator

import torch
from transformers import Cache

from . import cache_layer
from .cache_layer import ROW_FIELDS, LayerCache, ring_slots
from .families import attention_modules
from .ops import api as ops
from .selection_stats import SelectionStats


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


@dataclass
class _Forward:
    """Values that every layer of one model forward shares, computed by the first layer that needs them.

    All layers of a forward get the same ``position_ids`` and padding-mask objects and start
    from the same cache length ``seen``; that is how :meth:`HeadwiseCache.token_positions`
    recognises the forward. The other values are only handed out for this ``positions`` object.
    """

    seen: int
    shape: tuple[int, int]  # (B, L)
    device: torch.device
    position_ids: torch.Tensor | None
    padding_mask: torch.Tensor | None
    positions: torch.Tensor  # (B, L) int64, -1 = padding
    plain: bool = False  # a first forward whose rows are positions 0..L-1 (HeadwiseCache.plain_prompt)
    continues: bool = False  # a later forward of a plain prompt: every row holds positions seen..seen+L-1
    plans: dict = field(default_factory=dict)  # (role, window) -> ops.plan of this forward's prefill attention
    ring_slots: dict = field(default_factory=dict)  # decode: (sinks, window) -> HeadwiseCache._ring_slot
    visible: tuple[int, torch.Tensor] | None = None  # decode: (r_len, () visible keys summed over rows)


class HeadwiseCache(Cache):
    """Head-wise KV cache for a model converted by :func:`rtpurbo.convert.convert`.

    Args:
        model: the converted model (its attention modules define the roles).
        initial_capacity: first allocation of retrieval slots (grows by doubling).
    """

    def __init__(self, model: torch.nn.Module, initial_capacity: int = 256) -> None:
        super().__init__(layers=[])
        if getattr(model, "rtpurbo_plan", None) is None:
            raise ValueError("HeadwiseCache needs a model converted by rtpurbo.convert.convert")
        self.plan = model.rtpurbo_plan
        self.sparse = model.rtpurbo_sparse
        self.initial_capacity = initial_capacity
        self.store: list[LayerCache | None] = [None] * self.plan.num_layers
        self.stats = SelectionStats()
        self._forward: _Forward | None = None
        self.static_capacity: int | None = None  # set by static_decode()
        # the GraphedDecoder that a converted model's forward hands one-token steps to (generate(cuda_graph=True))
        self.graphed_decoder = None
        # Set by whoever feeds the first forward when every row of it holds positions 0..L-1 (no
        # padding): that forward then runs the plain-prefill kernels (cuDNN causal for retrieval
        # heads, an index-only window mask for local heads) without reading the positions back, and so do
        # the later chunks of the same prompt. rtpurbo.prefill.prefill checks its inputs once and passes it
        # to prefilling_prompt, which clears it when the prompt is in; nothing here checks it.
        self.plain_prompt = False
        # The cache slots a prompt being prefilled in chunks fills (prefilling_prompt); None: not known, and the
        # sparse prefill's dense tail covers each forward's own last queries.
        self.prompt_slots: int | None = None
        # decode on a GPU: a step without selection runs both kinds of heads of a layer in one launch
        # (two_role_decode) where the backends are rtpurbo's kernels; a static step that selects runs the local
        # heads on a side stream, overlapping the retrieval heads' selection
        self.fuse_roles = True
        self.overlap_roles = True
        self._streams: dict[torch.device, torch.cuda.Stream] = {}

    @contextlib.contextmanager
    def prefilling_prompt(self, tokens: int, plain: bool | None = None) -> Iterator[None]:
        """While the next ``tokens`` tokens of a prompt are prefilled (in chunks of any size): the sparse prefill's
        dense tail (``prefill_dense_tail``) covers the prompt's last slots, in whichever chunks hold them, as a
        one-shot prefill would. ``plain`` (where given) sets :attr:`plain_prompt` for these chunks; it is cleared
        afterwards, so a later forward (another turn, padded or not) never passes for this prompt's chunks."""
        self.prompt_slots = self.get_seq_length() + tokens
        if plain is not None:
            self.plain_prompt = plain
        try:
            yield
        finally:
            self.prompt_slots = None
            self.plain_prompt = False

    # --- what transformers asks of a cache ----------------------------------------------
    def __len__(self) -> int:
        return len(self.store)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        layer = self.store[layer_idx] if layer_idx < len(self.store) else None
        return 0 if layer is None else layer.seen

    def get_mask_sizes(self, query_length, layer_idx: int = 0) -> tuple[int, int]:
        length = query_length if isinstance(query_length, int) else int(query_length.shape[-1])
        return self.get_seq_length(layer_idx) + length, 0

    def get_query_offset(self, layer_idx: int = 0) -> int:
        return self.get_seq_length(layer_idx)

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return -1

    @property
    def is_compileable(self) -> bool:
        return False

    @property
    def is_initialized(self) -> bool:
        return self.store[0] is not None

    @property
    def is_sliding(self) -> list[bool]:
        return [False] * len(self.store)

    @property
    def is_linear(self) -> list[bool]:
        return [False] * len(self.store)

    @property
    def is_dummy(self) -> list[bool]:
        return [False] * len(self.store)

    def crop(self, max_length: int) -> None:
        raise NotImplementedError("HeadwiseCache cannot be cropped (local heads have already dropped old tokens)")

    # --- rows: beam search and several sequences per prompt --------------------------------
    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: row ``i`` becomes the current row ``beam_idx[i]`` (beam_idx (B,) int64). In place, so the
        buffers a CUDA graph replays stay where they are. Every row of a layer shares its slot layout (padding
        included), so rows move whole."""
        for layer in self.store:
            if layer is not None:
                for tensor in layer.tensors():
                    tensor.copy_(tensor.index_select(0, beam_idx.to(tensor.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Each row ``repeats`` times in its place (rows [a, b] -> [a, a, b, b]), as transformers' ``generate()``
        expands a prompt for ``num_beams`` / ``num_return_sequences``."""
        if repeats != 1:
            self._map_rows(lambda tensor: tensor.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep the rows ``indices`` (a (B',) index or boolean tensor) in that order."""
        self._map_rows(lambda tensor: tensor[indices.to(tensor.device)])

    def repeat_batch(self, times: int = 2) -> None:
        """Tile the batch: rows ``[0..B)`` become ``[0..B) * times`` (e.g. to branch decoding)."""
        self._map_rows(lambda tensor: tensor.repeat(times, *([1] * (tensor.dim() - 1))))

    def _map_rows(self, rows) -> None:
        """Replace every batch-first tensor ``t`` of every layer by ``rows(t)`` (a new batch size). Refused while
        a graphed decoder holds this batch's buffers."""
        if self.graphed_decoder is not None:
            raise ValueError("the batch of a HeadwiseCache decoding from CUDA graphs cannot change size (the graphs "
                             "hold its buffers); change the rows before generate(cuda_graph=True) starts decoding")
        for layer in self.store:
            if layer is not None:
                for name, tensor in zip(ROW_FIELDS, layer.tensors()):
                    setattr(layer, name, rows(tensor))
        self._forward = None

    # --- memory -------------------------------------------------------------------------
    def allocated_bytes(self) -> int:
        """Bytes of every tensor the cache holds (capacity, not just used slots)."""
        return sum(t.numel() * t.element_size() for layer in self.store if layer for t in layer.tensors())

    def used_bytes(self) -> int:
        """Bytes of filled K/V/indexer slots (what a perfectly sized cache would hold)."""
        total = 0
        for layer in self.store:
            if layer is None:
                continue
            per_slot = (2 * layer.r_k.shape[-1] + layer.r_idx.shape[-1]) * layer.r_k.element_size()
            slots = min(layer.r_len, layer.r_pos.shape[1]) if layer.r_ring else layer.r_len
            total += slots * layer.r_k.shape[0] * layer.r_k.shape[1] * per_slot
            total += layer.l_k.numel() * layer.l_k.element_size() * 2
        return total

    @torch.no_grad()
    def fill_random(self, model: torch.nn.Module, length: int) -> None:
        """Fill every layer as if ``length`` tokens (positions ``0..length-1``, batch 1) had been prefilled.

        K, V and indexer keys are standard normal (global RNG): the values mean nothing, the layout and sizes are
        those of a real prefill. For benchmarks of memory and decode time at contexts whose real
        prefill would take hours. Retrieval storage is allocated once at
        ``max(length, initial_capacity)`` slots, so no transient copy doubles it (on a layer with a base window
        ``W_b``: at most ``W_b`` slots, a ring holding the last ``W_b`` positions when ``length`` is longer).
        """
        if self.is_initialized:
            raise ValueError("fill_random needs an empty HeadwiseCache")
        sinks, window = self.sparse.sinks, self.sparse.window
        self.initial_capacity = max(self.initial_capacity, length)
        kept = torch.cat([torch.arange(min(sinks, length)), torch.arange(max(sinks, length - window), length)])
        for module in attention_modules(model):
            weight = module.k_proj.weight
            template = torch.empty(1, module.num_kv_heads, 0, module.head_dim, dtype=weight.dtype, device=weight.device)
            layer = self._layer(module, template)
            if layer.r_window is not None and length > layer.r_window:
                cache_layer.to_ring(layer)
            filled = min(length, layer.r_pos.shape[1])
            for t in (layer.r_k, layer.r_v, layer.r_idx):
                t[:, :, :filled].normal_()
            stored = torch.arange(length - filled, length, device=weight.device)  # a ring's slot of p is p % W_b
            layer.r_pos[:, stored % layer.r_pos.shape[1]] = stored
            layer.r_len = length
            if module.local_heads:
                shape = (1, len(module.local_heads), kept.numel(), module.head_dim)
                k = torch.randn(shape, dtype=weight.dtype, device=weight.device)
                v = torch.randn(shape, dtype=weight.dtype, device=weight.device)
                self._write_ring(layer, k, v, kept.to(weight.device)[None])
            layer.seen = length

    # --- static-shape decode (CUDA graphs) ------------------------------------------------
    def static_decode(self, capacity: int) -> None:
        """Switch to static-shape decode, after the prompt was prefilled normally.

        Every layer's retrieval storage is resized to exactly ``capacity`` slots (the empty ones
        at position -1) and gets a device-side slot counter ``r_next`` (1,). From then on each
        forward takes one token per row: it writes its retrieval K/V/indexer key/position at
        slot ``r_next`` (``index_copy_``), increments ``r_next`` in place and attends over all
        ``capacity`` slots, so no tensor shape and no value baked into the launched kernels
        changes from step to step. Pass ``position_ids`` (B, 1) with -1 for padding rows; an
        ``attention_mask`` is not needed. On a layer with a base window ``W_b`` below ``capacity`` the
        retrieval storage is a ring of ``W_b`` slots instead (written at each row's slot ``p % W_b``, as
        the local heads' ring is; no ``r_next``), so it stays bounded however long the decode.

        The Python counters (``seen``, ``r_len``, ``stats.samples``) are still advanced by every
        step that runs Python (eager). Steps replayed from a CUDA graph run no Python: their
        caller advances the counters (:meth:`host_counters` / :meth:`set_host_counters`, as
        :class:`rtpurbo.decode_graph.GraphedDecoder` does) and must keep ``r_len < capacity``
        (a full cache raises in eager steps; a replay past it would index out of bounds).
        """
        if not self.is_initialized:
            raise ValueError("static_decode needs a prefilled HeadwiseCache (run the prompt through it first)")
        for layer in self.store:
            if layer is None:
                continue
            if capacity < layer.r_len + 1:
                raise ValueError(f"capacity {capacity} leaves no slot for decode: {layer.r_len} slots are used")
            if layer.r_window is not None and capacity > layer.r_window and not layer.r_ring:
                cache_layer.to_ring(layer)
            if layer.r_ring:
                continue
            if layer.r_pos.shape[1] != capacity:
                cache_layer.resize(layer, capacity)
            layer.r_next = torch.tensor([layer.r_len], dtype=torch.long, device=layer.r_pos.device)
        self.static_capacity = capacity

    def host_counters(self) -> dict[str, list[int]]:
        """Python-side counters that decode steps advance: per layer ``seen``, ``r_len``, stats samples."""
        return {
            "seen": [0 if layer is None else layer.seen for layer in self.store],
            "r_len": [0 if layer is None else layer.r_len for layer in self.store],
            "samples": [self.stats.samples.get(i, 0) for i in range(len(self.store))],
        }

    def set_host_counters(self, counters: dict[str, list[int]]) -> None:
        """Inverse of :meth:`host_counters` (layers without samples stay without)."""
        for i, layer in enumerate(self.store):
            if layer is not None:
                layer.seen, layer.r_len = counters["seen"][i], counters["r_len"][i]
            if counters["samples"][i] or i in self.stats.samples:
                self.stats.samples[i] = counters["samples"][i]

    def _append_static(self, layer: LayerCache, k, v, k_idx, positions) -> None:
        """Static-decode append of one token per row at slot ``r_next``. k, v (B, Hr, 1, D); positions (B, 1)."""
        slot = layer.r_next
        layer.r_k.index_copy_(2, slot, k)
        layer.r_v.index_copy_(2, slot, v)
        if k_idx is not None:
            layer.r_idx.index_copy_(2, slot, k_idx)
        layer.r_pos.index_copy_(1, slot, positions)
        self._advance_static(layer)

    @staticmethod
    def _advance_static(layer: LayerCache) -> None:
        """One retrieval slot taken in static decode: the device counter and its host mirror."""
        layer.r_next.add_(1)
        layer.r_len += 1

    def _retrieval_view(self, layer: LayerCache) -> tuple[torch.Tensor, ...]:
        """(k, v, k_idx (B, Hr, n, .), positions (B, n)) the retrieval heads attend over: n = capacity
        in static decode or for a ring (``r_ring``), else the used slots ``r_len``."""
        n = layer.r_pos.shape[1] if self.static_capacity is not None or layer.r_ring else layer.r_len
        return layer.r_k[:, :, :n], layer.r_v[:, :, :n], layer.r_idx[:, :, :n], layer.r_pos[:, :n]

    # --- retrieval heads: select or attend to everything -----------------------------------
    def selects(self, cached: int) -> bool:
        """Whether retrieval heads decode over their indexer's top-p selection with ``cached`` tokens
        in the cache (the new one included): ``top_p < 1`` and at least ``seqlen_threshold`` tokens.
        A host-side decision (the cache length is a Python counter), so no step waits for the GPU."""
        return self.sparse.top_p < 1.0 and cached >= self.sparse.seqlen_threshold

    def _step_selects(self, module, cached: int) -> bool:
        """Whether a one-token step of this layer's retrieval heads selects (else they read every key) with
        ``cached`` keys stored (the new one included): indexed heads of a full-attention base model, once
        :meth:`selects` says so."""
        return module.indexer is not None and module.base_window is None and self.selects(cached)

    def next_step_selects(self) -> bool:
        """:meth:`selects` for the next one-token step (it adds one token to every layer)."""
        lengths = [layer.r_len for layer in self.store if layer is not None and layer.r_k.shape[1]]
        return bool(lengths) and self.selects(max(lengths) + 1)

    # --- values shared by the layers of one forward ---------------------------------------
    def token_positions(
        self, module, position_ids: torch.Tensor | None, padding_mask: torch.Tensor | None, batch: int, length: int,
        device: torch.device,
    ) -> torch.Tensor:
        """(B, L) int64 positions of this forward's tokens (-1 = padding), by ``module.token_positions``.

        Computed by the forward's first layer; the later layers get the same tensor.
        """
        seen = self.get_seq_length(module.layer_idx)
        f = self._forward
        if (
            f is None or (f.seen, f.shape, f.device) != (seen, (batch, length), device)
            or f.position_ids is not position_ids or f.padding_mask is not padding_mask
        ):
            positions = module.token_positions(position_ids, padding_mask, batch, length, seen, device)
            f = self._forward = _Forward(seen, (batch, length), device, position_ids, padding_mask, positions,
                                         plain=seen == 0 and self.plain_prompt,
                                         continues=seen > 0 and length > 1 and self.plain_prompt)
        return f.positions

    def _shared(self, positions: torch.Tensor) -> _Forward | None:
        """The current forward's shared values if ``positions`` is its tensor, else None."""
        f = self._forward
        return f if f is not None and f.positions is positions else None

    def _ring_slot(self, positions: torch.Tensor, sinks: int, window: int) -> tuple[torch.Tensor, ...]:
        """Slot of one new token per row in ``sinks`` slots then a ring of ``window``: (slot (B, 1),
        slot (B, 1, 1, 1), real (B, 1), real (B, 1, 1, 1)).

        positions (B, 1). A padding row (-1) points at slot 0 with ``real`` False. Once per forward and ring shape.
        """
        shared = self._shared(positions)
        if shared is not None and (sinks, window) in shared.ring_slots:
            return shared.ring_slots[sinks, window]
        real = positions >= 0
        slot = ring_slots(positions, sinks, window).clamp(min=0)
        ring_slot = (slot, slot[:, :, None, None], real, real[:, :, None, None])
        if shared is not None:
            shared.ring_slots[sinks, window] = ring_slot
        return ring_slot

    def _visible(self, layer: LayerCache, positions: torch.Tensor) -> torch.Tensor:
        """() keys a full retrieval head sees at decode, summed over the rows.

        positions (B, 1). Once per forward: every layer with retrieval heads holds the same
        positions (they all append the same tokens), so the count is the same in each.
        """
        shared = self._shared(positions)
        if shared is not None and shared.visible is not None and shared.visible[0] == layer.r_len:
            return shared.visible[1]
        key_pos = self._retrieval_view(layer)[3]
        visible = ((key_pos >= 0) & (key_pos <= positions)).sum()
        if shared is not None:
            shared.visible = (layer.r_len, visible)
        return visible

    # --- storage ----------------------------------------------------------------------
    def _layer(self, module, k: torch.Tensor) -> LayerCache:
        layer = self.store[module.layer_idx]
        if layer is not None:
            roles = (layer.r_k.shape[1], layer.l_k.shape[1])
            if roles != (len(module.retrieval_heads), len(module.local_heads)) or layer.r_k.shape[0] != k.shape[0]:
                raise ValueError(
                    f"layer {module.layer_idx}: cache holds (batch, retrieval, local) = "
                    f"{(layer.r_k.shape[0], *roles)} but the model now has "
                    f"{(k.shape[0], len(module.retrieval_heads), len(module.local_heads))}; start a new HeadwiseCache"
                )
            return layer
        batch, _, _, dim = k.shape
        n_r, n_l = len(module.retrieval_heads), len(module.local_heads)
        slots = self.sparse.sinks + self.sparse.window
        r_window = module.base_window if n_r else None
        cap = self.initial_capacity if r_window is None else min(self.initial_capacity, r_window)
        d_idx = module.indexer.index_dim if module.indexer is not None else 0
        layer = cache_layer.new_layer(batch, n_r, n_l, dim, d_idx, slots, cap, r_window, like=k)
        self.store[module.layer_idx] = layer
        return layer

    def _store_retrieval(self, layer: LayerCache, k, v, k_idx, positions) -> None:
        """Store new retrieval-head tokens: k, v (B, Hr, L, D), k_idx (B, Hr, L, d_idx) or None, positions (B, L).
        Into the ring where the store is one (:func:`rtpurbo.cache_layer.to_ring`), else appended (at ``r_next`` in
        static decode)."""
        if layer.r_ring:
            stores = [(layer.r_k, k), (layer.r_v, v)] + ([(layer.r_idx, k_idx)] if k_idx is not None else [])
            self._ring_write(stores, layer.r_pos, positions, sinks=0)
            layer.r_len += positions.shape[1]
        elif self.static_capacity is not None:
            self._append_static(layer, k, v, k_idx, positions)
        else:
            cache_layer.append(layer, k, v, k_idx, positions)

    def _write_ring(self, layer: LayerCache, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor) -> None:
        """Write new local-head tokens into their sinks + ring (:meth:`_ring_write`).

        k, v (B, Hl, L, D); positions (B, L), -1 = padding (not written).
        """
        self._ring_write([(layer.l_k, k), (layer.l_v, v)], layer.l_pos, positions, sinks=self.sparse.sinks)

    def _ring_write(self, stores: list[tuple[torch.Tensor, torch.Tensor]], store_pos: torch.Tensor,
                    positions: torch.Tensor, sinks: int) -> None:
        """:func:`rtpurbo.cache_layer.ring_write`; one token per row (decode) through :meth:`_ring_write_one`."""
        if positions.shape[1] == 1:
            self._ring_write_one(stores, store_pos, positions, sinks, store_pos.shape[1] - sinks)
        else:
            cache_layer.ring_write(stores, store_pos, positions, sinks)

    def _ring_write_one(self, stores: list[tuple[torch.Tensor, torch.Tensor]], store_pos: torch.Tensor,
                        positions: torch.Tensor, sinks: int, window: int) -> None:
        """:meth:`_ring_write` of one token per row (decode), without a host sync.

        new tensors (B, H, 1, X); positions (B, 1). A single new token is always inside the window,
        so every real row writes its slot; a padding row rewrites slot 0 with its own content.
        """
        slot, slot4, real, real4 = self._ring_slot(positions, sinks, window)
        for store, new in stores:
            index = slot4.expand_as(new)  # (B, H, 1, X)
            store.scatter_(2, index, torch.where(real4, new, store.gather(2, index)))
        store_pos.scatter_(1, slot, torch.where(real, positions, store_pos.gather(1, slot)))

    # --- attention ----------------------------------------------------------------------
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
        (scores, selection, attention) on the current one."""
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
        if module.local_heads:
            if side is not None:
                side.wait_stream(main)  # q and the written ring are ready
            with contextlib.nullcontext() if side is None else torch.cuda.stream(side):
                local_out = self._local_attention(module, parts["local"][0], layer.l_k, layer.l_v, layer.l_pos,
                                                  positions)
        if module.retrieval_heads:
            retrieval_out = self._retrieval_attention(module, layer, parts["retrieval"][0], q_idx, positions)
        if side is not None:
            main.wait_stream(side)  # the next layer reuses side's memory only after its own wait on main
        layer.seen += 1
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

    def _retrieval_attention(self, module, layer: LayerCache, q, q_idx, positions) -> torch.Tensor:
        """Retrieval heads' queries q (B, Hr*G, L, D) over their stored keys (the new ones included): the
        indexer's top-p selection at decode; at prefill full causal attention, the indexer's block
        selection (``retrieval_prefill == "sparse"``; q_idx: this forward's indexer queries) or every query's
        token selection (``topp``)."""
        sparse = self.sparse
        keys, values, key_idx, key_pos = self._retrieval_view(layer)
        # a chunk of a prompt (prefilling_prompt) follows the prefill rule even when it holds one token
        prompt = q.shape[2] > 1 or self.prompt_slots is not None
        decode = not prompt and self._step_selects(module, layer.r_len)
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
                                 scale=module.scaling, impl=sparse.impl, plain=plain, plan=plan)
        out, counts = ops.topp_attention(
            q, keys, values, positions, key_pos, q_idx, key_idx,
            top_p=sparse.top_p, min_tokens=sparse.min_tokens, max_tokens=sparse.max_tokens,
            sinks=sparse.sinks, recent=sparse.recent, scale=module.scaling, impl=sparse.decode_impl,
        )
        self.stats.record(module.layer_idx, counts, self._visible(layer, positions))
        return out
