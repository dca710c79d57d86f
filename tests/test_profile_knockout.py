"""Knockout scores on a tiny model: exact per-head KL against a model with that head windowed,
the model left as it came, the ranking and the profile stage around it."""
import json

import pytest
import torch
import torch.nn.functional as F

from rtpurbo.config import HeadPlan, SparseConfig
from rtpurbo.convert import convert, is_converted
from rtpurbo.data.task_data import TaskData, save_task_data, tokenizer_probe
from rtpurbo.data.tasks import TaskSample
from rtpurbo.families import geometry
from rtpurbo.pipeline import ProfileSettings, run_profile
from rtpurbo.profile.knockout import KnockoutInputs, inputs_from_task_data, knockout_scores
from rtpurbo.testing import tiny_model, tiny_tokenizer

from .conftest import random_ids

W, S = 8, 2


def inputs():
    texts = [random_ids(1, 40, seed=s)[0].tolist() for s in (1, 2)] + [random_ids(1, 32, seed=3)[0].tolist()]
    prompts = [(random_ids(1, 30, seed=4)[0].tolist(), [7, 8, 9]), (random_ids(1, 8, seed=5)[0].tolist(), [3])]
    return KnockoutInputs(texts, prompts)


def kl_with_one_head_local(layer, head, ids, positions):
    """Mean KL(dense || knocked) at ``positions``, from two separately built models."""
    dense, knocked = tiny_model("llama", num_layers=3), tiny_model("llama", num_layers=3)
    layers, kv, q, _ = geometry(knocked.config)
    retrieval = [list(range(kv)) for _ in range(layers)]
    retrieval[layer].remove(head)
    convert(knocked, HeadPlan(layers, kv, q, retrieval), SparseConfig(window=W, sinks=S))
    with torch.no_grad():
        p = F.log_softmax(dense(torch.tensor([ids])).logits[0, positions].float(), -1)
        r = F.log_softmax(knocked(torch.tensor([ids]), use_cache=False).logits[0, positions].float(), -1)
    return float((p.exp() * (p - r)).sum(-1).mean())


def test_knockout_is_the_kl_of_windowing_that_head_alone():
    model = tiny_model("llama", num_layers=3)
    ids = random_ids(1, 40)
    with torch.no_grad():
        before = model(ids).logits
    data = inputs()
    scores = knockout_scores(model, data, window=W, sinks=S, progress=False)
    assert not is_converted(model)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)
    for name in ("knockout", "text_kl", "answer_kl", "answer_nll"):
        assert scores[name].shape == (3, 2)
    assert (scores["text_kl"] >= 0).all() and scores["text_kl"].sum() > 0
    assert float(scores["knockout"].sum()) == pytest.approx(1.0)
    for layer, head in ((0, 1), (2, 0)):
        text = sum(kl_with_one_head_local(layer, head, t, list(range(W + S, len(t)))) for t in data.texts) / 3
        assert float(scores["text_kl"][layer, head]) == pytest.approx(text, rel=1e-4, abs=1e-7)
        prompt, answer = data.prompts[0]
        first = kl_with_one_head_local(layer, head, prompt + answer, list(range(29, 32)))
        short = kl_with_one_head_local(layer, head, data.prompts[1][0] + [3], [7])
        assert short == pytest.approx(0.0, abs=1e-6)  # position 7 < W + S: the window loses nothing yet
        assert float(scores["answer_kl"][layer, head]) == pytest.approx((first + short) / 2, rel=1e-4, abs=1e-7)


def test_knockout_restores_a_converted_model_and_checks_its_inputs():
    model = tiny_model("llama", num_layers=3)
    layers, kv, q, _ = geometry(model.config)
    plan = HeadPlan(layers, kv, q, [[0], [], [1]])
    convert(model, plan, SparseConfig(window=16, sinks=4))
    knockout_scores(model, inputs(), window=W, sinks=S, text_weight=1.0, progress=False)
    assert model.rtpurbo_plan == plan and (model.rtpurbo_sparse.window, model.rtpurbo_sparse.sinks) == (16, 4)
    with pytest.raises(ValueError, match="no longer than W"):
        knockout_scores(model, KnockoutInputs([[1] * 10], []), window=W, sinks=S, text_weight=1.0, progress=False)
    with pytest.raises(ValueError, match="needs texts"):
        knockout_scores(model, KnockoutInputs([], inputs().prompts), window=W, sinks=S, progress=False)


def task_data(split="tune"):
    data = inputs()
    samples = [TaskSample(task, 40, 7 + i, 0.5, prompt, answer, "w1", ["w1"], "text")
               for i, (task, (prompt, answer)) in enumerate(zip(("niah_number", "niah_number"), data.prompts))]
    return TaskData(samples, data.texts[:2], {"probe": tokenizer_probe(tiny_tokenizer()), "split": split})


def test_inputs_from_task_data_take_windows_and_the_first_samples():
    taken = inputs_from_task_data(task_data(), samples_per_unit=1, windows=1)
    assert taken.texts == inputs().texts[:1] and taken.prompts == inputs().prompts[:1]


def test_profile_stage_with_the_knockout_criterion(tmp_path):
    model = tiny_model("llama", num_layers=3)
    save_task_data(task_data(), tmp_path / "tune.npz")
    settings = ProfileSettings(window=W, sinks=S, retrieval_ratio=0.34, criterion="knockout",
                               knockout_data=tmp_path / "tune.npz")
    scores, plan = run_profile(model, tiny_tokenizer(), settings, tmp_path / "profile", progress=False)
    stored = json.loads((tmp_path / "profile" / "head_scores.json").read_text())
    assert stored["criterion"] == "knockout" and stored["ranking"] == scores.kv["knockout"].tolist()
    assert plan.num_retrieval() == 2 and plan.criterion.startswith("knockout")
    best = max(((layer, h) for layer in range(3) for h in range(2)), key=lambda lh: stored["ranking"][lh[0]][lh[1]])
    assert best[1] in plan.retrieval[best[0]]
    save_task_data(task_data(split="eval"), tmp_path / "eval.npz")
    with pytest.raises(ValueError, match="must not see evaluation items"):
        run_profile(model, tiny_tokenizer(), ProfileSettings(window=W, sinks=S, criterion="knockout",
                                                             knockout_data=tmp_path / "eval.npz"), progress=False)
