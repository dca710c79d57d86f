"""Stage 2 on a tiny model: the teacher is the base model, the KL falls, resume is exact."""
import math
from dataclasses import replace

import pytest
import torch

from rtpurbo.testing import tiny_model
from rtpurbo.train.loop import LoopSettings, make_runtime
from rtpurbo.lora import LoraSettings, attach_lora
from rtpurbo.train.stage2_distill import DistillSettings, distill
from rtpurbo.train.teacher import Teacher

from .test_train_data import make_tiny_shards, one_thread  # noqa: F401 (autouse fixture)
from .test_train_stage1 import converted_llama


def settings(trainable="lora", steps=20, **loop):
    lr = {"lora": 1e-2, "attention": 2e-3, "all": 2e-3}[trainable]
    loop = {"batch_size": 2, "lr": lr, "warmup": 2, "progress": False, **loop}
    return DistillSettings(loop=LoopSettings(steps=steps, **loop), trainable=trainable, indexer_queries=24,
                           lora=LoraSettings(r=4, alpha=8), logits_chunk=40)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_tiny_shards(tmp_path_factory.mktemp("shards"), seq_len=96, sequences=12)[0]


def test_teacher_is_the_base_model_even_with_trained_adapters():
    ids = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = tiny_model("llama")(ids).logits
    model = converted_llama()
    attach_lora(model, LoraSettings(r=4))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
        assert not torch.allclose(model(ids, use_cache=False).logits, want, atol=1e-3)  # the student did change
    teacher = Teacher(model, copy_weights=False)
    got = teacher.logits(teacher.hidden(ids))
    assert torch.allclose(got, want, atol=1e-5)
    assert type(model.model.layers[0].self_attn).__name__ == "SparseAttention"  # restored after the forward


@pytest.mark.parametrize("trainable", ["lora", "attention"])
def test_distillation_kl_decreases(shards, trainable):
    model = converted_llama()
    base = {k: v.clone() for k, v in model.state_dict().items() if "mlp" in k}
    report = distill(model, shards, settings(trainable), make_runtime("cpu"))
    kl = [h["kl"] for h in report["history"]]
    assert len(kl) == 20 and sum(kl[-5:]) < 0.9 * sum(kl[:5])
    assert report["heldout_kl_after"] < report["heldout_kl_before"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in base.items())
    if trainable == "attention":
        assert "model.layers.0.self_attn.q_proj.weight" in model.rtpurbo_modified
    else:
        assert getattr(model, "rtpurbo_modified", []) == [] and model.rtpurbo_lora["r"] == 4
    assert model.rtpurbo_sparse.retrieval_prefill == "dense"  # top-p prefill only while training


def test_sparse_student_with_mass_scores_trains_and_leaves_the_model_as_it_was(tmp_path):
    """Stage 2 with the student on sparse prefill over several key blocks, scored by indexer mass: finite
    losses, the held-out KL is measured, and the model keeps its own prefill settings afterwards."""
    shards = make_tiny_shards(tmp_path, seq_len=400, sequences=6)[0]
    model = converted_llama()
    model.rtpurbo_sparse.prefill_top_p = 0.5
    run = settings(steps=3, batch_size=1)
    run.student_prefill, run.student_scoring, run.eval_sequences = "sparse", "mass", 1
    report = distill(model, shards, run, make_runtime("cpu"))
    assert report["steps_done"] == 3 and all(math.isfinite(h["kl"]) for h in report["history"])
    assert report["settings"]["student_scoring"] == "mass"
    assert (model.rtpurbo_sparse.retrieval_prefill, model.rtpurbo_sparse.prefill_scoring) == ("dense", "pooled")


def test_resumed_distillation_equals_uninterrupted(shards, tmp_path):
    straight = converted_llama()
    distill(straight, shards, settings(steps=5), make_runtime("cpu"))
    first = converted_llama()
    assert distill(first, shards, settings(steps=5, checkpoint_dir=tmp_path, time_budget=0.0),
                   make_runtime("cpu"))["steps_done"] == 1
    fresh = converted_llama()
    distill(fresh, shards, settings(steps=5, checkpoint_dir=tmp_path, resume=True), make_runtime("cpu"))
    for (name, a), b in zip(straight.named_parameters(), fresh.parameters()):
        assert torch.equal(a, b), name


