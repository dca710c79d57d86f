"""The main job: profile -> convert -> save, then dense vs converted side by side.

Dense and converted are the same model object: an all-retrieval plan computes exactly
the base model, so one load serves both rows.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable

import torch

from . import io
from .config import HeadPlan, SparseConfig, dumps
from .convert import apply_plan, convert
from .data.sources import long_documents
from .eval.perplexity import perplexity
from .families import geometry
from .memory import KVGeometry, kv_table
from .pipeline import plan_summary, run_profile

DEV_TEXT_SOURCES = ("shakespeare",)


def dev_windows(tokenizer: Any, n_windows: int, length: int) -> list[list[int]]:
    """``n_windows`` windows of ``length`` tokens, each from a different long dev-pool document."""
    windows = []
    for doc in long_documents(list(DEV_TEXT_SOURCES), min_chars=5 * length, limit=4 * n_windows):
        ids = tokenizer(doc.text, add_special_tokens=False)["input_ids"]
        if len(ids) >= length:
            start = (len(ids) - length) // 2  # skip title pages and dramatis personae
            windows.append(ids[start : start + length])
        if len(windows) == n_windows:
            return windows
    raise RuntimeError(f"found only {len(windows)} dev documents of {length} tokens in {DEV_TEXT_SOURCES}")


def run(args: argparse.Namespace, load: Callable, settings_from: Callable, say: Callable) -> dict[str, Any]:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load(args)
    settings = settings_from(args)
    say(args, f"[1/4] profiling {geometry(model.config)[0]} layers on needle prompts "
              f"({settings.profile_samples} x 3 kinds x {settings.profile_length} tokens)")
    _, plan = run_profile(model, tokenizer, settings, out / "profile")
    sparse = SparseConfig(window=args.window, sinks=args.sinks)
    say(args, f"[2/4] converting: W={sparse.window} S={sparse.sinks}, {plan.num_retrieval()} retrieval KV heads")
    dense_plan = HeadPlan.uniform(plan.num_layers, plan.num_kv_heads, plan.num_q_heads, retrieval=True)
    convert(model, plan, sparse)
    io.save(model, out / "artifact")
    say(args, f"[3/4] saved artifact to {out / 'artifact'}")

    windows = dev_windows(tokenizer, args.eval_windows, args.eval_length)
    say(args, f"[4/4] perplexity on {len(windows)} x {args.eval_length} tokens of {', '.join(DEV_TEXT_SOURCES)}")
    rows = {}
    for name, row_plan in (("dense", dense_plan), ("converted", plan)):
        apply_plan(model, row_plan)
        rows[name] = perplexity(model, windows, desc=f"perplexity ({name})")
    apply_plan(model, plan)
    layers, kv_heads, _, head_dim = geometry(model.config)
    kv = KVGeometry(layers, kv_heads, head_dim, plan.num_retrieval(), sparse.window, sparse.sinks, sparse.index_dim)
    result = {
        "model": args.model,
        "plan": plan_summary(plan),
        "sparse": sparse.to_dict(),
        "perplexity": {name: {"overall": r.perplexity, "by_position": r.bucket_perplexity()} for name, r in rows.items()},
        "kv_cache_bf16": kv.report((args.eval_length, 131072, 1048576)),
        "artifact": str(out / "artifact"),
    }
    (out / "quickstart.json").write_text(dumps(result))
    _print_side_by_side(args, say, result)
    return result


def _print_side_by_side(args: argparse.Namespace, say: Callable, result: dict[str, Any]) -> None:
    ppl = result["perplexity"]
    dense, conv = ppl["dense"]["overall"], ppl["converted"]["overall"]
    say(args, "")
    say(args, f"{'':24}{'dense':>12}{'converted':>12}{'change':>10}")
    say(args, f"{'perplexity (all tokens)':24}{dense:>12.3f}{conv:>12.3f}{100 * (conv / dense - 1):>+9.2f}%")
    for bucket, value in ppl["dense"]["by_position"].items():
        c = ppl["converted"]["by_position"][bucket]
        say(args, f"{'  positions ' + bucket:24}{value:>12.3f}{c:>12.3f}{100 * (c / value - 1):>+9.2f}%")
    row = result["kv_cache_bf16"][0]
    say(args, f"{'KV bytes/token @' + str(row['context']):24}{row['dense_bytes_per_token']:>12.0f}"
              f"{row['sparse_bytes_per_token']:>12.0f}{row['ratio']:>9.2f}x")
    say(args, "")
    say(args, "KV cache (bf16) by context:")
    say(args, kv_table(result["kv_cache_bf16"]))
    say(args, f"retrieval KV heads by layer: {json.dumps(result['plan']['by_layer'])}")
