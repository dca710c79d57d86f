"""Blocks of positions for the sparse prefill, whatever the padding or the chunk a forward holds.

The sparse prefill tiles queries and keys into blocks of ``block`` slots (flex's block-mask tiles). Its blocks are
meant to be blocks of *positions* (``p // block``): the sink block is the first ``block`` tokens of a row, and a
prompt gives the same blocks alone, left-padded in a batch, or cut into chunks of any size. Slots and positions
agree only for an unpadded prompt whose forward starts at a multiple of ``block``; otherwise :func:`lay_out` places
each token at the slot ``p - base`` of a fresh row, ``base`` being the row's lowest position rounded down to a
block, so that slot blocks are position blocks again::

    layout = lay_out(pos, block)          # pos (B, L), -1 = padding
    x_laid = take(x, layout)              # (B, H, L', D), zeros where no token sits
    y = put_back(y_laid, layout)          # (B, H, L, D), zeros on padding

Each row's valid positions must be consecutive (left padding, prompts cut into chunks, padding between turns:
positions counted along the attention mask), so ``L' = L + block - 1`` rounded up to a block holds them; a
position outside that width is an index error, never a silent drop.
"""
from __future__ import annotations

from typing import NamedTuple

import torch


class BlockLayout(NamedTuple):
    """source (B, L'): the input slot laid at each slot, -1 where none; pos (B, L'): positions there, -1 where none;
    target (B, L): where each input slot went (0 for padding); valid (B, L): the input slots holding a token."""

    source: torch.Tensor
    pos: torch.Tensor
    target: torch.Tensor
    valid: torch.Tensor


def lay_out(pos: torch.Tensor, block: int) -> BlockLayout:
    """The layout that makes blocks of ``block`` slots blocks of positions (module docstring). No host sync."""
    batch, length = pos.shape
    valid = pos >= 0
    lowest = torch.where(valid, pos, torch.iinfo(pos.dtype).max).amin(-1, keepdim=True)
    base = torch.where(valid.any(-1, keepdim=True), lowest // block * block, torch.zeros_like(lowest))
    width = -(-(length + block - 1) // block) * block
    target = torch.where(valid, pos - base, torch.full_like(pos, width))  # padding goes to a spare last column
    source = torch.full((batch, width + 1), -1, dtype=torch.long, device=pos.device)
    source.scatter_(1, target.long(), torch.arange(length, device=pos.device).expand(batch, -1).contiguous())
    source = source[:, :width]
    laid_pos = torch.where(source >= 0, base + torch.arange(width, device=pos.device), torch.full_like(source, -1))
    return BlockLayout(source, laid_pos.to(pos.dtype), torch.where(valid, target, torch.zeros_like(target)), valid)


def is_identity(layout: BlockLayout) -> bool:
    """True when the input is laid out already (every token stays in its slot); reads the layout back to the host
    (tests and CPU checks)."""
    slots = torch.arange(layout.target.shape[1], device=layout.target.device)
    return bool(((layout.target == slots) | ~layout.valid).all())


def take(x: torch.Tensor, layout: BlockLayout) -> torch.Tensor:
    """x (B, H, L, D) -> (B, H, L', D) laid out, zeros where no token sits."""
    index = layout.source.clamp(min=0)[:, None, :, None].expand(x.shape[0], x.shape[1], -1, x.shape[3])
    return x.gather(2, index).masked_fill((layout.source < 0)[:, None, :, None], 0)


def put_back(y: torch.Tensor, layout: BlockLayout) -> torch.Tensor:
    """y (B, H, L', D) laid out -> (B, H, L, D) in the input's slots, zeros on padding."""
    index = layout.target[:, None, :, None].expand(y.shape[0], y.shape[1], -1, y.shape[3])
    return y.gather(2, index).masked_fill(~layout.valid[:, None, :, None], 0)
