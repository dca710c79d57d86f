"""The main job: the base model dense vs converted, side by side (quality, KV memory, speed).

Converted is, by default, the shipped adapter ``smollm2-135m-rtpurbo`` (head plan + trained
indexers + LoRA, made on an H200 by ``benchmarks/reproduce/smollm2-135m_h200_2026-11-28_adaptation.sh``);
``--from-scratch`` instead runs profile -> convert -> save here (the training-free split). Rows:

* perplexity on long dev-pool windows, by position (retrieval heads prefill densely);
* teacher-forced answer accuracy on needle prompts (passkey / key-value / multi-hop): prompt
  prefilled into the head-wise cache, answer fed token by token, so the converted model's
  retrieval heads attend only to their indexer's top-p selection, as at generation;
* KV-cache bytes (bf16) at several contexts, and CPU prefill / decode time at ``--speed-length``
  tokens, both through the head-wise cache (dense = every KV head full, top-p 1: exactly the
  base model), the two models timed side by side (:func:`rtpurbo.eval.speed.measure_speed_paired`). The
  converted model is timed as it runs: below its ``seqlen_threshold`` (256K by default) its retrieval heads decode
  over every key (the needle answers above set it to 0, to show the selection).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from . import commands, io
from .cli_args import SettingsError
from .commands import say
from .config import HeadPlan, SparseConfig, dumps
from .convert import check_windows_before_profiling, convert
from .converted import kv_geometry
from .cache import HeadwiseCache
from .data.needles import KINDS, make_samples, seed_for
from .data.sources import long_documents
from .eval.perplexity import perplexity
from .eval.scoring import decode_step
from .eval.speed import measure_speed_paired
from .data.task_data import perplexity_windows
from .families import geometry
from .files import NotAnEarlierOutput, check_replaceable
from .models import ModelSource, fingerprint, load_base, resolve_model
from .prefill import prefill
from .memory import kv_table
from .pipeline import plan_summary, run_profile

DEV_TEXT_SOURCES = ("shakespeare",)
SHIPPED_ADAPTER = "smollm2-135m-rtpurbo"
PROBE_SEED_BLOCK = 500_000  # eval-namespace seeds far from the eval suite's and training's


def probe_samples(tokenizer: Any, per_kind: int, length: int) -> list:
    """``per_kind`` needle prompts of each kind, haystacks from the dev-pool text."""
    docs = [d.text for d in long_documents(list(DEV_TEXT_SOURCES), min_chars=8 * length, limit=8)]
    samples = []
    for k, kind in enumerate(KINDS):
        samples += make_samples(kind, tokenizer, docs, length, per_kind, seed_for("eval", PROBE_SEED_BLOCK + 100 * k))
    return samples


def progress(text: str, end: str = "\n") -> None:
    """A progress line on stderr (stdout stays clean for --json)."""
    print(text, end=end, file=sys.stderr, flush=True)


@torch.no_grad()
def answer_accuracy(model: nn.Module, samples: list, desc: str) -> dict[str, float]:
    """Teacher-forced answer-token accuracy and exact-answer rate, as deployed: the prompt is
    prefilled into a head-wise cache, then the answer is fed one token per decode step (so
    retrieval heads with top-p < 1 attend only to their indexer's selection)."""
    token_acc = []
    for i, sample in enumerate(samples):
        ids, start = sample.input_ids, sample.answer_start
        mask = torch.ones(1, len(ids), dtype=torch.long)
        cache = HeadwiseCache(model)
        prefill(model, cache, torch.tensor([ids[: start - 1]]), mask[:, : start - 1], start - 1)
        hits = []
        for position in range(start - 1, len(ids) - 1):
            logits = decode_step(model, cache, torch.tensor([ids[position]]), mask[:, : position + 1],
                                 torch.tensor([position]))
            hits.append(int(logits.argmax(-1)) == ids[position + 1])
        token_acc.append(sum(hits) / len(hits))
        progress(f"  {desc}: {i + 1}/{len(samples)}", end="\r")
    progress("")
    return {"token_accuracy": sum(token_acc) / len(samples),
            "exact": sum(a == 1.0 for a in token_acc) / len(samples), "samples": len(samples)}


def adapter_base(args: argparse.Namespace) -> ModelSource:
    """The dense row's base: ``--model`` (at ``--revision``), which must hold the very weights the ``--adapter`` was
    converted from (same fingerprint as :func:`rtpurbo.io.load` checks: a relative path, a moved copy or another
    revision of the same weights agree; other weights are refused). A Hub ``--model`` that names the adapter's
    repository without ``--revision`` is taken at the adapter's commit."""
    record = io.read_config(args.adapter)["base_model"]
    recorded = io.recorded_description(record)
    if args.revision is None and record.get("repo_id") and args.model == record["repo_id"]:
        source = resolve_model(record["repo_id"], record["commit"])
    else:
        source = resolve_model(args.model, args.revision)
    if fingerprint(source) != record["fingerprint"]:
        pin = f" --revision {record['commit']}" if record.get("repo_id") else ""
        asked = f"--model {args.model}" + (f" --revision {args.revision}" if args.revision else "")
        raise io.ArtifactError(f"the adapter {args.adapter} was converted from {recorded}, but {asked} is other "
                               f"weights ({source.describe()}): both rows must be the same base model. Pass --model "
                               f"{record['spec']}{pin}, or --from-scratch to profile and convert --model here")
    return source


def _converted(args: argparse.Namespace, out: Path, base: ModelSource | None, device: str, dtype: torch.dtype
               ) -> tuple[nn.Module, str]:
    """The converted row's model: the adapter on ``base``, or a fresh profile -> convert -> save."""
    if not args.from_scratch:
        model, _ = io.load(args.adapter, base=base, dtype=dtype, device=device, merge_adapters=True)
        return model, f"adapter {args.adapter}"
    model, tokenizer = commands.load_model(args)
    sparse = SparseConfig(window=args.window, sinks=args.sinks)
    check_windows_before_profiling(model, sparse, args.retrieval_ratio)
    commands.check_profile_length(args, model.config)
    settings = commands.profile_settings(args)
    progress(f"      profiling {geometry(model.config)[0]} layers on needle prompts "
        f"({settings.profile_samples} x 3 kinds x {settings.profile_length} tokens)")
    _, plan = run_profile(model, tokenizer, settings, out / "profile")
    convert(model, plan, sparse)
    io.save(model, out / "artifact")
    return model, f"training-free split, saved to {out / 'artifact'}"


SCRATCH_ONLY = ("window", "sinks", "retrieval_ratio", "profile_length", "profile_samples")  # --from-scratch's flags


def command(args: argparse.Namespace) -> dict[str, Any]:
    """``rtpurbo quickstart``: the flags and ``--out`` checked before any work, then :func:`run`."""
    _check_flags(args)
    commands.require_base(args)
    if args.out.exists() and not args.out.is_dir():
        raise NotAnEarlierOutput(f"--out {args.out} is a file; quickstart writes a directory: name a new one")
    if args.from_scratch:
        check_replaceable(args.out / "artifact", io.CONFIG_NAME)  # before profiling, not when saving
    device, dtype = commands.device_dtype(args)
    return run(args, device=device, dtype=dtype)


def _check_flags(args: argparse.Namespace) -> None:
    """Profiling / conversion flags without ``--from-scratch`` (the adapter brings its own plan and W), and
    ``--adapter`` with it, are refused rather than ignored. A flag counts as given where argparse recorded it
    (``args.given``)."""
    given = set(getattr(args, "given", ()))
    used = [name for name in SCRATCH_ONLY if name in given]
    if used and not args.from_scratch:
        flags = ", ".join("--" + name.replace("_", "-") for name in used)
        raise SettingsError(f"{flags} set(s) the split made by --from-scratch; the converted row is the adapter "
                            f"{args.adapter} with its own plan and W: add --from-scratch, or leave {flags} out")
    if args.from_scratch and "adapter" in given:
        raise SettingsError(f"--adapter {args.adapter} is not used with --from-scratch (the converted row is "
                            "profiled and converted here): leave one of them out")


def run(args: argparse.Namespace, device: str = "cpu", dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """Both rows on ``device`` in ``dtype``; ``--model`` gives the base model (from scratch: to convert here)."""
    out: Path = args.out
    started = time.time()

    base = None if args.from_scratch else adapter_base(args)  # before any model loads
    if args.from_scratch:
        say(args, "[1/5] base model and the training-free split (profile -> convert -> save)")
    else:
        say(args, f"[1/5] base model {base.describe()} and the adapter {args.adapter} (plan + indexers + LoRA)")
    converted, origin = _converted(args, out, base, device, dtype)
    # the needle answers show the indexer's selection at 4K: below the model's seqlen_threshold (256K tokens by
    # default, where selecting starts to pay on a GPU) retrieval heads would decode over every key
    threshold = converted.rtpurbo_sparse.seqlen_threshold
    converted.rtpurbo_sparse.seqlen_threshold = 0
    dense, tokenizer = commands.load_model(args) if base is None else load_base(base, dtype=dtype, device=device)
    layers, kv_heads, q_heads, head_dim = geometry(dense.config)
    convert(dense, HeadPlan.uniform(layers, kv_heads, q_heads, retrieval=True), SparseConfig(top_p=1.0))
    plan, sparse = converted.rtpurbo_plan, converted.rtpurbo_sparse
    models = {"dense": dense, "converted": converted}

    windows = perplexity_windows(tokenizer, args.eval_windows, args.eval_length, sources=DEV_TEXT_SOURCES)
    say(args, f"[2/5] perplexity on {len(windows)} x {args.eval_length} tokens of {', '.join(DEV_TEXT_SOURCES)}")
    ppl = {name: perplexity(m, windows, desc=f"perplexity ({name})") for name, m in models.items()}

    samples = probe_samples(tokenizer, args.probe_samples, args.probe_length)
    say(args, f"[3/5] needle answers, teacher-forced through the cache: {len(samples)} prompts x "
               f"{args.probe_length} tokens ({', '.join(KINDS)}); converted retrieval heads decode over their "
               f"top-p {sparse.top_p} selection")
    accuracy = {"dense": answer_accuracy(dense, samples, "dense")}
    accuracy["converted"] = answer_accuracy(converted, samples, "converted")

    converted.rtpurbo_sparse.seqlen_threshold = threshold  # speed as the model runs: its own threshold
    say(args, f"[4/5] CPU speed at {args.speed_length} tokens ({torch.get_num_threads()} threads), "
               "two prefills each (dense, converted, then converted, dense) and 16 decode steps each, taking turns; "
               f"the converted model as it runs (retrieval heads select from {threshold} cached tokens on)")
    speed = measure_speed_paired(models, args.speed_length, decode_steps=16, rounds=2)

    say(args, "[5/5] KV cache bytes (bf16)")
    kv = kv_geometry(converted)
    result = {
        "model": args.model if base is None else base.describe(),
        "converted": origin,
        "plan": plan_summary(plan),
        "sparse": sparse.to_dict(),  # its seqlen_threshold: the speed rows'; the needle answers ran with 0
        "perplexity": {name: {"overall": r.perplexity, "by_position": r.bucket_perplexity()} for name, r in ppl.items()},
        "needle_accuracy": accuracy,
        "speed_cpu": speed,
        "kv_cache_bf16": kv.report((args.eval_length, 131072, 1048576)),
        "wall_seconds": round(time.time() - started, 1),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "quickstart.json").write_text(dumps(result))
    _print_side_by_side(args, result)
    return result


def _line(label: str, dense: float, conv: float, change: str) -> str:
    return f"{label:30}{dense:>12.3f}{conv:>12.3f}{change:>11}"


def _print_side_by_side(args: argparse.Namespace, result: dict[str, Any]) -> None:
    ppl, acc, speed = result["perplexity"], result["needle_accuracy"], result["speed_cpu"]
    say(args, "")
    say(args, f"converted = {result['converted']}")
    say(args, f"{'':30}{'dense':>12}{'converted':>12}{'change':>11}")
    dense, conv = ppl["dense"]["overall"], ppl["converted"]["overall"]
    say(args, _line("perplexity (all tokens)", dense, conv, f"{100 * (conv / dense - 1):+.2f}%"))
    for bucket, value in ppl["dense"]["by_position"].items():
        c = ppl["converted"]["by_position"][bucket]
        say(args, _line("  positions " + bucket, value, c, f"{100 * (c / value - 1):+.2f}%"))
    for key, label in (("token_accuracy", "needle answer tokens, TF acc"), ("exact", "needle answers exact")):
        d, c = acc["dense"][key], acc["converted"][key]
        say(args, _line(label, d, c, f"{c - d:+.3f}"))
    for key, label, paired in (("prefill_ms", "CPU prefill ms", "prefill"),
                               ("decode_ms_per_token", "CPU decode ms/token", "decode")):
        d, c = speed["dense"][key], speed["converted"][key]
        ratio = speed["paired"][paired]
        say(args, _line(label, d, c, f"{ratio['median']:.2f}x") + f"  ({ratio['interval']} {ratio['lo']:.2f}-"
                  f"{ratio['hi']:.2f}, {ratio['pairs']} pairs)")
    row = result["kv_cache_bf16"][0]
    say(args, f"{'KV bytes/token @' + str(row['context']):30}{row['dense_bytes_per_token']:>12.0f}"
              f"{row['sparse_bytes_per_token']:>12.0f}{row['ratio']:>10.2f}x")
    say(args, "")
    say(args, "KV cache (bf16) by context:")
    say(args, kv_table(result["kv_cache_bf16"]))
    say(args, f"retrieval KV heads by layer: {json.dumps(result['plan']['by_layer'])}")
    say(args, f"wall time {result['wall_seconds']:.0f} s; results in {args.out / 'quickstart.json'}")
