"""Implementations of the CLI subcommands. Each takes the parsed args and returns a JSON-able dict."""
from __future__ import annotations

import argparse
import sys
from typing import Any

import torch

from . import io
from .cli_args import sparse_from_args
from .families import geometry
from .memory import KVGeometry, kv_table
from .models import load_base
from .convert import convert as convert_model
from .pipeline import ProfileSettings, plan_summary, read_plan, run_profile


def say(args: argparse.Namespace, *parts: Any) -> None:
    """Human output goes to stderr when --json owns stdout."""
    print(*parts, file=sys.stderr if args.json else sys.stdout, flush=True)


def device_dtype(args: argparse.Namespace) -> tuple[str, torch.dtype]:
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if args.dtype == "auto":
        return device, torch.float32 if device == "cpu" else torch.bfloat16
    return device, getattr(torch, args.dtype)


def _is_artifact(spec: str) -> bool:
    return io.artifact_path(spec) is not None


def _load(args: argparse.Namespace, merge_adapters: bool = False):
    device, dtype = device_dtype(args)
    if _is_artifact(args.model):
        return io.load(args.model, dtype=dtype, device=device, merge_adapters=merge_adapters)
    return load_base(args.model, dtype=dtype, device=device)


def _settings(args: argparse.Namespace) -> ProfileSettings:
    knockout = {name: getattr(args, name) for name in ("criterion", "knockout_data", "knockout_samples",
                                                       "knockout_windows", "knockout_length", "text_weight")
                if hasattr(args, name)}  # rtpurbo profile's flags
    return ProfileSettings(
        window=args.window, sinks=args.sinks, retrieval_ratio=args.retrieval_ratio,
        profile_length=args.profile_length, profile_samples=args.profile_samples, **knockout,
    )


def profile(args: argparse.Namespace) -> dict[str, Any]:
    model, tokenizer = _load(args)
    _, plan = run_profile(model, tokenizer, _settings(args), args.out)
    summary = plan_summary(plan)
    say(args, f"retrieval KV heads: {summary['retrieval_kv_heads']}/{summary['total_kv_heads']} "
               f"by layer {summary['by_layer']}")
    say(args, f"wrote {args.out}/head_plan.json, head_scores.json, head_plan.png")
    return {"out": str(args.out), "plan": summary}


def convert(args: argparse.Namespace) -> dict[str, Any]:
    model, tokenizer = _load(args)
    overrides: dict[str, int] = {}
    if args.plan is not None:
        plan, overrides = read_plan(args.plan, model.config)
    else:
        _, plan = run_profile(model, tokenizer, _settings(args), args.out.with_name(args.out.name + "-profile"))
    sparse = sparse_from_args(args, **overrides)
    convert_model(model, plan, sparse)
    training = None
    if args.train:
        from .train.commands import train_converted

        training = train_converted(args, model, tokenizer)
    io.save(model, args.out)
    say(args, f"saved {args.out} ({plan.num_retrieval()} retrieval KV heads, W={sparse.window}, S={sparse.sinks})")
    return {"out": str(args.out), "plan": plan_summary(plan), "sparse": sparse.to_dict(), "training": training}


def generate(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import TextStreamer

    from .generate import generate as run_generate

    model, tokenizer = _load(args, merge_adapters=True)
    converted = getattr(model, "rtpurbo_plan", None) is not None
    if converted and args.top_p is not None:
        model.rtpurbo_sparse.top_p = args.top_p
    text = args.prompt
    if not args.no_chat_template and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    device = next(model.parameters()).device
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]], device=device)
    streamer = None if args.json else TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    if converted:
        result = run_generate(model, tokenizer, ids, max_new_tokens=args.max_new_tokens,
                              prefill_chunk=args.prefill_chunk, do_sample=args.sample,
                              temperature=args.temperature, streamer=streamer, cuda_graph=args.cuda_graph)
        new, stats = result.new_tokens[0], result.cache.stats.summary()
        kv = {"allocated_bytes": result.cache.allocated_bytes(), "used_bytes": result.cache.used_bytes()}
    else:
        if args.cuda_graph:
            raise SystemExit("rtpurbo generate: --cuda-graph decodes through the head-wise cache; give an artifact")
        say(args, "(dense base model: no rtpurbo artifact given)")
        with torch.no_grad():
            out = model.generate(input_ids=ids, max_new_tokens=args.max_new_tokens, do_sample=args.sample,
                                 streamer=streamer, pad_token_id=tokenizer.pad_token_id)
        new, stats, kv = out[0, ids.shape[1]:], {}, {}
    return {"text": tokenizer.decode(new, skip_special_tokens=True), "new_tokens": int(new.numel()),
            "selection": stats, "kv_cache": kv}


def info(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {}
    if args.layers or args.kv_heads or args.head_dim:
        if not (args.layers and args.kv_heads and args.head_dim):
            raise SystemExit("rtpurbo info: --layers, --kv-heads and --head-dim go together")
        retrieval = max(1, round(args.retrieval_ratio * args.layers * args.kv_heads))
        geo = _kv_geometry(args.layers, args.kv_heads, args.head_dim, retrieval, args)
        result["geometry"] = {"layers": args.layers, "kv_heads": args.kv_heads, "head_dim": args.head_dim,
                              "retrieval_kv_heads": retrieval}
    else:
        from transformers import AutoConfig

        from .models import resolve_model

        if _is_artifact(args.model):
            config = io.read_config(args.model)
            from .config import HeadPlan, SparseConfig

            plan, sparse = HeadPlan.from_dict(config["plan"]), SparseConfig.from_dict(config["sparse"])
            args.window, args.sinks, args.index_dim = sparse.window, sparse.sinks, sparse.index_dim
            result["plan"] = plan_summary(plan)
            layers, kv_heads = plan.num_layers, plan.num_kv_heads
            source = resolve_model(config["base_model"]["spec"])
            retrieval = plan.num_retrieval()
        else:
            source = resolve_model(args.model)
            retrieval = None
        extra = {"gguf_file": source.gguf_file} if source.gguf_file else {}
        layers, kv_heads, _, head_dim = geometry(AutoConfig.from_pretrained(source.directory, **extra))
        if retrieval is None:
            retrieval = max(1, round(args.retrieval_ratio * layers * kv_heads))
        geo = _kv_geometry(layers, kv_heads, head_dim, retrieval, args)
        result["geometry"] = {"layers": layers, "kv_heads": kv_heads, "head_dim": head_dim,
                              "retrieval_kv_heads": retrieval}
    rows = geo.report()
    result["kv_cache"] = rows
    if not args.json:
        print(f"geometry: {result['geometry']}  W={geo.window} S={geo.sinks} d_idx={geo.index_dim} "
              f"bytes/value={geo.bytes_per_value}")
        if "plan" in result:
            print(f"plan: {result['plan']['retrieval_kv_heads']}/{result['plan']['total_kv_heads']} retrieval "
                  f"KV heads, by layer {result['plan']['by_layer']}")
        print(kv_table(rows))
    return result


def _kv_geometry(layers: int, kv_heads: int, head_dim: int, retrieval: int, args: argparse.Namespace) -> KVGeometry:
    return KVGeometry(layers, kv_heads, head_dim, retrieval, args.window, args.sinks, args.index_dim,
                      args.bytes_per_value)


def quickstart(args: argparse.Namespace) -> dict[str, Any]:
    from .quickstart import run

    return run(args, _load, _settings, say)
