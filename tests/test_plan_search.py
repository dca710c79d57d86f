"""Plan search on a tiny model: teacher forcing with padding, paired fidelity, the choice rule,
the Pareto front, costs, the written plan, and the ranking comparison."""
import json

import numpy as np
import pytest

from rtpurbo.config import HeadPlan, PlanMismatch, SparseConfig
from rtpurbo.convert import convert
from rtpurbo.data.task_data import TaskData, tokenizer_probe
from rtpurbo.data.tasks import TaskSample
from rtpurbo.families import geometry
from rtpurbo.pipeline import read_plan
from rtpurbo.plan.commands import write_search
from rtpurbo.plan.compare import read_scores, spearman, write_comparison
from rtpurbo.plan.cost import ModelShape, plan_cost
from rtpurbo.plan.search import SearchSettings, choose, pareto_front, search_plans, teacher_forced
from rtpurbo.testing import tiny_model, tiny_tokenizer

from .conftest import random_ids


def tune_data(split="tune", n=3):
    samples = []
    for t, task in enumerate(("niah_number", "common_words")):
        for i in range(n):
            prompt = random_ids(1, 40 + 3 * i, seed=10 * t + i)[0].tolist()
            answer = random_ids(1, 3, seed=100 + 10 * t + i)[0].tolist()
            samples.append(TaskSample(task, 64, 4_000_000 + 10 * t + i, 0.5, prompt, answer, "w", ["w"], "text"))
    windows = [random_ids(1, 48, seed=s)[0].tolist() for s in (7, 8)]
    return TaskData(samples, windows, {"probe": tokenizer_probe(tiny_tokenizer()), "split": split})


def test_padded_batches_score_like_single_samples():
    model = tiny_model("llama", num_layers=3)
    layers, kv, q, _ = geometry(model.config)
    convert(model, HeadPlan(layers, kv, q, [[0], [], [1]]), SparseConfig(window=8, sinks=2, top_p=1.0))
    samples = tune_data().samples
    one, batched = teacher_forced(model, samples, 1), teacher_forced(model, samples, 4)
    assert one.keys() == batched.keys()
    for key in one:
        assert batched[key][0] == one[key][0] and batched[key][1] == pytest.approx(one[key][1], abs=1e-4)


def test_search_measures_every_candidate_and_keeps_dense_exact():
    model = tiny_model("llama", num_layers=3)
    ranking = np.random.default_rng(0).random((3, 2)).tolist()
    settings = SearchSettings(ratios=[0.34, 1.0], windows=[8, 16], sinks=2, tolerance=0.0)
    result = search_plans(model, ranking, tune_data(), settings, progress=False)
    rows = result["rows"]
    assert [(r["ratio"], r["window"]) for r in rows] == [(0.34, 8), (0.34, 16), (1.0, 8), (1.0, 16)]
    assert [r["retrieval_kv_heads"] for r in rows] == [2, 2, 6, 6]
    full = rows[2]
    assert full["tf_points"] == 0 and full["logprob"] == 0 and full["ppl_percent"] == 0  # every head full = dense
    assert rows[0]["ppl_percent"] != 0 and rows[0]["units"] == 2 and result["samples"] == 6
    assert rows[0]["kv_bytes_per_token"] < rows[1]["kv_bytes_per_token"] < full["kv_bytes_per_token"]
    assert result["cost_context"] == 64
    with pytest.raises(PlanMismatch, match="the model has 3 x 2"):  # another model's ranking, before any pass
        search_plans(tiny_model("llama", num_layers=3), ranking[:2], tune_data(), settings, progress=False)
    assert model.rtpurbo_plan.num_retrieval() == 6  # left dense
    chosen = rows[result["chosen"]]
    assert result["within_tolerance"] and chosen["tf_points"] >= 0
    with pytest.raises(ValueError, match="must not see evaluation items"):
        search_plans(model, ranking, tune_data(split="eval"), settings, progress=False)


def row(kv_bytes, tf, ppl=0.0):
    return {"kv_bytes_per_token": kv_bytes, "tf_points": tf, "ppl_percent": ppl}


