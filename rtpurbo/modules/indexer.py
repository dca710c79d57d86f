"""``LowRankIndexer``: cheap scores over all earlier tokens for the retrieval heads of one layer.

For retrieval KV head ``h`` with query heads ``g = 0..G-1`` (pre-RoPE, after q/k norms):

    k_idx(j) = k_h(j) @ Wk[h]                       (D -> d_idx)
    q_idx(i) = sum_g q_{h,g}(i) @ Wq[h, g]          (pooled over the GQA group: one
                                                     selection per KV head, so a KV
                                                     head's cache is read once)
    s_ij     = <rope(q_idx(i)), rope(k_idx(j))>

Position. The indexer reads the head's *pre-RoPE* q and k, so by default
(``rope_dims = 0``) its scores depend on content only: a projection of rotated
vectors would mix positions non-relatively. Optionally the first ``rope_dims``
indexer dimensions are rotated with the base model's own lowest RoPE frequencies,
laid out rotate-half like the base model, which keeps the scores a function of
``i - j`` only. Recency is covered by the ``recent`` tokens always kept at decode.

Initialisation (no data needed): ``Wk`` selects the head's ``d_idx`` lowest-frequency
RoPE coordinates (those that barely rotate over the context and carry long-range
matching), and ``Wq`` selects the same coordinates of each query head, scaled by
``1 / (G * sqrt(D))``, so an untrained indexer scores like the head's own attention
restricted to those coordinates, averaged over the group.
"""
from __future__ import annotations

import torch
import torch.nn as nn


def low_frequency_dims(head_dim: int, count: int) -> list[int]:
    """Indices of the ``count`` (even) lowest-frequency coordinates in rotate-half RoPE layout.

    Coordinates ``i`` and ``i + D/2`` share frequency ``theta^(-2i/D)``; the lowest are at
    the largest ``i``. Returned as the first members of the pairs, then their partners,
    which is the rotate-half layout again (so ``count = D`` gives the identity order).
    """
    half = head_dim // 2
    firsts = list(range(half - count // 2, half))
    return firsts + [i + half for i in firsts]



def check_index_dim(index_dim: int, head_dim: int) -> None:
    """Raise ValueError unless ``index_dim`` is a width the indexer takes: even and in [2, head_dim]."""
    if index_dim % 2 or not 2 <= index_dim <= head_dim:
        raise ValueError(f"index_dim must be even and in [2, head_dim={head_dim}], got {index_dim}")

class LowRankIndexer(nn.Module):
    """Indexer weights for the ``num_heads`` retrieval KV heads of one layer.

    Args:
        num_heads: retrieval KV heads in the layer (``Hr``).
        group: query heads per KV head (``G``).
        head_dim: ``D``.
        index_dim: ``d_idx``.
        rope_dims: indexer dimensions that get RoPE (even, <= index_dim; 0 = none).
    """

    def __init__(self, num_heads: int, group: int, head_dim: int, index_dim: int = 16, rope_dims: int = 0) -> None:
        super().__init__()
        check_index_dim(index_dim, head_dim)
        if rope_dims % 2 or not 0 <= rope_dims <= index_dim:
            raise ValueError(f"rope_dims must be even and in [0, index_dim={index_dim}], got {rope_dims}")
        self.num_heads, self.group, self.head_dim = num_heads, group, head_dim
        self.index_dim, self.rope_dims = index_dim, rope_dims
        self.wq = nn.Parameter(torch.zeros(num_heads, group, head_dim, index_dim))
        self.wk = nn.Parameter(torch.zeros(num_heads, head_dim, index_dim))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Select the lowest-frequency coordinates (see module docstring)."""
        dims = low_frequency_dims(self.head_dim, self.index_dim)
        select = torch.zeros(self.head_dim, self.index_dim)
        select[dims, torch.arange(len(dims))] = 1.0
        self.wk.copy_(select.expand_as(self.wk))
        self.wq.copy_((select / (self.group * self.head_dim**0.5)).expand_as(self.wq))

    # keys / queries: one bmm over the heads, without einsum's extra view ops (they cost time at
    # every decode step). Queries contract over (G, D) in wq's own (G, D) order, so at decode
    # (B = L = 1, queries straight from the projection) both operands are views: no copy kernels.
    def keys(self, k_raw: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """k_raw (B, Hr, L, D) pre-RoPE keys -> (B, Hr, L, d_idx) indexer keys."""
        batch, heads, length, dim = k_raw.shape
        rows = k_raw.transpose(0, 1).reshape(heads, batch * length, dim)  # (Hr, B*L, D)
        k_idx = torch.bmm(rows, self.wk.to(k_raw.dtype))  # (Hr, B*L, d_idx)
        return self._rope(k_idx.view(heads, batch, length, -1).transpose(0, 1), cos, sin)

    def queries(self, q_raw: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """q_raw (B, Hr*G, L, D) pre-RoPE queries -> (B, Hr, L, d_idx) indexer queries."""
        batch, _, length, dim = q_raw.shape
        heads, width = self.num_heads, dim * self.group
        grouped = q_raw.view(batch, heads, self.group, length, dim)
        rows = grouped.permute(1, 0, 3, 2, 4).reshape(heads, batch * length, width)  # (Hr, B*L, G*D)
        weight = self.wq.to(q_raw.dtype).reshape(heads, width, -1)  # (Hr, G*D, d_idx)
        q_idx = torch.bmm(rows, weight)  # (Hr, B*L, d_idx): sum over the G heads and D
        return self._rope(q_idx.view(heads, batch, length, -1).transpose(0, 1), cos, sin)

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotate the first ``rope_dims`` dims with the base model's lowest frequencies.

        cos, sin: (B, L, D) from the model's rotary embedding (rotate-half layout).
        """
        if self.rope_dims == 0:
            return x
        half, r = self.head_dim // 2, self.rope_dims // 2
        freq = torch.arange(half - r, half, device=x.device)
        c = torch.cat([cos[..., freq], cos[..., freq]], dim=-1)[:, None].to(x.dtype)
        s = torch.cat([sin[..., freq], sin[..., freq]], dim=-1)[:, None].to(x.dtype)
        rot, rest = x[..., : self.rope_dims], x[..., self.rope_dims :]
        rotated = torch.cat([-rot[..., r:], rot[..., :r]], dim=-1)
        return torch.cat([rot * c + rotated * s, rest], dim=-1)
