"""Indexer scores of key blocks for the sparse prefill of retrieval heads (readable PyTorch, any device).

A retrieval head's sparse prefill keeps, for each block of queries, the key blocks that carry most of its
indexer's attention (:func:`rtpurbo.ops.reference.select_blocks`). :func:`block_scores` gives the scores
whose softmax over the candidate blocks is that distribution, in one of two ways (:data:`SCORINGS`):

* ``pooled``: ``<mean q_idx of the query block, mean k_idx of the key block>``. One (d_idx)-dot per block
  pair, so it costs next to nothing, but a single key that the queries want (a needle) is averaged with
  the block's other ``block - 1`` keys and can be lost.
* ``mass``: for :data:`MASS_QUERIES` queries spread over the query block (its last one included), the
  indexer's probability mass of each candidate block (softmax over the candidates of each block's
  log-sum-exp of token-level indexer logits), averaged over those queries. It sees every key: a needle
  keeps its block. Its cost is ``MASS_QUERIES / block`` of a token-level indexer pass (1/16 with
  blocks of 128), computed in chunks of query blocks so memory stays bounded at long contexts.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

SCORINGS = ("pooled", "mass")
MASS_QUERIES = 8  # representative queries per query block of the ``mass`` scoring
MASS_CHUNK_ELEMENTS = 1 << 26  # token-level logits held at once by ``mass`` (fp32: 256 MiB)


def _position_blocks(pos: torch.Tensor, block: int) -> torch.Tensor:
    """pos (B, L) -> (B, n_blocks, block), padded with empty slots (-1)."""
    pos = F.pad(pos, (0, -pos.shape[-1] % block), value=-1)
    return pos.view(pos.shape[0], -1, block)


def block_ranges(pos: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per block of ``block`` slots of pos (B, L): (lowest, highest valid position, any valid), each (B, n_blocks);
    an empty block has lowest 2**62 and highest -1."""
    tiles = _position_blocks(pos, block)
    valid = tiles >= 0
    return tiles.masked_fill(~valid, 1 << 62).amin(-1), tiles.amax(-1), valid.any(-1)


def check_scoring(scoring: str) -> None:
    if scoring not in SCORINGS:
        raise ValueError(f"prefill block scoring must be one of {SCORINGS}, got {scoring!r}")