def test_choice_is_the_cheapest_within_tolerance():
    rows = [row(100, -2.0), row(200, -0.4), row(300, -0.1), row(200, -0.3, ppl=3.0), row(400, 0.2)]
    assert choose(rows, 0.5) == (3, True)  # 200 bytes, the higher fidelity of the two
    assert choose(rows, 0.5, ppl_tolerance=1.0) == (1, True)
    assert choose(rows, 0.05) == (4, True)
    assert choose(rows, -1.0) == (4, False)  # nothing qualifies: the most faithful
    assert pareto_front(rows) == [0, 3, 2, 4]


def test_costs_follow_the_plan():
    shape = ModelShape(num_layers=4, num_kv_heads=2, num_q_heads=4, head_dim=16, layer_params=10_000,
                       head_params=5_000)
    dense = plan_cost(shape, 8, 64, 4, 1024)
    assert dense["prefill_speedup"] == pytest.approx(1.0) and dense["decode_speedup"] == pytest.approx(1.0)
    assert dense["kv_ratio"] < 1  # every head retrieval still keeps indexer keys
    small, wide = plan_cost(shape, 2, 64, 4, 1024), plan_cost(shape, 2, 512, 4, 1024)
    assert small["kv_ratio"] > wide["kv_ratio"] > 1
    assert small["prefill_speedup"] > wide["prefill_speedup"] > 1 and small["decode_speedup"] > 1
    assert plan_cost(shape, 2, 2048, 4, 1024)["prefill_speedup"] == pytest.approx(1.0)  # W beyond the context


def test_written_search_carries_the_chosen_window(tmp_path):
    model = tiny_model("llama", num_layers=3)
    ranking = np.random.default_rng(1).random((3, 2)).tolist()
    result = search_plans(model, ranking, tune_data(), SearchSettings(ratios=[0.5], windows=[8, 16], sinks=2,
                                                                      tolerance=100.0), progress=False)
    result.update(criterion="knockout", scores="x", model="tiny")
    write_search(tmp_path, result)
    assert result["rows"][result["chosen"]]["window"] == 8  # all within tolerance: the smaller cache
    plan, overrides = read_plan(tmp_path / "headwise_config.json", model.config)
    assert overrides == {"sinks": 2, "window": 8} and plan.num_retrieval() == 3
    assert HeadPlan.from_dict(json.loads((tmp_path / "head_plan.json").read_text())).retrieval == plan.retrieval
    assert (tmp_path / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert "**chosen**" in (tmp_path / "search.md").read_text()


def test_ranking_comparison(tmp_path):
    rng = np.random.default_rng(2)
    a, b = rng.random((4, 3)), rng.random((4, 3)).tolist()
    copy = {"criterion": "copy", "ranking": a.tolist(), "num_q_heads": 6}
    knockout = {"criterion": "knockout", "ranking": (a ** 3).tolist(), "num_q_heads": 6}
    result = write_comparison(tmp_path, copy, knockout, [0.25, 0.5], 0.25)
    assert result["spearman"] == pytest.approx(1.0)  # a monotone transform keeps every rank
    assert result["ratios"]["0.25"]["jaccard"] == 1.0 and result["ratios"]["0.25"]["kept"] == 3
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    for name in ("compare.json", "compare.md", "scores_scatter.png", "plan_copy.json", "plan_knockout.png"):
        assert (tmp_path / name).is_file(), name
    assert read_scores(tmp_path / "plan_copy.json")["ranking"] == a.tolist()
    assert read_scores("smollm2-135m-rtpurbo")["criterion"] == "copy"  # the shipped adapter's plan keeps its scores
    (tmp_path / "head_scores.json").write_text(json.dumps({"criterion": "knockout", "num_q_heads": 6,
                                                           "ranking": a.tolist(), "kv_head_scores": {"answer_kl": b}}))
    answer = read_scores(tmp_path / "head_scores.json", "answer_kl")
    assert answer == {"criterion": "knockout:answer_kl", "ranking": b, "num_q_heads": 6}
    with pytest.raises(ValueError, match="no KV-head score"):
        read_scores(tmp_path / "head_scores.json", "copy")
    with pytest.raises(PlanMismatch, match="two names \\(--names A B\\)"):
        write_comparison(tmp_path, copy, copy, [0.25], 0.25)
