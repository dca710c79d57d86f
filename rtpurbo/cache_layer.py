"""One layer's storage in the head-wise cache (:class:`rtpurbo.cache.HeadwiseCache`): its tensors, how the
retrieval store grows or turns into a ring, and how tokens are written into sinks + a ring.

Every slot carries its token position (``-1`` = empty or padding). Retrieval heads append (storage grows by
doubling), or, on a layer where the base model has its own window ``W_b``, keep a ring of ``W_b`` slots once they
would hold more. Local heads keep ``S`` sink slots and a ring of ``W``. Writes are device operations only: no
host sync.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

ROW_FIELDS = ("r_k", "r_v", "r_idx", "r_pos", "l_k", "l_v", "l_pos")  # LayerCache's batch-first tensors
# dtype of the retrieval positions in static decode (HeadwiseCache.static_decode): the selecting step's index scores
# read every key's position beside its indexer key, so int32 reads 4 bytes a key less than int64
STATIC_POSITIONS = torch.int32


@dataclass
class LayerCache:
    """Storage of one layer. Shapes: B batch, Hr / Hl retrieval / local KV heads, D head dim."""

    r_k: torch.Tensor  # (B, Hr, capacity, D)
    r_v: torch.Tensor  # (B, Hr, capacity, D)
    r_idx: torch.Tensor  # (B, Hr, capacity, d_idx)
    r_pos: torch.Tensor  # (B, capacity), -1 = empty; int64, int32 (STATIC_POSITIONS) in static decode
    l_k: torch.Tensor  # (B, Hl, S + W, D)
    l_v: torch.Tensor  # (B, Hl, S + W, D)
    l_pos: torch.Tensor  # (B, S + W), -1 = empty
    r_len: int = 0  # tokens written to the retrieval store (padding included), a ring's overwritten ones too
    seen: int = 0  # token slots processed (padding included)
    r_next: torch.Tensor | None = None  # static decode only: (1,) int64 next retrieval slot, on the device
    # the base model's own window on this layer (None: full causal): the retrieval store holds at most this many
    # slots, appended in order until it would hold more, then (r_ring) a ring whose slot of position p is p % W_b
    r_window: int | None = None
    r_ring: bool = False

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor the layer stores, all batch-first (:data:`ROW_FIELDS`' order)."""
        return [getattr(self, name) for name in ROW_FIELDS]


def new_layer(batch: int, retrieval: int, local: int, head_dim: int, index_dim: int, slots: int, capacity: int,
              r_window: int | None, like: torch.Tensor) -> LayerCache:
    """An empty layer: ``capacity`` retrieval slots of ``retrieval`` heads (``index_dim``-wide indexer keys),
    ``slots`` (= S + W) local slots of ``local`` heads, in ``like``'s dtype and device."""
    new = dict(dtype=like.dtype, device=like.device)
    return LayerCache(
        r_k=torch.zeros(batch, retrieval, capacity, head_dim, **new),
        r_v=torch.zeros(batch, retrieval, capacity, head_dim, **new),
        r_idx=torch.zeros(batch, retrieval, capacity, index_dim, **new),
        r_pos=torch.full((batch, capacity), -1, dtype=torch.long, device=like.device),
        l_k=torch.zeros(batch, local, slots, head_dim, **new),
        l_v=torch.zeros(batch, local, slots, head_dim, **new),
        l_pos=torch.full((batch, slots), -1, dtype=torch.long, device=like.device),
        r_window=r_window,
    )


def ring_slots(positions: torch.Tensor, sinks: int, window: int) -> torch.Tensor:
    """Slot of each position in ``sinks`` slots then a ring of ``window``: ``p`` below the sinks, else
    ``S + (p - S) % W``. positions (B, L) int64 -> (B, L); -1 (padding) stays negative."""
    return torch.where(positions < sinks, positions, sinks + (positions - sinks) % window)


