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

    The sums stay on the layer's device, so recording never waits for the GPU; :meth:`summary` reads them back
    (one host sync per layer). A decode step adds to its layer's sums inside the attention itself
    (:func:`rtpurbo.ops.topp_attention`'s ``key_sums``: on a GPU, the combine kernel), with no launch of its own: a
    graphed step of a model with many layers would otherwise spend more time launching these sums than some of its
    attention kernels take.
    """

    # per layer (batch, head, 2) int64: sums over steps of [selected keys, keys visible to a full head]
    key_sums: dict[int, torch.Tensor] = field(default_factory=dict)
    samples: dict[int, int] = field(default_factory=dict)  # (batch, head, step) count
    prefill_kept: dict[int, torch.Tensor] = field(default_factory=dict)  # sparse prefill: kept key blocks
    prefill_seen: dict[int, torch.Tensor] = field(default_factory=dict)  # ... of the blocks the queries see

    def step_sums(self, layer: int, batch: int, heads: int, device: torch.device) -> torch.Tensor:
        """The (batch, heads, 2) int64 running sums one decode step of ``layer`` adds its selection to (its
        ``key_sums`` for :func:`rtpurbo.ops.topp_attention`); counts the step's ``batch * heads`` samples. A change
        of batch keeps the sums so far (in the first entry); a change of head count raises."""
        sums = self.key_sums.get(layer)
        if sums is not None and sums.shape[1] != heads:
            raise ValueError(f"layer {layer} recorded {sums.shape[1]} retrieval heads before, now {heads}")
        if sums is None or sums.shape[0] != batch or sums.device != device:
            fresh = torch.zeros(batch, heads, 2, dtype=torch.int64, device=device)
            if sums is not None:  # another batch: the sums so far go to the first entry
                fresh[0, 0] = sums.sum((0, 1)).to(device)
            sums = self.key_sums[layer] = fresh
        self.samples[layer] = self.samples.get(layer, 0) + batch * heads
        return sums

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
        selected = float(sum(int(t[..., 0].sum()) for t in self.key_sums.values()))
        visible = float(sum(int(t[..., 1].sum()) for t in self.key_sums.values()))
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
