"""Stage 1 on a tiny model: the indexer KL falls, recall rises, resume is exact, NaN stops the run."""
import json

import pytest
import torch

from rtpurbo.config import HeadPlan, SparseConfig
from rtpurbo.convert import convert
from rtpurbo.testing import tiny_model
from rtpurbo.train import indexer_targets
from rtpurbo.train.checkpoint import CheckpointMismatch
from rtpurbo.train.loop import LoopSettings, TrainingDiverged, make_runtime
from rtpurbo.train.stage1_indexer import IndexerSettings, train_indexer

from .test_train_data import make_tiny_shards, one_thread  # noqa: F401 (autouse fixture)

SPARSE = SparseConfig(seqlen_threshold=0, window=16, sinks=2, top_p=0.8, min_tokens=4, recent=4)


def converted_llama():
    model = tiny_model("llama")  # 2 layers, 2 KV heads, G = 3
    return convert(model, HeadPlan(2, 2, 6, [[0], [1]]), SPARSE)


def settings(steps=20, **loop):
    loop = {"batch_size": 2, "lr": 1e-2, "warmup": 2, "progress": False, **loop}
    return IndexerSettings(loop=LoopSettings(steps=steps, **loop), queries=32, eval_queries=48)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_tiny_shards(tmp_path_factory.mktemp("shards"), seq_len=96, sequences=12)[0]


def test_indexer_kl_decreases_and_only_indexers_change(shards):
    model = converted_llama()
    frozen = {k: v.clone() for k, v in model.state_dict().items() if ".indexer." not in k}
    report = train_indexer(model, shards, settings(), make_runtime("cpu"))
    losses = [h["loss"] for h in report["history"]]
    assert len(losses) == 20
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    assert report["after"]["mean_kl"] < report["before"]["mean_kl"]
    assert report["after"]["mean_recall"] > report["before"]["mean_recall"]
    assert set(report["before"]["heads"]) == {"L0.H0", "L1.H1"}
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in frozen.items())


def test_resumed_run_equals_uninterrupted(shards, tmp_path):
    straight = converted_llama()
    train_indexer(straight, shards, settings(steps=6), make_runtime("cpu"))
    resumed = converted_llama()
    first = settings(steps=6, checkpoint_dir=tmp_path, time_budget=0.0)  # stops (checkpointed) after step 0
    assert train_indexer(resumed, shards, first, make_runtime("cpu"))["steps_done"] == 1
    state = json.loads((tmp_path / "latest" / "state.json").read_text())
    (tmp_path / "latest" / "state.json").write_text(json.dumps({**state, "seconds": 1000.0}))  # a long first part
    fresh = converted_llama()  # a new process would start from the artifact again
    report = train_indexer(fresh, shards, settings(steps=6, checkpoint_dir=tmp_path, resume=True), make_runtime("cpu"))
    assert report["steps_done"] == 6 and len(report["history"]) == 6
    assert 1000 <= report["seconds"] < 1100  # the time before the resume included
    for (name, a), b in zip(straight.named_parameters(), fresh.parameters()):
        assert torch.equal(a, b), name


def test_resume_refuses_a_checkpoint_of_another_model_or_plan(shards, tmp_path):
    first = converted_llama()
    first.rtpurbo_fingerprint = "base-a"  # as io.load records the base weights' content hash
    stop = settings(steps=6, checkpoint_dir=tmp_path, time_budget=0.0)
    assert train_indexer(first, shards, stop, make_runtime("cpu"))["steps_done"] == 1
    resume = settings(steps=6, checkpoint_dir=tmp_path, resume=True)
    other_base = converted_llama()
    other_base.rtpurbo_fingerprint = "base-b"
    with pytest.raises(CheckpointMismatch, match="differs in \\['base_model'\\]"):
        train_indexer(other_base, shards, resume, make_runtime("cpu"))
    other_plan = convert(tiny_model("llama"), HeadPlan(2, 2, 6, [[1], [1]]), SPARSE)
    other_plan.rtpurbo_fingerprint = "base-a"
    with pytest.raises(CheckpointMismatch, match="differs in \\['plan'\\]"):
        train_indexer(other_plan, shards, resume, make_runtime("cpu"))
    same = converted_llama()
    same.rtpurbo_fingerprint = "base-a"
    assert train_indexer(same, shards, resume, make_runtime("cpu"))["steps_done"] == 6


def test_stage1_learns_the_dense_attention_whatever_prefill_the_model_runs(shards):
    from dataclasses import replace

    dense = converted_llama()
    topp = convert(tiny_model("llama"), HeadPlan(2, 2, 6, [[0], [1]]), replace(SPARSE, retrieval_prefill="topp"))
    reports = [train_indexer(m, shards, settings(steps=1), make_runtime("cpu")) for m in (dense, topp)]
    assert reports[0]["before"] == reports[1]["before"]  # the same targets: the heads' own dense attention
    assert topp.rtpurbo_sparse.retrieval_prefill == "topp"  # the model's own setting is back


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(shards, tmp_path, monkeypatch):
    real, calls = indexer_targets.indexer_kl, []

    def poisoned(target, scores, visible):
        calls.extend([1] if scores.requires_grad else [])  # training calls only, 2 layers per step
        kl = real(target, scores, visible)
        return kl * float("nan") if len(calls) > 2 * 2 else kl  # NaN from step 2 on

    monkeypatch.setattr(indexer_targets, "indexer_kl", poisoned)
    with pytest.raises(TrainingDiverged, match="loss is nan at step 2.*last good checkpoint"):
        train_indexer(converted_llama(), shards, settings(steps=10, checkpoint_dir=tmp_path, checkpoint_every=2),
                      make_runtime("cpu"))
    state = json.loads((tmp_path / "latest" / "state.json").read_text())
    assert state["step"] == 2


def test_history_reports_the_rate_each_step_used(shards):
    """Linear warm-up over 2 steps, then a cosine decay to 0 at step 6: step s trains at the rate of s."""
    import math

    report = train_indexer(converted_llama(), shards, settings(steps=6), make_runtime("cpu"))
    expected = [0.0, 0.5] + [0.5 * (1 + math.cos(math.pi * (s - 2) / 4)) for s in range(2, 6)]
    assert [h["lr"] for h in report["history"]] == pytest.approx([1e-2 * e for e in expected])


def test_a_warmup_as_long_as_the_run_is_warned_about(shards):
    with pytest.warns(UserWarning, match="never reaches 0.01 \\(at most 0.000333\\)"):
        train_indexer(converted_llama(), shards, settings(steps=2, warmup=30), make_runtime("cpu"))


def test_training_refuses_a_gpu_index_it_would_not_honour():
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES=1 and --device cuda"):
        make_runtime("cuda:1")
