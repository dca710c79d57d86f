"""Training-free fidelity of head splits: teacher-forced retrieval accuracy and perplexity.

Rows (one loaded model, plans switched in place):
  dense          every head full attention (== the base model)
  all-window     every head window W + S sinks (StreamingLLM-style)
  split-copy     top ratio of KV heads by the copy-score profile (rtpurbo's choice)
  split-mass     top ratio of KV heads by long-range attention mass (the naive criterion)

Texts come from a bundle made on a machine with the corpora installed, so the GPU machine
(no package index) can run it:

    python benchmarks/fidelity.py export --out texts.json.gz           # here
    python benchmarks/fidelity.py run --texts texts.json.gz --gguf model.gguf --out results/   # GPU

Last stdout line: one JSON object.
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import time
from pathlib import Path

import torch

from rtpurbo.config import HeadPlan, SparseConfig
from rtpurbo.convert import apply_plan, convert
from rtpurbo.data.needles import KINDS, make_samples, seed_for
from rtpurbo.eval.perplexity import perplexity
from rtpurbo.families import geometry
from rtpurbo.models import load_base
from rtpurbo.pipeline import PROFILE_SOURCES
from rtpurbo.profile.run import profile_heads

EVAL_SOURCES = ("shakespeare", "python-docs")


def export(out: Path) -> None:
    from rtpurbo.data.sources import long_documents

    bundle = {
        "profile": [d.text for d in long_documents(list(PROFILE_SOURCES), min_chars=20_000, limit=16)],
        "eval": [d.text for d in long_documents(list(EVAL_SOURCES), min_chars=60_000, limit=40)],
        "provenance": {"profile": list(PROFILE_SOURCES), "eval": list(EVAL_SOURCES)},
    }
    with gzip.open(out, "wt") as handle:
        json.dump(bundle, handle)
    print(f"wrote {out}: {len(bundle['profile'])} profile docs, {len(bundle['eval'])} eval docs")


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson interval of a proportion ``p`` over ``n`` trials."""
    if n == 0:
        return (0.0, 1.0)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


@torch.no_grad()
def answer_accuracy(model, samples) -> dict[str, float]:
    """Mean teacher-forced answer-token accuracy and exact-answer rate over samples."""
    device = next(model.parameters()).device
    token_acc, exact = [], []
    for s in samples:
        keep = len(s.input_ids) - s.answer_start + 1  # logits at answer_start-1 .. end-1
        logits = model(torch.tensor([s.input_ids], device=device), use_cache=False, logits_to_keep=keep).logits[0]
        predicted = logits[:-1].argmax(-1).cpu()
        acc = float((predicted == torch.tensor(s.input_ids[s.answer_start:])).float().mean())
        token_acc.append(acc)
        exact.append(float(acc == 1.0))
    n = len(samples)
    mean_exact = sum(exact) / n
    return {"token_accuracy": sum(token_acc) / n, "exact": mean_exact, "exact_ci95": wilson(mean_exact, n), "n": n}


def top_plan(scores: torch.Tensor, n_q: int, ratio: float, criterion: str) -> HeadPlan:
    return HeadPlan.from_scores(scores.tolist(), n_q, ratio, criterion=criterion)


