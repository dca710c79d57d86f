"""Prefilling a prompt into a head-wise cache, in chunks.

:func:`prefill` runs a prompt through a converted model chunk by chunk, filling a
:class:`~rtpurbo.cache.HeadwiseCache`; :func:`chunk_bounds` says where the chunks are cut. Generation
(:mod:`rtpurbo.generate`), a converted model's own ``generate()`` (:mod:`rtpurbo.causal_lm`), the eval
and the benchmarks all prefill through it.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ._compat import cache_kwarg
from .cache import HeadwiseCache
from .ops import api as ops


def chunk_bounds(length: int, chunk: int, seen: int, block: int | None = None) -> list[tuple[int, int]]:
    """(start, stop) of the chunks a prompt of ``length`` tokens is prefilled in, ``chunk`` each. With
    ``block`` (the retrieval heads' sparse prefill, whose query blocks are blocks of positions) every cut falls
    where the cache holds a multiple of ``block`` slots, chunks being whole blocks (``chunk`` rounded down, at least
    one block): a query block is then never split between two forwards, so an unpadded prompt gives the one-shot
    result whatever the chunk. (A left-padded row's blocks start after its padding, so its cuts may still split
    one.)"""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if block is None:
        return [(start, min(start + chunk, length)) for start in range(0, length, chunk)]
    step = max(block, chunk - chunk % block)
    bounds, start = [], 0
    while start < length:
        stop = length if start + chunk >= length else min(length, start + step - (seen + start) % block)
        bounds.append((start, stop))
        start = stop
    return bounds


@torch.no_grad()
def prefill(
    model: nn.Module, cache: HeadwiseCache, input_ids: torch.Tensor, attention_mask: torch.Tensor, chunk: int
) -> None:
    """Run ``input_ids`` (B, L) through the model in chunks of ``chunk`` tokens, filling ``cache``.

    Into an empty cache, one look at ``attention_mask`` (a host sync before the first forward, none
    inside the forwards) tells the cache whether the prompt is plain (no padding), so its first
    chunk runs the plain-prefill kernels. The cache also learns where the prompt ends, so that a
    sparse prefill's dense tail covers the prompt's last tokens whatever the chunk size.
    """
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    plain = not cache.is_initialized and bool(attention_mask.all())
    sparse = model.rtpurbo_sparse.retrieval_prefill == "sparse"
    bounds = chunk_bounds(input_ids.shape[1], chunk, cache.get_seq_length(), ops.BLOCK_SIZE if sparse else None)
    with cache.prefilling_prompt(input_ids.shape[1], plain=plain):
        for start, stop in bounds:
            model(
                input_ids=input_ids[:, start:stop],
                attention_mask=attention_mask[:, :stop],
                position_ids=positions[:, start:stop],
                use_cache=True,
                logits_to_keep=1,
                **{cache_kwarg(): cache},
            )
