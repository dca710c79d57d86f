import json

import pytest

from rtpurbo.config import HeadPlan, PlanMismatch, SparseConfig


def test_plan_json_round_trip():
    plan = HeadPlan(3, 2, 6, [[1], [], [0, 1]], scores=[[0.1, 0.9], [0.2, 0.3], [0.8, 0.7]], criterion="x")
    again = HeadPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan


def test_from_scores_picks_top_ratio_model_wide():
    scores = [[0.1, 0.9, 0.0], [0.5, 0.2, 0.95], [0.3, 0.0, 0.1]]
    plan = HeadPlan.from_scores(scores, num_q_heads=6, ratio=0.34)
    assert plan.retrieval == [[1], [2], []] or plan.retrieval == [[1], [0, 2], []]
    assert plan.num_retrieval() == round(0.34 * 9)
    assert HeadPlan.from_scores(scores, 6, ratio=0.01).num_retrieval() == 1


@pytest.mark.parametrize("ratio", [0, -0.1, 1.5, float("nan")])
def test_bad_ratio(ratio):
    with pytest.raises(ValueError, match="ratio"):
        HeadPlan.from_scores([[0.1, 0.2]], 2, ratio)


def test_headwise_export_import_round_trip():
    plan = HeadPlan(2, 2, 6, [[1], [0, 1]])
    exported = plan.to_headwise_config(sinks=4, window=1024)
    assert exported["headwise_config"] == [[0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]]
    assert "seqlen_threshold" not in exported
    again, settings = HeadPlan.from_headwise_config(exported, num_kv_heads=2)
    assert again.retrieval == plan.retrieval and settings == {"sinks": 4, "window": 1024}
    with_threshold = plan.to_headwise_config(sinks=4, window=1024, seqlen_threshold=16384)
    assert with_threshold["seqlen_threshold"] == 16384
    assert HeadPlan.from_headwise_config(with_threshold, num_kv_heads=2)[1]["seqlen_threshold"] == 16384


def test_headwise_import_rejects_split_groups():
    with pytest.raises(PlanMismatch, match="disagree"):
        HeadPlan.from_headwise_config({"headwise_config": [[1, 0, 0, 0]]}, num_kv_heads=2)
    with pytest.raises(PlanMismatch, match="headwise_config"):
        HeadPlan.from_headwise_config({"foo": 1}, num_kv_heads=2)


def test_plan_shape_errors():
    with pytest.raises(PlanMismatch, match="layers"):
        HeadPlan(3, 2, 4, [[0]])
    with pytest.raises(PlanMismatch, match="outside"):
        HeadPlan(1, 2, 4, [[2]])
    plan = HeadPlan.uniform(2, 2, 4, True)
    with pytest.raises(PlanMismatch, match="model has"):
        plan.check_model(3, 2, 4)


def test_sparse_config_validation_and_round_trip():
    cfg = SparseConfig(seqlen_threshold=0, window=128, sinks=2, top_p=0.8)
    assert SparseConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="window"):
        SparseConfig(window=0)
    with pytest.raises(ValueError, match="top_p"):
        SparseConfig(top_p=0)
    with pytest.raises(ValueError, match="unknown"):
        SparseConfig.from_dict({"windw": 3})
