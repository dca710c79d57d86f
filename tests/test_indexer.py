"""The indexer's position handling and initialisation."""
import pytest
import torch

from rtpurbo.modules.indexer import LowRankIndexer, low_frequency_dims
from rtpurbo.ops.reference import indexer_scores


def rotary(positions, head_dim, theta=10000.0):
    """cos, sin (1, L, D) in the rotate-half layout used by Llama-family models."""
    inv = theta ** (-torch.arange(0, head_dim, 2).double() / head_dim)
    freqs = positions.double()[:, None] * inv[None]
    emb = torch.cat([freqs, freqs], -1)
    return emb.cos()[None].float(), emb.sin()[None].float()


def rope(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
    return x * cos[:, None] + rotated * sin[:, None]


def test_full_width_indexer_with_rope_reproduces_attention_logits():
    """d_idx = D, RoPE on every dim, identity init: scores == q_rot . k_rot / sqrt(D) (G = 1)."""
    dim, length = 32, 20
    idx = LowRankIndexer(num_heads=2, group=1, head_dim=dim, index_dim=dim, rope_dims=dim)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 2, length, dim, generator=g), torch.randn(1, 2, length, dim, generator=g)
    cos, sin = rotary(torch.arange(length), dim)
    got = indexer_scores(idx.queries(q, cos, sin), idx.keys(k, cos, sin))
    want = rope(q, cos, sin) @ rope(k, cos, sin).transpose(-1, -2) / dim**0.5
    assert torch.allclose(got, want, atol=1e-4)


def test_group_pooling_averages_query_heads():
    dim = 16
    idx = LowRankIndexer(num_heads=1, group=3, head_dim=dim, index_dim=dim, rope_dims=0)
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(1, 3, 5, dim, generator=g), torch.randn(1, 1, 5, dim, generator=g)
    cos, sin = rotary(torch.arange(5), dim)
    got = indexer_scores(idx.queries(q, cos, sin), idx.keys(k, cos, sin))[0, 0]
    want = (q[0] @ k[0, 0].T).mean(0) / dim**0.5
    assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("rope_dims", [0, 8])
def test_scores_depend_on_relative_position_only(rope_dims):
    dim = 32
    idx = LowRankIndexer(num_heads=1, group=2, head_dim=dim, index_dim=16, rope_dims=rope_dims)
    torch.nn.init.normal_(idx.wq)
    torch.nn.init.normal_(idx.wk)
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(1, 2, 12, dim, generator=g), torch.randn(1, 1, 12, dim, generator=g)
    scores = []
    for offset in (0, 1000):
        cos, sin = rotary(torch.arange(12) + offset, dim)
        scores.append(indexer_scores(idx.queries(q, cos, sin), idx.keys(k, cos, sin)))
    assert torch.allclose(scores[0], scores[1], atol=1e-3)


def test_content_only_indexer_ignores_position_and_rope_indexer_does_not():
    dim = 32
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(1, 1, 1, dim, generator=g), torch.randn(1, 1, 1, dim, generator=g)
    for rope_dims, should_change in ((0, False), (16, True)):
        idx = LowRankIndexer(1, 1, dim, 16, rope_dims)
        torch.nn.init.normal_(idx.wq)
        torch.nn.init.normal_(idx.wk)
        near = rotary(torch.tensor([0]), dim)
        far = rotary(torch.tensor([50]), dim)
        s_near = indexer_scores(idx.queries(q, *near), idx.keys(k, *near))  # distance 0
        s_far = indexer_scores(idx.queries(q, *far), idx.keys(k, *near))  # distance 50
        assert (not torch.allclose(s_near, s_far, atol=1e-3)) == should_change


def test_low_frequency_dims_layout():
    assert low_frequency_dims(64, 16) == list(range(24, 32)) + list(range(56, 64))
    assert low_frequency_dims(8, 8) == list(range(8))


def test_bad_indexer_sizes():
    with pytest.raises(ValueError, match="index_dim"):
        LowRankIndexer(1, 1, 16, index_dim=32)
    with pytest.raises(ValueError, match="rope_dims"):
        LowRankIndexer(1, 1, 16, index_dim=8, rope_dims=3)