def run(args: argparse.Namespace) -> dict:
    with gzip.open(args.texts, "rt") as handle:
        texts = json.load(handle)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" and args.bf16 else torch.float32
    model, tok = load_base(args.gguf or "smollm2-135m", dtype=dtype, device=device)
    layers, n_kv, n_q, _ = geometry(model.config)
    started = time.time()
    profile = []
    for i, kind in enumerate(KINDS):
        profile += make_samples(kind, tok, texts["profile"], args.profile_length, args.profile_samples,
                                seed_for("profile", 100 * i))
    scores = profile_heads(model, profile, window=args.window, sinks=4)
    profile_seconds = time.time() - started
    plans = {
        "dense": HeadPlan.uniform(layers, n_kv, n_q, True),
        "all-window": HeadPlan.uniform(layers, n_kv, n_q, False),
        "split-copy": top_plan(scores.ranking, n_q, args.ratio, "copy score"),
        "split-mass": top_plan(scores.kv["long_range_mass"], n_q, args.ratio, "long-range mass"),
    }
    plans = {name: plans[name] for name in args.rows}
    convert(model, plans["dense"], SparseConfig(window=args.window, sinks=4, impl=args.impl))
    results: dict = {"rows": {name: {"retrieval": {}} for name in plans},
                     "plans": {k: v.retrieval for k, v in plans.items()},
                     "profile": {"seconds": profile_seconds, "prompts": len(profile), "length": args.profile_length,
                                 "kv_scores": {k: v.tolist() for k, v in scores.kv.items()}},
                     "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                     "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                     "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__}}
    save = lambda: (args.out / "fidelity.json").write_text(json.dumps(results, indent=1))  # noqa: E731
    save()
    deadline = started + args.deadline
    windows = eval_windows(tok, texts["eval"], args.ppl_windows, max(args.lengths))
    for length in sorted(args.lengths, reverse=True):  # longest (the target) first
        samples = [s for i, kind in enumerate(KINDS) for s in make_samples(
            kind, tok, texts["eval"], length, args.samples // len(KINDS), seed_for("eval", 10_000 * i + length))]
        for name, plan in plans.items():
            if time.time() > deadline:
                results["stopped_early"] = f"deadline {args.deadline}s reached before {name} @ {length}"
                save()
                return results
            apply_plan(model, plan)
            results["rows"][name]["retrieval"][length] = answer_accuracy(model, samples)
            results["wall_seconds"] = time.time() - started
            save()
            print(name, length, round(results["rows"][name]["retrieval"][length]["token_accuracy"], 3),
                  f"{time.time() - started:.0f}s", flush=True)
    for name, plan in plans.items():
        if time.time() > deadline:
            results["stopped_early"] = f"deadline reached before perplexity of {name}"
            break
        apply_plan(model, plan)
        ppl = perplexity(model, windows, desc=f"ppl {name}", progress=False)
        results["rows"][name].update(perplexity=ppl.perplexity, ppl_buckets=ppl.bucket_perplexity())
        results["wall_seconds"] = time.time() - started
        save()
        print(name, "ppl", round(ppl.perplexity, 3), flush=True)
    return results


def eval_windows(tok, docs: list[str], n: int, length: int) -> list[list[int]]:
    windows = []
    for doc in docs:
        ids = tok(doc, add_special_tokens=False)["input_ids"]
        if len(ids) >= length:
            start = (len(ids) - length) // 2
            windows.append(ids[start : start + length])
        if len(windows) == n:
            break
    return windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("export")
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("run")
    p.add_argument("--texts", type=Path, required=True)
    p.add_argument("--gguf", help="path to the SmolLM2 GGUF (default: the embedded package)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--window", type=int, default=1024)
    p.add_argument("--ratio", type=float, default=0.15)
    p.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192])
    p.add_argument("--samples", type=int, default=102, help="per length, split over the 3 kinds")
    p.add_argument("--profile-length", type=int, default=2048)
    p.add_argument("--profile-samples", type=int, default=6, help="per kind")
    p.add_argument("--ppl-windows", type=int, default=16)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--impl", default="sdpa", help="attention backend for the sparse rows")
    p.add_argument("--deadline", type=float, default=1e9, help="stop (keeping results so far) after this many s")
    p.add_argument("--rows", nargs="+", default=["dense", "split-copy", "all-window", "split-mass"])
    args = parser.parse_args()
    if args.cmd == "export":
        export(args.out)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    results = run(args)
    print(json.dumps({k: v for k, v in results.items() if k in ("rows", "device", "wall_seconds")}))


if __name__ == "__main__":
    main()
