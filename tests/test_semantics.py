import pytest
import torch

from rtpurbo.ops.semantics import causal_pairs, local_pairs, max_visible_keys, visible


def brute(i, j, window, sinks):
    if j < 0 or j > i:
        return False
    return window is None or i - j < window or j < sinks


@pytest.mark.parametrize("window,sinks", [(None, 0), (1, 0), (3, 2), (5, 4), (100, 4)])
def test_visible_matches_definition(window, sinks):
    pos = torch.arange(-1, 12)
    got = visible(pos, pos, window, sinks)
    for a, i in enumerate(pos.tolist()):
        for b, j in enumerate(pos.tolist()):
            assert bool(got[a, b]) == brute(i, j, window, sinks), (i, j)


def test_window_edges_and_sinks():
    q = torch.tensor([10])
    k = torch.arange(11)
    row = visible(q, k, window=4, sinks=2)[0]
    # i - j = W - 1 = 3 -> visible; i - j = W = 4 -> not (unless a sink)
    assert row[7] and not row[6]
    assert row[0] and row[1] and not row[2]  # sinks j < S
    assert int(row.sum()) == 4 + 2  # W + S keys at most


def test_query_before_sinks_sees_only_its_past():
    pos = torch.arange(6)
    m = visible(pos, pos, window=2, sinks=4)
    assert m[1].tolist() == [True, True, False, False, False, False]
    assert m[3].tolist() == [True, True, True, True, False, False]


def test_window_larger_than_sequence_is_causal():
    pos = torch.arange(9)
    assert torch.equal(visible(pos, pos, window=50, sinks=4), visible(pos, pos, None, 0))


def test_empty_slots_never_visible():
    k = torch.tensor([-1, 0, 1, -1])
    assert visible(torch.tensor([5]), k, None, 0)[0].tolist() == [False, True, True, False]


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_bad_window_raises(bad):
    with pytest.raises(ValueError, match="window"):
        visible(torch.arange(3), torch.arange(3), bad, 0)


def test_bad_sinks_raise():
    with pytest.raises(ValueError, match="sinks"):
        visible(torch.arange(3), torch.arange(3), 4, -1)


def test_max_visible_keys():
    assert max_visible_keys(None, 4, 100) == 100
    assert max_visible_keys(16, 4, 100) == 20
    assert max_visible_keys(16, 4, 10) == 10


@pytest.mark.parametrize("length", [1, 5, 17, 64])
@pytest.mark.parametrize("window,sinks", [(1, 0), (3, 2), (5, 4), (16, 4), (100, 4), (4, 9)])
def test_pair_counts_are_the_visibility_rule_summed(length, window, sinks):
    """The FLOP and cost models count pairs with closed forms; they equal the visible (query, key) pairs of a plain
    prefill under :func:`visible`."""
    pos = torch.arange(length)
    assert causal_pairs(length) == int(visible(pos, pos, None, 0).sum())
    assert local_pairs(length, window, sinks) == int(visible(pos, pos, window, sinks).sum())
