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
:mod:`rtpurbo.cache_layer`; which kernels a forward's attention runs, :mod:`rtpurbo.cache_attention`; what the heads
keep is counted in :mod:`rtpurbo.selection_stats`. Stock
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
from dataclasses import dataclass, field
from typing import Iterator

import torch
from transformers import Cache

from . import cache_layer
from .cache_attention import LayerAttention
from .cache_layer import ROW_FIELDS, LayerCache, ring_slots
from .families import attention_modules
from .selection_stats import SelectionStats


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


class HeadwiseCache(LayerAttention, Cache):
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
        the local heads' ring is; no ``r_next``), so it stays bounded however long the decode. The retrieval
        positions turn int32 (:data:`rtpurbo.cache_layer.STATIC_POSITIONS`: the selecting step reads one per key);
        a cache whose highest position plus ``capacity`` would pass int32 is refused.

        The Python counters (``seen``, ``r_len``, ``stats.samples``) are still advanced by every
        step that runs Python (eager). Steps replayed from a CUDA graph run no Python: their
        caller advances the counters (:meth:`host_counters` / :meth:`set_host_counters`, as
        :class:`rtpurbo.decode_graph.GraphedDecoder` does) and must keep ``r_len < capacity``
        (a full cache raises in eager steps; a replay past it would index out of bounds).
        """
        if not self.is_initialized:
            raise ValueError("static_decode needs a prefilled HeadwiseCache (run the prompt through it first)")
        self._check_static_positions(capacity)
        for layer in self.store:
            if layer is None:
                continue
            if capacity < layer.r_len + 1:
                raise ValueError(f"capacity {capacity} leaves no slot for decode: {layer.r_len} slots are used")
            if layer.r_window is not None and capacity > layer.r_window and not layer.r_ring:
                cache_layer.to_ring(layer)
            if not layer.r_ring:
                if layer.r_pos.shape[1] != capacity:
                    cache_layer.resize(layer, capacity)
                layer.r_next = torch.tensor([layer.r_len], dtype=torch.long, device=layer.r_pos.device)
            layer.r_pos = layer.r_pos.to(cache_layer.STATIC_POSITIONS)
        self.static_capacity = capacity

    def _check_static_positions(self, capacity: int) -> None:
        """Refuse a static decode whose positions could pass int32 (:data:`cache_layer.STATIC_POSITIONS`): the
        highest stored position plus ``capacity`` (more than the decode can add). One host sync, at set-up."""
        limit = torch.iinfo(cache_layer.STATIC_POSITIONS).max
        stored = [layer.r_pos.max() for layer in self.store if layer is not None and layer.r_pos.numel()]
        highest = int(torch.stack(stored).max()) if stored else -1
        if highest + capacity > limit:
            raise ValueError(f"static decode keeps positions as {cache_layer.STATIC_POSITIONS}: the highest stored "
                             f"position {highest} plus capacity {capacity} would pass {limit}")

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
        layer.r_pos.index_copy_(1, slot, positions.to(layer.r_pos.dtype))
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
        store_pos.scatter_(1, slot, torch.where(real, positions.to(store_pos.dtype), store_pos.gather(1, slot)))

    # --- attention ----------------------------------------------------------------------
