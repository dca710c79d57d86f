"""The reference op against a brute-force definition, and the SDPA backend against the reference."""
import pytest
import torch

from rtpurbo.ops import api, reference
from rtpurbo.ops.semantics import visible


def make_inputs(batch, n_q, n_kv, q_len, k_len, dim, seed=0, pad=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, n_q, q_len, dim, generator=g)
    k = torch.randn(batch, n_kv, k_len, dim, generator=g)
    v = torch.randn(batch, n_kv, k_len, dim, generator=g)
    k_pos = torch.arange(k_len).repeat(batch, 1)
    if pad:  # left padding on the last row: slots -1, positions restart at 0
        k_pos[-1, :pad] = -1
        k_pos[-1, pad:] -= pad
    q_pos = k_pos[:, k_len - q_len :]
    return q, k, v, q_pos, k_pos


def brute_force(q, k, v, q_pos, k_pos, window, sinks, key_mask=None):
    """fp64 attention with the mask built element by element from the definition."""
    batch, n_q, q_len, dim = q.shape
    group = n_q // k.shape[1]
    out = torch.zeros(batch, n_q, q_len, dim, dtype=torch.float64)
    for b in range(batch):
        for h in range(n_q):
            for i in range(q_len):
                keys = [
                    j for j in range(k.shape[2])
                    if k_pos[b, j] >= 0 and k_pos[b, j] <= q_pos[b, i]
                    and (window is None or q_pos[b, i] - k_pos[b, j] < window or k_pos[b, j] < sinks)
                    and (key_mask is None or key_mask[b, h // group, i, j])
                ]
                if not keys:
                    continue
                s = (k[b, h // group, keys].double() @ q[b, h, i].double()) / dim**0.5
                out[b, h, i] = torch.softmax(s, 0) @ v[b, h // group, keys].double()
    return out


@pytest.mark.parametrize("window,sinks", [(None, 0), (1, 0), (4, 2), (7, 4), (50, 4)])
@pytest.mark.parametrize("n_q,n_kv", [(2, 2), (6, 2), (8, 1)])
def test_reference_matches_brute_force(window, sinks, n_q, n_kv):
    q, k, v, q_pos, k_pos = make_inputs(2, n_q, n_kv, 13, 13, 8, pad=3)
    got = reference.attention(q, k, v, q_pos, k_pos, window=window, sinks=sinks, query_chunk=5)
    want = brute_force(q, k, v, q_pos, k_pos, window, sinks)
    assert torch.allclose(got.double(), want, atol=1e-5)


def test_reference_key_mask_and_empty_rows():
    q, k, v, q_pos, k_pos = make_inputs(1, 4, 2, 9, 9, 8, seed=1)
    key_mask = torch.rand(1, 2, 9, 9, generator=torch.Generator().manual_seed(2)) > 0.5
    got = reference.attention(q, k, v, q_pos, k_pos, key_mask=key_mask)
    want = brute_force(q, k, v, q_pos, k_pos, None, 0, key_mask)
    assert torch.allclose(got.double(), want, atol=1e-5)
    assert not torch.isnan(got).any()


@pytest.mark.parametrize("q_len,k_len", [(97, 97), (1025, 1025), (1, 300), (40, 300)])
@pytest.mark.parametrize("window,sinks", [(None, 0), (64, 4), (1, 0), (5000, 4)])
@pytest.mark.parametrize("n_q,n_kv,dim", [(3, 3, 64), (9, 3, 64), (8, 2, 128), (8, 1, 32)])
def test_sdpa_backend_matches_reference(q_len, k_len, window, sinks, n_q, n_kv, dim):
    q, k, v, q_pos, k_pos = make_inputs(2, n_q, n_kv, q_len, k_len, dim, pad=7)
    want = reference.attention(q.double(), k.double(), v.double(), q_pos, k_pos, window=window, sinks=sinks)
    got = api.attention(q, k, v, q_pos, k_pos, window=window, sinks=sinks, impl="sdpa")
    eager = reference.attention(q, k, v, q_pos, k_pos, window=window, sinks=sinks)  # same precision, eager
    err = (got.double() - want).abs().max().item()
    eager_err = (eager.double() - want).abs().max().item()
    assert err <= 2 * eager_err + 1e-6, (err, eager_err)


@pytest.mark.parametrize("window,sinks", [(None, 0), (64, 4), (16, 0)])
def test_sdpa_leading_empty_slots_equal_reference(window, sinks):
    """Empty slots (-1) before the keys, as in an unfilled ring: the mask alone drops them."""
    q, k, v, q_pos, _ = make_inputs(2, 6, 2, 300, 300, 32, seed=3)
    empty = 68
    k = torch.cat([torch.randn(2, 2, empty, 32), k], dim=2)
    v = torch.cat([torch.randn(2, 2, empty, 32), v], dim=2)
    k_pos = torch.cat([torch.full((2, empty), -1), q_pos], dim=1)
    want = reference.attention(q.double(), k.double(), v.double(), q_pos, k_pos, window=window, sinks=sinks)
    got = api.attention(q, k, v, q_pos, k_pos, window=window, sinks=sinks, impl="sdpa")
    assert (got.double() - want).abs().max().item() < 1e-5


def test_sdpa_backend_gradients_match_reference():
    q, k, v, q_pos, k_pos = make_inputs(1, 6, 2, 70, 70, 16, pad=0)
    grads = []
    for impl in ("reference", "sdpa"):
        qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
        api.attention(qq, kk, vv, q_pos, k_pos, window=9, sinks=2, impl=impl).square().sum().backward()
        grads.append([t.grad for t in (qq, kk, vv)])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-4)


def test_api_rejects_bad_shapes_and_backends():
    q, k, v, q_pos, k_pos = make_inputs(1, 6, 4, 5, 5, 8)
    with pytest.raises(ValueError, match="multiple of KV heads"):
        api.attention(q, k, v, q_pos, k_pos)
    q, k, v, q_pos, k_pos = make_inputs(1, 4, 2, 5, 5, 8)
    with pytest.raises(ValueError, match="k_pos must be"):
        api.attention(q, k, v, q_pos, k_pos[:, :3])
    with pytest.raises(ValueError, match="unknown attention impl"):
        api.attention(q, k, v, q_pos, k_pos, impl="magic")
    with pytest.raises(ValueError, match="window"):
        api.attention(q, k, v, q_pos, k_pos, window=0)


def test_flex_is_refused_not_faked_on_cpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; flex may be available")
    q, k, v, q_pos, k_pos = make_inputs(1, 4, 2, 5, 5, 8)
    with pytest.raises((api.BackendUnavailable, ValueError)):
        api.attention(q, k, v, q_pos, k_pos, window=2, impl="flex")


# --- top-p selection -----------------------------------------------------------------
def topp_inputs(k_len=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(1, 2, 1, k_len, generator=g) * 3
    q_pos = torch.tensor([[k_len - 1]])
    k_pos = torch.arange(k_len)[None]
    return scores, q_pos, k_pos


def test_topp_one_selects_every_visible_key():
    scores, q_pos, k_pos = topp_inputs()
    k_pos = k_pos.clone()
    k_pos[0, 3] = -1
    sel = reference.select_topp(scores, q_pos, k_pos, top_p=1.0)
    assert sel.sum().item() == 2 * 19 and not sel[..., 3].any()


def test_topp_is_smallest_prefix_reaching_mass():
    scores, q_pos, k_pos = topp_inputs()
    sel = reference.select_topp(scores, q_pos, k_pos, top_p=0.7)
    probs = torch.softmax(scores, -1)
    for h in range(2):
        chosen = probs[0, h, 0][sel[0, h, 0]]
        rest = probs[0, h, 0][~sel[0, h, 0]]
        assert chosen.sum() >= 0.7 - 1e-6
        assert chosen.sum() - chosen.min() < 0.7  # one fewer would not reach p
        assert rest.max() <= chosen.min()


def test_topp_ties_keep_earlier_key():
    scores = torch.zeros(1, 1, 1, 8)
    sel = reference.select_topp(scores, torch.tensor([[7]]), torch.arange(8)[None], top_p=0.3)
    assert sel[0, 0, 0].tolist() == [True, True, True, False, False, False, False, False]


def test_topp_budgets_sinks_and_recent():
    scores, q_pos, k_pos = topp_inputs(k_len=30)
    sel = reference.select_topp(scores, q_pos, k_pos, top_p=0.01, min_tokens=5, sinks=2, recent=3)
    s = sel[0, 0, 0]
    assert s[:2].all() and s[-3:].all()
    top5 = torch.softmax(scores[0, 0, 0], -1).argsort(descending=True)[:5]
    assert s[top5].all() and int(s.sum()) <= 5 + 2 + 3
    capped = reference.select_topp(scores, q_pos, k_pos, top_p=0.99, max_tokens=4)
    assert int(capped[0, 0, 0].sum()) == 4
    # budget smaller than sinks + recent: sinks and recent still kept
    small = reference.select_topp(scores, q_pos, k_pos, top_p=0.01, max_tokens=1, sinks=4, recent=4)
    assert small[0, 0, 0, :4].all() and small[0, 0, 0, -4:].all()


def test_topp_empty_history_selects_nothing_and_attention_is_zero():
    scores = torch.randn(1, 1, 1, 4)
    sel = reference.select_topp(scores, torch.tensor([[0]]), torch.full((1, 4), -1), top_p=0.9, min_tokens=3)
    assert not sel.any()


def test_topp_attention_with_p_one_equals_full_attention():
    q, k, v, q_pos, k_pos = make_inputs(2, 6, 2, 1, 50, 16, pad=5)
    g = torch.Generator().manual_seed(3)
    q_idx, k_idx = torch.randn(2, 2, 1, 4, generator=g), torch.randn(2, 2, 50, 4, generator=g)
    out, counts = api.topp_attention(q, k, v, q_pos, k_pos, q_idx, k_idx, top_p=1.0)
    full = reference.attention(q, k, v, q_pos, k_pos)
    assert torch.equal(out, full)
    assert counts[1].eq(45).all() and counts[0].eq(50).all()


def test_topp_attention_writes_into_a_merged_output_through_its_head_map():
    """``out`` / ``out_heads``: the query heads' outputs land at the named heads of a larger buffer (a layer's merged
    output, seen as (B, H_out, 1, D)), the other heads untouched, and the call returns that buffer."""
    q, k, v, q_pos, k_pos = make_inputs(2, 6, 2, 1, 50, 16, pad=5)
    g = torch.Generator().manual_seed(4)
    q_idx, k_idx = torch.randn(2, 2, 1, 4, generator=g), torch.randn(2, 2, 50, 4, generator=g)
    args = (q, k, v, q_pos, k_pos, q_idx, k_idx)
    want, want_counts = api.topp_attention(*args, top_p=0.7, min_tokens=3)
    merged = torch.full((2, 1, 9, 16), 5.0)
    heads = torch.tensor([8, 0, 3, 5, 1, 7])
    out, counts = api.topp_attention(*args, top_p=0.7, min_tokens=3, out=merged.transpose(1, 2), out_heads=heads)
    assert out.data_ptr() == merged.data_ptr() and torch.equal(counts, want_counts)
    assert torch.equal(merged[:, 0, heads], want[:, :, 0])
    assert bool((merged[:, 0, [2, 4, 6]] == 5.0).all())
    same = torch.empty_like(want)
    assert api.topp_attention(*args, top_p=0.7, min_tokens=3, out=same)[0] is same and torch.equal(same, want)


def test_topp_backend_errors():
    q, k, v, q_pos, k_pos = make_inputs(1, 4, 2, 1, 6, 8)
    q_idx, k_idx = torch.randn(1, 2, 1, 4), torch.randn(1, 2, 6, 4)
    with pytest.raises(ValueError, match="unknown topp_attention impl"):
        api.topp_attention(q, k, v, q_pos, k_pos, q_idx, k_idx, top_p=0.5, impl="magic")
    if not torch.cuda.is_available():
        with pytest.raises(api.BackendUnavailable):
            api.topp_attention(q, k, v, q_pos, k_pos, q_idx, k_idx, top_p=0.5, impl="triton")
