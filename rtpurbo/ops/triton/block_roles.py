"""The role of a key block for a query block in the aligned layout of the sparse prefill, as Triton arithmetic.

Shared by the block choice (:mod:`rtpurbo.ops.triton.block_sparse`) and the ``mass`` block scores
(:mod:`rtpurbo.ops.triton.block_mass`); the layout and the rule are in :mod:`rtpurbo.ops.triton.block_sparse`'s
docstring, and :func:`rtpurbo.ops.triton.block_sparse.candidate_blocks` is the same rule in PyTorch.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def aligned_block_roles(j, qb, n_k, k_len, sinks, band, BLOCK: tl.constexpr):
    """(seen, always kept) of key blocks ``j`` (of ``n_k``, over ``k_len`` keys) for the query block at global block
    index ``qb``: seen when ``j <= qb``; always kept when seen and holding a sink or a key at or after
    ``qb * BLOCK - band``."""
    seen = (j <= qb) & (j < n_k)
    k_hi = tl.minimum(j * BLOCK + BLOCK - 1, k_len - 1)
    return seen, seen & ((j * BLOCK < sinks) | (k_hi >= qb * BLOCK - band))