def resize(layer: LayerCache, capacity: int) -> None:
    """Reallocate the retrieval storage at exactly ``capacity`` slots, keeping the first ones."""
    def resized(t: torch.Tensor, fill: float) -> torch.Tensor:
        dim = 2 if t.dim() == 4 else 1
        shape = list(t.shape)
        shape[dim] = capacity
        out = torch.full(shape, fill, dtype=t.dtype, device=t.device)
        kept = min(capacity, t.shape[dim])
        out.narrow(dim, 0, kept).copy_(t.narrow(dim, 0, kept))
        return out

    layer.r_k, layer.r_v, layer.r_idx = resized(layer.r_k, 0), resized(layer.r_v, 0), resized(layer.r_idx, 0)
    layer.r_pos = resized(layer.r_pos, -1)


def grow(layer: LayerCache, needed: int) -> None:
    """Make room for ``needed`` appended retrieval slots (doubling; at most ``r_window`` where set)."""
    cap = layer.r_pos.shape[1]
    if needed > cap:
        grown = max(needed, 2 * cap)
        resize(layer, grown if layer.r_window is None else min(grown, layer.r_window))


def append(layer: LayerCache, k: torch.Tensor, v: torch.Tensor, k_idx: torch.Tensor | None,
           positions: torch.Tensor) -> None:
    """Append retrieval-head tokens after the ``r_len`` used slots: k, v (B, Hr, L, D), k_idx (B, Hr, L, d_idx)
    or None, positions (B, L)."""
    n = k.shape[2]
    grow(layer, layer.r_len + n)
    end = layer.r_len + n
    layer.r_k[:, :, layer.r_len : end] = k
    layer.r_v[:, :, layer.r_len : end] = v
    if k_idx is not None:
        layer.r_idx[:, :, layer.r_len : end] = k_idx
    layer.r_pos[:, layer.r_len : end] = positions
    layer.r_len = end


def ring_write(stores: list[tuple[torch.Tensor, torch.Tensor]], store_pos: torch.Tensor, positions: torch.Tensor,
               sinks: int) -> None:
    """Write new tokens that stay inside the window into ``sinks`` slots then a ring; later ones win per slot.

    stores: (store (B, H, S + W, X), new (B, H, L, X)) pairs, written alike; store_pos (B, S + W) the slots'
    positions (-1 = empty), updated too; positions (B, L), -1 = padding (not written). W is the ring's length.
    """
    window = store_pos.shape[1] - sinks
    batch, length = positions.shape
    newest = positions.max(dim=1, keepdim=True).values
    keep = (positions >= 0) & ((positions < sinks) | (positions > newest - window))
    slot = ring_slots(positions, sinks, window).clamp(min=0)
    # per ring slot, the kept token with the highest position (then its column), as device
    # reductions: no host sync, and the same result whatever order the duplicates come in
    none = torch.full_like(store_pos, -1)
    newest_at = none.scatter_reduce(1, slot, torch.where(keep, positions, -1), "amax")
    wins = keep & (positions == newest_at.gather(1, slot))
    column = torch.arange(length, device=positions.device).expand(batch, length)
    source = none.scatter_reduce(1, slot, torch.where(wins, column, -1), "amax")  # (B, S + W), -1 = kept
    written = source >= 0
    for store, new in stores:
        index = source.clamp(min=0)[:, None, :, None].expand(-1, new.shape[1], -1, new.shape[3])
        store.copy_(torch.where(written[:, None, :, None], new.gather(2, index), store))
    store_pos.copy_(torch.where(written, newest_at, store_pos))


def to_ring(layer: LayerCache) -> None:
    """Turn a layer's appended retrieval store into a ring of ``r_window`` slots (``r_ring``), before it would
    hold more: each stored token moves to its ring slot, those outside the window of their row's newest
    position dropped (no later query sees them). The store is then ``(B, Hr, W_b, .)`` for good."""
    n, window = layer.r_len, layer.r_window
    old = (layer.r_k[:, :, :n], layer.r_v[:, :, :n], layer.r_idx[:, :, :n])
    old_pos = layer.r_pos[:, :n]
    layer.r_k, layer.r_v, layer.r_idx = (t.new_zeros(*t.shape[:2], window, t.shape[3]) for t in old)
    layer.r_pos = torch.full((old_pos.shape[0], window), -1, dtype=old_pos.dtype, device=old_pos.device)
    layer.r_next, layer.r_ring = None, True
    if n:
        ring_write(list(zip((layer.r_k, layer.r_v, layer.r_idx), old)), layer.r_pos, old_pos, sinks=0)
