"""Do the sparse prefill's block scores keep the blocks that hold the answer? Needle recall per scoring.

For needle samples of an eval data file (``rtpurbo eval --prepare-only``), one forward of each prompt through
an artifact with dense retrieval prefill (the sparse prefill at top-p 1, which is exactly dense). At every
retrieval layer the indexer vectors of that forward go through :func:`rtpurbo.ops.reference.select_blocks`
once per scoring (:mod:`rtpurbo.ops.block_scores`) with the artifact's budget at ``--top-p``, and this counts,
for the question's query block (the one holding the last prompt token):

* recall: the share of the answer's key blocks (blocks holding a token of ``TaskSample.spans``) that are
  kept, over retrieval KV heads and samples; candidates only (the sink block and the local band are always
  kept and are left out of both counts);
* kept: the share of candidate blocks kept (what the prefill reads beyond sinks and band).

Both scorings see the same indexer vectors, so their difference is the scoring rule's alone.

    python benchmarks/sparse_prefill_needle_recall.py --data runs/eval/eval_data.npz --lengths 8192 \\
        --samples 10 --out runs/needle_recall.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from rtpurbo import io
from rtpurbo.data.task_data import load_task_data
from rtpurbo.ops import api, reference
from rtpurbo.ops.block_scores import SCORINGS, block_roles

BLOCK = api.BLOCK_SIZE


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-rtpurbo", help="artifact directory or shipped adapter")
    p.add_argument("--data", required=True, type=Path, help="eval data (rtpurbo eval --prepare-only)")
    p.add_argument("--lengths", type=int, nargs="+", default=[8192])
    p.add_argument("--tasks", nargs="+", help="default: every task whose samples have answer spans")
    p.add_argument("--samples", type=int, default=10, help="first N samples of each task and length")
    p.add_argument("--top-p", type=float, default=0.9, help="prefill top-p over block scores")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = io.load(io.artifact_path(args.model) or args.model)
    sparse = model.rtpurbo_sparse
    sparse.retrieval_prefill, sparse.prefill_top_p = "sparse", 1.0  # exactly the dense prefill
    budget = dict(top_p=args.top_p, min_blocks=sparse.prefill_min_blocks, max_blocks=sparse.prefill_max_blocks,
                  sinks=sparse.sinks, band=sparse.prefill_band)
    data = load_task_data(args.data, tokenizer)
    samples = [s for s in data.samples
               if s.spans and s.length in args.lengths and (not args.tasks or s.task in args.tasks)]
    per_task: dict[str, list[int]] = {}
    chosen = []
    for s in samples:
        if per_task.setdefault(s.task, []) and len(per_task[s.task]) >= args.samples:
            continue
        per_task[s.task].append(s.seed)
        chosen.append(s)
    if not chosen:
        raise SystemExit(f"no needle samples of {args.tasks or 'any task'} at {args.lengths} in {args.data}")

    counts = {name: {"hit": 0, "needle": 0, "kept": 0, "candidates": 0} for name in SCORINGS}
    by_task: dict[str, dict[str, dict[str, int]]] = {}
    state: dict = {}
    original = api.sparse_prefill

    def recording(q, k, v, q_pos, k_pos, q_idx, k_idx, **kw):
        question_block = state["last"] // BLOCK
        needle_blocks = sorted({t // BLOCK for a, b in state["spans"] for t in range(a, b)})
        seen, always = block_roles(q_pos, k_pos, BLOCK, budget["sinks"], budget["band"])
        candidates = (seen & ~always)[:, :, question_block].expand(-1, q_idx.shape[1], -1)  # (B, H, nk)
        needle = torch.zeros_like(candidates)
        needle[..., needle_blocks] = True
        needle &= candidates
        for name in SCORINGS:
            kept = reference.select_blocks(q_idx, k_idx, q_pos, k_pos, block=BLOCK, scoring=name,
                                           **budget)[:, :, question_block] & candidates
            for target in (counts[name], by_task[state["task"]][name]):
                target["hit"] += int((kept & needle).sum())
                target["needle"] += int(needle.sum())
                target["kept"] += int(kept.sum())
                target["candidates"] += int(candidates.sum())
        return original(q, k, v, q_pos, k_pos, q_idx, k_idx, **kw)

    api.sparse_prefill = recording
    started = time.time()
    try:
        for i, s in enumerate(chosen):
            state.update(last=len(s.prompt_ids) - 1, spans=s.spans, task=s.task)
            by_task.setdefault(s.task, {name: dict.fromkeys(("hit", "needle", "kept", "candidates"), 0)
                                        for name in SCORINGS})
            with torch.no_grad():
                model(torch.tensor([s.prompt_ids]), use_cache=False)
            print(f"[{time.time() - started:.0f} s] {i + 1}/{len(chosen)} {s.task}@{s.length}", file=sys.stderr,
                  flush=True)
    finally:
        api.sparse_prefill = original

    def shares(c: dict[str, int]) -> dict[str, float | None]:
        return {"needle_recall": c["hit"] / c["needle"] if c["needle"] else None,
                "kept_fraction": c["kept"] / c["candidates"] if c["candidates"] else None, **c}

    result = {"model": str(args.model), "data": str(args.data), "lengths": args.lengths, "top_p": args.top_p,
              "budget": budget, "samples": {t: len(v) for t, v in per_task.items()},
              "all": {name: shares(c) for name, c in counts.items()},
              "tasks": {t: {name: shares(c) for name, c in d.items()} for t, d in by_task.items()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result["all"], indent=1))
    return result


if __name__ == "__main__":
    main()
