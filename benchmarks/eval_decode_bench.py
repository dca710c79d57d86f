"""Eval throughput: ``score_batch`` with eager decode steps vs steps replayed from a CUDA graph.

    python benchmarks/eval_decode_bench.py --lengths 4096 8192 --batch-size 16 --json OUT.json

The model is SmolLM2-135M's geometry (30 layers, 9 query / 3 KV heads, head dim 64) with random
weights, converted with a random 15 % plan (14 of 90 KV heads retrieval), W 1024, S 4, top-p 0.9
at every length (``seqlen_threshold = 0``, as in ``rtpurbo eval``); ``--model`` takes real
weights instead. Samples are random tokens with 10-token answers: a random model never stops
early, so every batch runs all ``max_new_tokens`` steps (the slowest case of a real eval).

Per length and mode: seconds per batch (median over ``--batches`` after one warm-up batch; CUDA
events, :func:`rtpurbo.bench.steps.timed`), the prefill alone timed the same way, and samples
per second. The two modes are compared sample by sample (greedy answers equal, teacher-forced log-probability difference).
"""
from __future__ import annotations

import argparse
import json
import statistics

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rtpurbo.bench.steps import timed
from rtpurbo.cache import HeadwiseCache
from rtpurbo.config import HeadPlan, SparseConfig
from rtpurbo.convert import convert
from rtpurbo.data.tasks import TaskSample
from rtpurbo.eval.scoring import DECODE_MODES, score_batch
from rtpurbo.families import geometry
from rtpurbo.prefill import prefill
from rtpurbo.models import load_base, stop_token_ids
from rtpurbo.testing import tiny_tokenizer

SMOLLM2 = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
               num_key_value_heads=3, head_dim=64, vocab_size=49152, max_position_embeddings=8192,
               rope_theta=100000.0, tie_word_embeddings=True)
ANSWER = 10


def build(model_spec: str | None, device: torch.device, seed: int) -> tuple[torch.nn.Module, object]:
    """(converted model, tokenizer): real weights from ``model_spec`` or random SmolLM2 geometry."""
    torch.manual_seed(seed)
    if model_spec:
        model, tokenizer = load_base(model_spec, device=device, dtype=torch.bfloat16)
    else:
        model = LlamaForCausalLM(LlamaConfig(**SMOLLM2)).to(device, torch.bfloat16)
        tokenizer = tiny_tokenizer(model.config.vocab_size)
    layers, kv, q, _ = geometry(model.config)
    g = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(layers * kv, generator=g)[: round(0.15 * layers * kv)].tolist()
    plan = HeadPlan(layers, kv, q, [sorted(h % kv for h in chosen if h // kv == i) for i in range(layers)])
    convert(model, plan, SparseConfig(window=1024, sinks=4, top_p=0.9, seqlen_threshold=0))
    return model.eval(), tokenizer


def samples(n: int, length: int, vocab: int, seed: int) -> list[TaskSample]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        prompt = torch.randint(10, vocab, (length - ANSWER - 8,), generator=g).tolist()
        answer = torch.randint(10, vocab, (ANSWER,), generator=g).tolist()
        out.append(TaskSample("random", length, i, None, prompt, answer, "", [""], "text"))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="real weights (model spec or GGUF path); default random SmolLM2 geometry")
    p.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--batches", type=int, default=3, help="timed batches per length and mode")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args()
    device = torch.device(args.device)
    model, tokenizer = build(args.model, device, seed=0)
    stops = stop_token_ids(model, tokenizer)
    rows = []
    for length in args.lengths:
        batches = [samples(args.batch_size, length, model.config.vocab_size, seed=length + b)
                   for b in range(args.batches + 1)]
        scores: dict[str, list] = {}
        for mode in DECODE_MODES:
            times, prefill_times, mode_scores = [], [], []
            for b, batch in enumerate(batches):
                (batch_scores, _), ms = timed(lambda: score_batch(model, tokenizer, batch, stops, decode=mode),
                                              device)
                ids = torch.tensor([s.prompt_ids[:-1] for s in batch], device=device)
                _, prefill_ms = timed(lambda: prefill(model, HeadwiseCache(model), ids, torch.ones_like(ids),
                                                      ids.shape[1]), device)
                seconds, pre = ms / 1000, prefill_ms / 1000
                if b:  # the first batch warms up (compiles, autotunes)
                    times.append(seconds)
                    prefill_times.append(pre)
                mode_scores += batch_scores
            scores[mode] = mode_scores
            per_batch, pre = statistics.median(times), statistics.median(prefill_times)
            rows.append({"length": length, "mode": mode, "batch": args.batch_size, "s_per_batch": per_batch,
                         "prefill_s": pre, "decode_s": per_batch - pre, "samples_per_s": args.batch_size / per_batch,
                         "steps": batches[0][0].max_new_tokens})
            print(json.dumps(rows[-1]), flush=True)
        same = sum(a.prediction == b.prediction for a, b in zip(scores["eager"], scores["graph"]))
        diff = max(abs(a.tf_logprob - b.tf_logprob) for a, b in zip(scores["eager"], scores["graph"]))
        rows.append({"length": length, "compare": "graph vs eager", "same_prediction": same,
                     "samples": len(scores["eager"]), "max_tf_logprob_diff": diff})
        print(json.dumps(rows[-1]), flush=True)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"\n{name}, batch {args.batch_size}, SmolLM2 geometry ({'random weights' if not args.model else args.model})")
    print("| length | mode | s / batch | prefill s | decode s | samples/s |\n|---|---|---:|---:|---:|---:|")
    for r in rows:
        if "mode" in r:
            print(f"| {r['length']} | {r['mode']} | {r['s_per_batch']:.3f} | {r['prefill_s']:.3f} | "
                  f"{r['decode_s']:.3f} | {r['samples_per_s']:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
