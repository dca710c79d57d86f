"""Running sums of what the retrieval heads keep: keys selected at decode, key blocks kept by a sparse prefill.

:class:`rtpurbo.cache.HeadwiseCache` records into its ``stats``; :func:`recording_prefill` records the sparse prefill
of forwards without a cache (e.g. perplexity).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator

import torch

from .families import attention_modules


@dataclass
class SelectionStats:
    """Running sums of the decode-time top-p selection, per layer.

    The sums stay on the layer's device, so :meth:`record` never waits for the GPU; :meth:`summary` reads them back
    (one host sync per layer). A decode step records each layer in one kernel launch (a graphed step of a model with
    many layers would otherwise spend more time launching these sums than some of its attention kernels take).
    """

    selected: dict[int, torch.Tensor] = field(default_factory=dict)  # per (batch, head): sum over steps of selected keys
    visible: dict[int, torch.Tensor] = field(default_factory=dict)  # () sum over steps of keys visible to one head
    samples: dict[int, int] = field(default_factory=dict)  # (batch, head, step) count
    prefill_kept: dict[int, torch.Tensor] = field(default_factory=dict)  # sparse prefill: kept key blocks
    prefill_seen: dict[int, torch.Tensor] = field(default_factory=dict)  # ... of the blocks the queries see

    def record(self, layer: int, counts: torch.Tensor, visible: torch.Tensor) -> None:
        """counts (B, Hr, 1) int64 selected keys; visible () int64 keys a full head would see, summed over the rows.
        One launch on a GPU (``torch._foreach_add_`` of both sums)."""
        if layer not in self.selected:
            self.selected[layer] = torch.zeros_like(counts)
            self.visible[layer] = torch.zeros((), dtype=torch.int64, device=counts.device)
        elif counts.shape[1] != self.selected[layer].shape[1]:
            raise ValueError(f"layer {layer} recorded {self.selected[layer].shape[1]} retrieval heads before, now "
                             f"{counts.shape[1]}")
        if self.selected[layer].shape != counts.shape:  # another batch: the total so far goes to the first entry
            total = self.selected[layer].sum()
            self.selected[layer] = torch.zeros_like(counts)
            self.selected[layer].view(-1)[0] = total
        torch._foreach_add_([self.selected[layer], self.visible[layer]], [counts, visible])
        self.samples[layer] = self.samples.get(layer, 0) + counts.numel()

    def record_prefill(self, layer: int, kept: torch.Tensor, seen: torch.Tensor) -> None:
        """Sparse prefill of one layer: key blocks kept and key blocks the query blocks see, () each."""
        if layer not in self.prefill_kept:
            self.prefill_kept[layer] = torch.zeros((), dtype=torch.int64, device=kept.device)
            self.prefill_seen[layer] = torch.zeros((), dtype=torch.int64, device=kept.device)
        self.prefill_kept[layer].add_(kept)
        self.prefill_seen[layer].add_(seen)

    def summary(self) -> dict[str, float]:
        """Mean selected keys per head and step and mean fraction of the visible context (decode); the
        fraction of visible key blocks a sparse prefill kept (``prefill_block_fraction``, if one ran)."""
        out: dict[str, float] = {}
        if self.prefill_kept:
            kept = sum(int(t) for t in self.prefill_kept.values())
            out["prefill_block_fraction"] = kept / max(1, sum(int(t) for t in self.prefill_seen.values()))
        total = sum(self.samples.values())
        if not total:
            return {"mean_selected": 0.0, "mean_fraction": 0.0, "samples": 0, **out}
        selected = float(sum(int(t.sum()) for t in self.selected.values()))
        visible = float(sum(int(t) * self.selected[layer].shape[1] for layer, t in self.visible.items()))
        return {"mean_selected": selected / total, "mean_fraction": selected / max(1.0, visible), "samples": total,
                **out}


@contextlib.contextmanager
def recording_prefill(model) -> Iterator[SelectionStats]:
    """Forwards of ``model`` without a cache inside the block (e.g. perplexity) record their sparse
    retrieval prefill into the yielded :class:`SelectionStats` (``summary()["prefill_block_fraction"]``)."""
    stats = SelectionStats()
    modules = [m for m in attention_modules(model) if hasattr(m, "prefill_stats")]
    for module in modules:
        module.prefill_stats = stats
    try:
        yield stats
    finally:
        for module in modules:
            module.prefill_stats = None
