"""Head profiling: the score accumulator on planted attention, and profile_heads on a tiny model."""
from types import SimpleNamespace

import torch

from rtpurbo.config import HeadPlan
from rtpurbo.convert import is_converted
from rtpurbo.profile.plot import plot_plan
from rtpurbo.profile.run import plan_from_scores, probe_rows, profile_heads
from rtpurbo.profile.scores import HeadScoreAccumulator, kv_head_scores
from rtpurbo.testing import tiny_model

from .conftest import random_ids


def fake_sample(length=60, seed=0):
    ids = random_ids(1, length, seed=seed)[0].tolist()
    answer = ids[10:13]
    ids[-3:] = answer  # the answer repeats the needle tokens at 10..12
    return SimpleNamespace(input_ids=ids, answer_start=length - 3, needle_spans=[(10, 13)])


def test_accumulator_finds_the_planted_copy_head():
    """Query head 1 puts its attention on the needle token it must copy; head 0 looks locally."""
    sample = fake_sample()
    rows = probe_rows(sample, window=8, sinks=2, mass_rows=10, generator=torch.Generator().manual_seed(0))
    length, dim = len(sample.input_ids), 5
    k = torch.zeros(1, 1, length, dim)
    k[0, 0, :, 0] = torch.arange(length).float()  # key j carries j in dim 0
    q = torch.zeros(1, 2, length, dim)
    for i in range(length):
        q[0, 0, i, 0] = 50.0  # head 0: strongest key is the most recent one
    for n, (row, target_pos) in enumerate(zip(rows.answer_rows.tolist(), range(10, 13))):
        q[0, 1, row] = 0.0
        q[0, 1, row, 1 + n] = 1.0
        k[0, 0, target_pos, 1 + n] = 100.0  # head 1 at answer row n: the needle token it copies
    acc = HeadScoreAccumulator(num_layers=1, num_q_heads=2, window=8, sinks=2)
    acc.rows = rows
    acc.observe(SimpleNamespace(layer_idx=0, scaling=1.0), q, k, torch.arange(length)[None])
    acc.end_prompt()
    scores = acc.query_head_scores()
    assert scores["copy"][0].tolist() == [0.0, 1.0]
    assert scores["needle_mass"][0, 1] > 0.99 and scores["needle_mass"][0, 0] < 0.01
    assert scores["long_range_mass"][0, 0] < 0.01  # recent-only head loses nothing to a window
    assert kv_head_scores(scores["copy"], group=2).tolist() == [[1.0]]


def test_profile_heads_on_tiny_model_leaves_it_unchanged(tmp_path):
    model = tiny_model("llama", num_layers=3)
    ids = random_ids(1, 30)
    with torch.no_grad():
        before = model(ids).logits
    scores = profile_heads(model, [fake_sample(seed=s) for s in range(3)], window=8, sinks=2, progress=False)
    assert not is_converted(model)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)
    for value in scores.kv.values():
        assert value.shape == (3, 2) and (value >= 0).all() and (value <= 1 + 1e-6).all()
    assert scores.kv["long_range_mass"].sum() > 0
    plan = plan_from_scores(scores, ratio=0.5)
    assert plan.num_retrieval() == 3 and plan.scores is not None
    png = plot_plan(plan, tmp_path / "plan.png")
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"


def test_plan_plot_without_scores(tmp_path):
    plan = HeadPlan(4, 2, 4, [[0], [], [1], [0, 1]])
    assert plot_plan(plan, tmp_path / "p.png").is_file()