def test_resume_refuses_a_stage2_checkpoint_of_other_indexers(shards, tmp_path):
    """convert --train resumed after stage 1 ran on: stage 2's checkpoint of the earlier indexers is another run."""
    from rtpurbo.train.checkpoint import CheckpointMismatch

    first = converted_llama()
    assert distill(first, shards, settings(steps=5, checkpoint_dir=tmp_path, time_budget=0.0),
                   make_runtime("cpu"))["steps_done"] == 1
    moved = converted_llama()
    with torch.no_grad():
        next(p for n, p in moved.named_parameters() if ".indexer." in n).add_(0.1)  # stage 1 trained on
    with pytest.raises(CheckpointMismatch, match="indexers_at_start"):
        distill(moved, shards, settings(steps=5, checkpoint_dir=tmp_path, resume=True), make_runtime("cpu"))


def test_a_model_with_trained_base_tensors_is_not_distilled_again(shards):
    """Its teacher would be the trained model: refused, not distilled against the wrong teacher."""
    from rtpurbo.train.stage2_distill import TrainedBase

    model = converted_llama()
    distill(model, shards, settings("attention", steps=1), make_runtime("cpu"))
    assert model.rtpurbo_modified  # what io.save records and io.load restores
    with pytest.raises(TrainedBase, match="teacher must be the original model"):
        distill(model, shards, settings(steps=1), make_runtime("cpu"))


def test_snapshots_keep_the_models_own_prefill(shards, tmp_path):
    """A part-way snapshot is the model it will be, not the student stage 2 runs (sparse prefill here)."""
    model = converted_llama()
    seen = []
    sparse_student = replace(settings(steps=2, checkpoint_dir=tmp_path, checkpoint_every=1), student_prefill="sparse")
    distill(model, shards, sparse_student, make_runtime("cpu"),
            on_checkpoint=lambda step: seen.append(model.rtpurbo_sparse.retrieval_prefill))
    assert seen and set(seen) == {"dense"} and model.rtpurbo_sparse.retrieval_prefill == "dense"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU training path (compiled flex backward) needs CUDA")
@pytest.mark.parametrize("student_prefill,scoring", [("topp", None), ("sparse", None), ("sparse", "mass")])
def test_distillation_runs_on_cuda_past_the_window(tmp_path, student_prefill, scoring):
    """Stage 2 on the GPU (bf16 autocast, compiled flex forward and backward) over sequences longer than
    the local window, so the window band's block lists are compact in forward: a few steps finish with
    finite losses and the held-out KL is measured."""
    from rtpurbo.config import HeadPlan, SparseConfig
    from rtpurbo.convert import convert

    shards = make_tiny_shards(tmp_path, seq_len=1100, sequences=6)[0]
    model = convert(tiny_model("llama"), HeadPlan(2, 2, 6, [[0], [1]]),
                    SparseConfig(window=128, sinks=4, top_p=0.9, prefill_min_blocks=1, prefill_band=128)).cuda()
    run = settings(steps=4, batch_size=1)
    run.student_prefill, run.student_scoring, run.eval_sequences = student_prefill, scoring, 1
    report = distill(model, shards, run, make_runtime("cuda"))
    assert report["steps_done"] == 4 and all(math.isfinite(h["kl"]) for h in report["history"])
    assert math.isfinite(report["heldout_kl_after"])


def test_default_rate_with_a_warmup_longer_than_the_run(shards):
    """The learning rate of stage 2 defaults by what it trains (lr None until then); a short run with the default
    warm-up warns with that rate and trains."""
    short = replace(settings("lora", steps=2), loop=LoopSettings(steps=2, batch_size=2, lr=None, progress=False))
    with pytest.warns(UserWarning, match="a warm-up of 30 steps in a run of 2"):
        report = distill(converted_llama(), shards, short, make_runtime("cpu"))
    assert report["steps_done"] == 2
    used = report["settings"]["loop"]["lr"]  # the rate it used, not None
    assert used > 0 and report["history"][1]["lr"] == pytest.approx(used / 30)


def test_continuing_keeps_the_adapters_the_model_has(shards):
    """A model with LoRA adapters trains those: no LoRA settings means theirs (recorded as such), any explicit other
    settings are refused; a model without adapters gets the defaults."""
    from rtpurbo.train.stage2_distill import LoraMismatch

    model = converted_llama()
    attach_lora(model, LoraSettings(r=2, alpha=4))
    for asked in (LoraSettings(r=8, alpha=4), LoraSettings()):  # the defaults, asked for explicitly, are other settings
        with pytest.raises(LoraMismatch, match="rank 2, alpha 4"):
            distill(model, shards, replace(settings("lora", steps=2), lora=asked), make_runtime("cpu"))
    report = distill(model, shards, replace(settings("lora", steps=2), lora=None), make_runtime("cpu"))
    assert report["settings"]["lora"]["r"] == 2 and model.rtpurbo_lora["r"] == 2
    fresh = distill(converted_llama(), shards, replace(settings("lora", steps=2), lora=None), make_runtime("cpu"))
    assert fresh["settings"]["lora"] == LoraSettings().to_dict()