def block_roles(q_pos: torch.Tensor, k_pos: torch.Tensor, block: int, sinks: int, band: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Which key blocks each query block sees, and which of those it always keeps, each (B, 1, nq, nk) bool.

    Seen: some query of the block sees some key of it. Always kept: seen and holding a sink (position <
    ``sinks``) or a key at position >= (the query block's lowest position - ``band``). The others are the
    candidates that block scores rank."""
    q_lo, q_hi, q_any = (t[:, None, :, None] for t in block_ranges(q_pos, block))
    k_lo, k_hi, k_any = (t[:, None, None, :] for t in block_ranges(k_pos, block))
    seen = q_any & k_any & (k_lo <= q_hi)
    return seen, seen & ((k_lo < sinks) | (k_hi >= q_lo - band))


def _tiles(idx: torch.Tensor, n_blocks: int, block: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """idx (B, H, L, d) -> (B, H, n_blocks, block, d) in ``dtype``, zero-padded to ``n_blocks * block`` slots."""
    tiles = F.pad(idx.to(dtype), (0, 0, 0, n_blocks * block - idx.shape[2]))
    return tiles.view(*idx.shape[:2], n_blocks, block, idx.shape[-1])


def pooled_index(idx: torch.Tensor, pos: torch.Tensor, block: int) -> torch.Tensor:
    """Mean indexer vector of the valid slots of each block: idx (B, H, L, d), pos (B, L') with L' >= L
    -> (B, H, n_blocks, d) fp32."""
    valid = (_position_blocks(pos, block) >= 0)[:, None, :, :, None].float()  # (B, 1, n, block, 1)
    return (_tiles(idx, valid.shape[2], block) * valid).sum(-2) / valid.sum(-2).clamp(min=1.0)


class MassInputs(NamedTuple):
    """What the ``mass`` scoring reads, gathered once (fp32 unless asked; keys and positions padded to whole blocks).

    q_rep (B, H, nq, r, d): the representative queries; q_rep_pos (B, nq, r) their positions;
    keys (B, H, nk * block, d); key_pos (B, nk * block), -1 = empty."""

    q_rep: torch.Tensor
    q_rep_pos: torch.Tensor
    keys: torch.Tensor
    key_pos: torch.Tensor


def mass_inputs(q_idx: torch.Tensor, k_idx: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor, block: int,
                queries: int = MASS_QUERIES, dtype: torch.dtype = torch.float32) -> MassInputs:
    """The representative queries of each query block (slots ``block / queries - 1, 2 * block / queries - 1, ...``
    and its last query: the slot of its highest position, so a partial block is represented too), and the keys,
    as ``dtype``. Shapes as in :func:`block_mass`."""
    if block % queries:
        raise ValueError(f"block ({block}) must be a multiple of queries ({queries})")
    q_blocks, k_blocks = _position_blocks(q_pos, block), _position_blocks(k_pos, block)
    batch, heads, n_q = q_idx.shape[0], q_idx.shape[1], q_blocks.shape[1]
    slots = torch.arange(block // queries - 1, block, block // queries, device=q_idx.device).repeat(batch, n_q, 1)
    slots[..., -1] = q_blocks.argmax(-1)
    with torch.no_grad():
        pick = slots[:, None, :, :, None].expand(-1, heads, -1, -1, q_idx.shape[-1])
        q_rep = _tiles(q_idx, n_q, block, dtype).gather(3, pick)
        keys = _tiles(k_idx, k_blocks.shape[1], block, dtype).flatten(2, 3)
    return MassInputs(q_rep, q_blocks.gather(2, slots), keys, k_blocks.flatten(1))


def log_block_mass(per_block: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """The last steps of :func:`block_mass` (shared with its Triton kernel, :mod:`rtpurbo.ops.triton.block_mass`).

    per_block (B, H, c, r, nk) fp32: each representative query's log-sum-exp over each key block, ``-inf`` outside
    the candidates; chosen (B, 1 or H, c, nk) bool, the candidates. Returns (B, H, c, nk): the log of each block's
    softmax mass, averaged over the queries that see some candidate; a tiny number's log for a candidate without
    mass, ``-inf`` outside the candidates."""
    sees = per_block.amax(-1) > float("-inf")  # (B, H, c, r): the query sees some candidate
    mass = torch.softmax(per_block, dim=-1).nan_to_num(0.0).sum(3) / sees.sum(-1, keepdim=True).clamp(min=1)
    return mass.clamp(min=torch.finfo(torch.float32).tiny).log().masked_fill(~chosen, float("-inf"))


def block_mass(q_idx: torch.Tensor, k_idx: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor,
               candidates: torch.Tensor, block: int, queries: int = MASS_QUERIES,
               chunk_elements: int = MASS_CHUNK_ELEMENTS) -> torch.Tensor:
    """Log of the mean indexer probability mass of each candidate key block, over ``queries`` queries of each
    query block (:func:`mass_inputs`).

    Args: q_idx (B, H, Lq, d), k_idx (B, H, Lk, d); q_pos (B, Lq'), k_pos (B, Lk') with Lq' >= Lq, Lk' >= Lk
    (positions may be padded further, negative = empty); candidates (B, 1 or H, nq, nk) bool.
    Returns (B, H, nq, nk) fp32: log mass, averaged over the chosen queries that see some candidate (the last
    query sees every candidate block), so it sums to 1 over the candidates; a candidate with no mass gets the
    log of a tiny number; -inf outside the candidates. No gradient; no host sync.
    """
    q_rep, q_rep_pos, keys, key_pos = mass_inputs(q_idx, k_idx, q_pos, k_pos, block, queries)
    batch, heads, n_q = q_rep.shape[:3]
    n_k = key_pos.shape[1] // block
    with torch.no_grad():
        out = torch.empty(batch, heads, n_q, n_k, dtype=torch.float32, device=q_idx.device)
        step = max(1, chunk_elements // max(1, batch * heads * queries * n_k * block))
        for lo in range(0, n_q, step):
            hi = min(n_q, lo + step)
            logits = torch.einsum("bhqrd,bhkd->bhqrk", q_rep[:, :, lo:hi], keys)
            seen = (key_pos[:, None, None, :] >= 0) & (key_pos[:, None, None, :] <= q_rep_pos[:, lo:hi, :, None])
            logits = logits.masked_fill(~seen[:, None], float("-inf"))
            per_block = logits.view(batch, heads, hi - lo, queries, n_k, block).logsumexp(-1)  # (B, H, c, r, nk)
            chosen = candidates[:, :, lo:hi]
            out[:, :, lo:hi] = log_block_mass(per_block.masked_fill(~chosen[:, :, :, None, :], float("-inf")), chosen)
    return out


def block_scores(q_idx: torch.Tensor, k_idx: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor,
                 candidates: torch.Tensor, block: int, scoring: str = "pooled") -> torch.Tensor:
    """(B, H, nq, nk) scores whose softmax over the candidate key blocks of each query block is the block
    distribution the top-p rule reads (see the module docstring). Shapes as in :func:`block_mass`."""
    if scoring == "pooled":
        return torch.einsum("bhqd,bhkd->bhqk", pooled_index(q_idx, q_pos, block), pooled_index(k_idx, k_pos, block))
    check_scoring(scoring)
    return block_mass(q_idx, k_idx, q_pos, k_pos, candidates, block)
