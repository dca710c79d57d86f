"""How ``benchmarks/decode_step_ab.py`` loads the versions it compares (its timings need a GPU; loading does not).

Each ``--trees NAME=DIR`` entry loads that tree's kernels as a package of their own; ``--placebo`` loads the first tree a
second time under another name, so that the report shows what the harness reads between identical code.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[test]' installs it)")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def step_ab():
    spec = importlib.util.spec_from_file_location("decode_step_ab_under_test", ROOT / "benchmarks" / "decode_step_ab.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    before = set(sys.modules)
    yield module
    for name in set(sys.modules) - before:  # the trees' packages (rtpurbo_NAME...)
        if name.startswith("rtpurbo_"):
            del sys.modules[name]


def test_placebo_loads_the_first_tree_again_as_modules_of_its_own(step_ab):
    trees = step_ab.load_trees([f"abtest={ROOT}"], placebo=True)
    assert list(trees) == ["abtest", "abtest_again"]
    first, again = trees["abtest"], trees["abtest_again"]
    for part in ("topp", "decode", "threshold", "api", "roles"):
        assert first[part] is not again[part]
        assert Path(first[part].__file__) == Path(again[part].__file__)  # the same files
    assert again["decode"].__name__ == "rtpurbo_abtest_again.ops.triton.decode"
    # separate kernels: each compiles and caches on its own, as a different version would
    assert first["decode"]._decode_attention_kernel is not again["decode"]._decode_attention_kernel


def test_without_placebo_only_the_named_trees(step_ab):
    assert list(step_ab.load_trees([f"abtest={ROOT}"])) == ["abtest"]


@pytest.mark.parametrize("entries, placebo, message", [
    (["abtest={root}", "abtest={root}"], False, "names 'abtest' twice"),
    (["abtest={root}", "abtest_again={root}"], True, "--placebo adds a tree named 'abtest_again'"),
    (["abtest"], False, "NAME=DIR"),
    (["abtest={root}/no-such-folder"], False, "DIR/rtpurbo a package"),
])
def test_bad_tree_entries_are_refused_with_a_reason(step_ab, entries, placebo, message):
    with pytest.raises(SystemExit, match=message):
        step_ab.load_trees([e.format(root=ROOT) for e in entries], placebo=placebo)


@pytest.mark.parametrize("dtype", ["int32", "int16"])
def test_positions_other_than_int64_are_refused_before_any_gpu_work(step_ab, monkeypatch, capsys, dtype):
    """int32 is the baseline's own dtype (static decode's), so ``--positions`` takes int64 only."""
    monkeypatch.setattr(sys, "argv", ["decode_step_ab.py", "--trees", f"abtest={ROOT}", "--positions", dtype])
    with pytest.raises(SystemExit) as exit_:
        step_ab.main()
    assert exit_.value.code == 2
    assert f"--positions takes int64; got {dtype}" in capsys.readouterr().err


def test_the_indexer_query_has_the_same_norm_whatever_its_draw(step_ab):
    """Every case's indexer query is rescaled to L2 norm 4, so a regime's score std does not move with the draw."""
    import torch

    queries = torch.randn(64, 1, 1, 16, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    fixed = step_ab.fixed_norm(queries, step_ab.QUERY_NORM)
    assert step_ab.QUERY_NORM == 4.0 and fixed.dtype == torch.bfloat16
    norms = fixed.float().norm(dim=-1)
    assert torch.allclose(norms, torch.full_like(norms, 4.0), rtol=1e-2)  # bf16 rounding only
    assert queries.float().norm(dim=-1).std() > 0.3  # the draws themselves spread
    cosine = torch.nn.functional.cosine_similarity(fixed.float(), queries.float(), dim=-1)
    assert torch.all(cosine > 0.999)  # rescaled, not turned
    keys = torch.randn(200000, 16, generator=torch.Generator().manual_seed(1)) * step_ab.REGIMES["trained-like"]
    stds = (keys @ fixed[:8, 0, 0].float().T).std(dim=0)
    assert torch.allclose(stds, torch.full_like(stds, 2.56), rtol=0.02)


def test_position_variants_cast_each_layers_positions_and_share_the_rest(step_ab):
    """The baseline's positions are static decode's int32; ``--positions int64`` runs every tree again on the same
    layers with ``k_pos`` as int64, one tensor per layer."""
    import torch

    from rtpurbo.cache_layer import STATIC_POSITIONS

    assert step_ab.STATIC_POSITIONS is STATIC_POSITIONS == torch.int32
    layers = [dict(k=torch.randn(1, 1, 8, 4), k_pos=torch.arange(8, dtype=STATIC_POSITIONS)[None]) for _ in range(3)]
    assert list(step_ab.by_positions(layers, ())) == [""]
    variants = step_ab.by_positions(layers, ("int64",))
    assert list(variants) == ["", "+int64"] and variants[""] is layers
    cast = variants["+int64"]
    assert all(x["k_pos"].dtype == torch.int64 and torch.equal(x["k_pos"], y["k_pos"].long())
               for x, y in zip(cast, layers))
    assert all(x["k"] is y["k"] for x, y in zip(cast, layers))  # the same K: only the positions differ
    assert len({x["k_pos"].data_ptr() for x in cast}) == 3
    assert all(y["k_pos"].dtype == torch.int32 for y in layers)  # the baseline's inputs untouched


def test_model_io_hands_each_kernel_what_the_cache_hands_it(step_ab):
    """The step's kernels get the layer's merged output and running sums only where the tree's functions take them:
    this tree's retrieval chain both, its ring the output alone, and a function of an older tree neither."""
    trees = step_ab.load_trees([f"abtest={ROOT}"])
    x = dict(merged="merged", retrieval_heads="r-heads", local_heads="l-heads", key_sums="sums")
    assert step_ab.model_io(trees["abtest"]["topp"].topp_attention, x, "retrieval") == dict(
        out="merged", out_heads="r-heads", key_sums="sums")
    assert step_ab.model_io(trees["abtest"]["roles"].ring_beside_selection, x, "local") == dict(
        out="merged", out_heads="l-heads")

    def older(q, k, v, q_pos, k_pos, q_idx, k_idx, *, top_p, sinks=0):
        return q

    assert step_ab.model_io(older, x, "retrieval") == {}
