"""Head plans across domains: pooled scores, overlap and moved heads, and profiling with the user's documents."""
import json
import random

import pytest
import torch

from rtpurbo import pipeline
from rtpurbo.data.sources import Document
from rtpurbo.pipeline import ProfileSettings, run_domain_profile
from rtpurbo.profile.domains import domain_stability, merge_scores, rank_correlation, stability_summary
from rtpurbo.profile.run import HeadScores
from rtpurbo.testing import tiny_model, tiny_tokenizer

from .test_train_data import one_thread  # noqa: F401 (autouse fixture)


def scores(copy_per_query_head, prompts, group=2):
    """HeadScores of a (layers, q_heads) copy grid; the other scores zero."""
    per_q = {"copy": torch.tensor(copy_per_query_head, dtype=torch.float64)}
    per_q["needle_mass"] = torch.zeros_like(per_q["copy"])
    per_q["long_range_mass"] = torch.zeros_like(per_q["copy"])
    layers, num_q = per_q["copy"].shape
    kv = {name: value.view(layers, num_q // group, group).amax(-1) for name, value in per_q.items()}
    return HeadScores(kv, per_q, num_q, window=8, sinks=2, num_prompts=prompts)


def test_merge_weights_by_prompts_and_takes_the_group_max_after():
    a = scores([[1.0, 0.0, 0.0, 0.0]], prompts=3)
    b = scores([[0.0, 0.0, 0.0, 1.0]], prompts=1)
    pooled = merge_scores([a, b])
    assert pooled.num_prompts == 4
    assert pooled.per_query_head["copy"].tolist() == [[0.75, 0.0, 0.0, 0.25]]
    assert pooled.kv["copy"].tolist() == [[0.75, 0.25]]


def test_stability_reports_overlap_and_the_heads_that_move():
    # 2 layers x 4 KV heads (G = 2); each domain's top 3 KV heads share two
    builtin = scores([[0.9, 0, 0.8, 0, 0.1, 0, 0, 0], [0.7, 0, 0, 0, 0, 0, 0.05, 0]], prompts=6)
    data = scores([[0.9, 0, 0.1, 0, 0.1, 0, 0, 0], [0.7, 0, 0.6, 0, 0, 0, 0.05, 0]], prompts=6)
    stability = domain_stability({"builtin": builtin, "data": data}, merge_scores([builtin, data]), ratio=3 / 8)
    pair = stability["pair"]
    assert stability["retrieval_kv_heads"] == 3 and pair["shared"] == 2 and pair["overlap"] == pytest.approx(2 / 3)
    assert [m["head"] for m in pair["only_a"]] == ["L0.H1"] and [m["head"] for m in pair["only_b"]] == ["L1.H1"]
    assert pair["only_a"][0]["rank_a"] < 3 <= pair["only_a"][0]["rank_b"]
    assert stability["domains"]["data"]["retrieval"] == ["L0.H0", "L1.H0", "L1.H1"]
    assert 0 < pair["rank_correlation"] < 1
    assert "2/3 of the same" in stability_summary(stability) and "only data: L1.H1" in stability_summary(stability)
    same = torch.rand(3, 4)
    assert rank_correlation(same, same) == pytest.approx(1.0) and rank_correlation(same, -same) == pytest.approx(-1.0)


def user_docs(n=3, words=4000):
    rng = random.Random(1)
    return [" ".join(f"w{rng.randrange(200)}" for _ in range(words)) for _ in range(n)]


@pytest.mark.parametrize("builtin", [False, True])
def test_profiling_with_user_documents_writes_plan_and_stability(tmp_path, monkeypatch, builtin):
    model, tokenizer = tiny_model("llama", num_layers=2), tiny_tokenizer()
    fake_builtin = [Document("jargon-text", "x", text) for text in user_docs(2)]
    monkeypatch.setattr(pipeline, "long_documents", lambda *args, **kwargs: fake_builtin)
    settings = ProfileSettings(window=16, sinks=2, retrieval_ratio=0.5, profile_length=96, profile_samples=1)
    pooled, plan, stability = run_domain_profile(model, tokenizer, settings, user_docs(), tmp_path, builtin=builtin,
                                                 progress=False)
    assert plan.num_retrieval() == 2 and pooled.num_prompts == (6 if builtin else 3)
    assert (tmp_path / "head_plan.json").is_file()
    assert (tmp_path / "domain_stability.json").is_file() == builtin
    if builtin:
        stored = json.loads((tmp_path / "domain_stability.json").read_text())
        assert stored["domains"]["builtin"]["prompts"] == 3 and stored["domains"]["data"]["prompts"] == 3
        assert stored["pair"]["shared"] + len(stored["pair"]["only_a"]) == 2
