"""``rtpurbo bench``: GPU benchmarks.

    rtpurbo bench attention [--prefill 8192,32768 ...]    one attention layer, sparse vs SDPA cuDNN / flash
    rtpurbo bench model [--layers 8] [--lengths 32K 128K] [--oom-search] [--deadline 240]
                                                           a whole Llama-3.1-8B-geometry model, dense vs sparse
    rtpurbo bench model --quick                            GPU smoke run: 2 layers, 4K and 16K tokens
    rtpurbo bench model --device cpu --tiny                the whole code path on a tiny model, on the CPU

``bench model`` checks every flag before it builds anything (a bad one is a one-line error, exit 2),
prints progress on stderr, then a Markdown report and one JSON line on stdout; every measurement is
appended to ``--out`` (JSON lines) as soon as it exists (earlier runs in the file stay; a run starts
with its ``config`` record and ends with its ``result``), and the run's report is written beside it
(``x.jsonl`` -> ``x.md``, another name gets ``.md`` appended).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from ..cli_args import SettingsError, count_value, positive_int, ratio_value, top_p_value
from ..config import PREFILL_SCORINGS
from ..ops import flex
from .end_to_end import run_benchmark
from ..cli_args import count_float, positive_float
from .flags import out_file, tokens, tokens_or_zero
from .model_report import markdown, report_path
from .settings import GEOMETRIES, LLAMA_31_8B, SDPA_BACKENDS, TINY, TINY_OF, ModelBenchSettings

QUICK = dict(layers=2, lengths=[4096, 16384], repeats=1, decode_steps=8, decode_warmup=2)
TINY_RUN = dict(geometry=TINY, layers=2, lengths=[512, 1024], window=128, repeats=1, decode_steps=8,
                decode_warmup=2, oom_lengths=[2048, 4096], seqlen_threshold=0)
NEEDS_GPU = "rtpurbo bench {what} needs a CUDA GPU (torch.cuda.is_available() is False)"


def add_parsers(subparsers: Any) -> None:
    """Add ``bench attention`` and ``bench model`` to the ``rtpurbo`` parser's subparsers."""
    bench = subparsers.add_parser("bench", help="GPU benchmarks: one attention layer, or a whole model",
                                  description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    kinds = bench.add_subparsers(dest="bench", required=True)

    p = kinds.add_parser("attention", help="attention layer: head-wise sparse vs dense SDPA (cuDNN, flash)")
    from .attention import add_arguments

    add_arguments(p)
    p.set_defaults(handler=run_attention, json=False)

    p = kinds.add_parser("model", help="whole model: TTFT, decode tokens/s, peak memory, KV bytes; OOM search")
    add_model_arguments(p)
    p.set_defaults(handler=run_model, json=False)


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    d = ModelBenchSettings()
    p.add_argument("--layers", type=positive_int, help=f"decoder layers (default {d.layers} of {LLAMA_31_8B.full_layers}, "
                                                  "to save memory; the report says so)")
    p.add_argument("--lengths", type=tokens, nargs="+", help="prompt lengths (default 32K 128K)")
    p.add_argument("--decode-lengths", type=tokens, nargs="+",
                   help="also time decode alone after caches filled with random K/V of these lengths (no prefill; "
                        "e.g. 512K 1M, where the attention share of a decode step is large)")
    p.add_argument("--quick", action="store_true", help=f"GPU smoke run: {QUICK}")
    p.add_argument("--geometry", choices=list(GEOMETRIES), help="model geometry (default llama-3.1-8b; qwen3-30b-a3b: "
                   "transformers' Qwen3-MoE modules, 128 experts, top-8)")
    p.add_argument("--prefill-chunk", type=tokens, help="rtpurbo variants prefill in chunks of this many tokens "
                   "(dense: one shot)")
    p.add_argument("--mlp-chunk", type=tokens_or_zero, help="every variant's decoder MLPs run on at most this many tokens at a "
                   "time (token-wise, so the same output; lets dense prefill 1M tokens in one shot). Default: "
                   "--prefill-chunk's value; 0 = whole sequences")
    p.add_argument("--no-flash-ttft", dest="flash_ttft", action="store_false", default=None,
                   help="skip the dense-flash TTFT row (dense with SDPA's flash backend; GPU only)")
    p.add_argument("--tiny", action="store_true", help="tiny geometry (2 layers, hidden 256, 4 q / 2 KV heads, head "
                   "dim 64, vocab 1000, lengths 512 1024, W 128; with --geometry qwen3-30b-a3b the tiny Qwen3-MoE one, "
                   "4 experts, top-2) for CPU runs; retrieval heads select at every length (seqlen threshold 0) "
                   "unless --seqlen-threshold is given")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="default cuda")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], help="default bfloat16 (float32 on the CPU)")
    p.add_argument("--window", type=tokens, help=f"W of local heads (default {d.window}; 128 with --tiny)")
    p.add_argument("--sinks", type=count_value, help=f"S (default {d.sinks})")
    p.add_argument("--top-p", type=top_p_value, help=f"retrieval heads' indexer mass at decode (default {d.top_p})")
    p.add_argument("--index-logit-std", type=positive_float, metavar="SIGMA",
                   help="scale the untrained indexers so decode scores against random-filled caches have std SIGMA "
                        "logits, as peaked as trained indexers' (2.56: top-p 0.9 keeps about 10 %% of the keys; "
                        "default: untrained, nearly flat scores, top-p keeps most keys)")
    p.add_argument("--prefill-blocks", type=tokens, nargs="+", default=[], metavar="N",
                   help="also time variants sparse-prefill{N}: retrieval heads prefill each query block over at most N "
                        "key blocks of 128 (the indexer's top-p --prefill-top-p over block scores, plus the sink block "
                        "and a 512-token local band); random weights score blocks almost flat, so N sets the share kept")
    p.add_argument("--prefill-top-p", type=top_p_value, help="top-p of the sparse-prefill variants over block scores "
                   f"(default {d.prefill_top_p})")
    p.add_argument("--prefill-scoring", choices=PREFILL_SCORINGS, help="how the sparse-prefill variants score key "
                   f"blocks: pooled indexer vectors or the indexer's mass per block (default {d.prefill_scoring})")
    p.add_argument("--prefill-dense-tail", type=tokens, nargs="+", metavar="T",
                   help="also time each sparse-prefill{N} variant with the prompt's last T queries dense, as "
                        "sparse-prefill{N}-tail{T}, for each T given (--prefill-dense-tail of the converted model)")
    p.add_argument("--seqlen-threshold", type=tokens_or_zero, help=f"cached tokens from which retrieval heads select (below: "
                   f"every key; 0 = always select; default {d.seqlen_threshold}, 0 with --tiny)")
    p.add_argument("--two-launch-decode", action="store_true",
                   help="add variant sparse-two-launch: sparse, but each decode step runs the local and retrieval heads "
                        "in two launches on two streams (the path before the one-launch step), for a same-run comparison "
                        "(GPU only)")
    p.add_argument("--max-tokens", type=tokens, nargs="+", default=[],
                   help="add a sparse variant per budget (max_tokens) to the unbounded top-p one")
    p.add_argument("--retrieval-fraction", type=ratio_value, help=f"share of KV heads kept full (default "
                                                             f"{d.retrieval_fraction})")
    p.add_argument("--decode-steps", type=positive_int, help=f"timed decode steps (default {d.decode_steps})")
    p.add_argument("--decode-warmup", type=count_value, help=f"untimed decode steps first (default {d.decode_warmup})")
    p.add_argument("--repeats", type=positive_int, help=f"timed runs per point (default {d.repeats})")
    p.add_argument("--warmup", type=count_value, help=f"dropped runs per point (default {d.warmup})")
    p.add_argument("--oom-search", action="store_true", help="then find the first length where dense runs out of "
                                                             "memory and sparse does not")
    p.add_argument("--oom-lengths", type=tokens, nargs="+", help="lengths of the OOM search (default 256K .. 8M)")
    p.add_argument("--oom-keep-going", action="store_true", help="after dense runs out, go on until sparse does")
    p.add_argument("--oom-decode-steps", type=positive_int, help=f"decode steps per OOM try (default {d.oom_decode_steps})")
    p.add_argument("--deadline", type=count_float, help="seconds from the start; measurements not started by then are "
                                                    "skipped (recorded as such); with --oom-search it must exceed "
                                                    "--oom-reserve")
    p.add_argument("--oom-reserve", type=count_float, help=f"seconds of --deadline kept for the OOM search (default "
                                                       f"{d.oom_reserve_s:.0f})")
    p.add_argument("--sdpa", nargs="+", choices=list(SDPA_BACKENDS), help="dense SDPA backends to try in order "
                                                                          f"(default {' '.join(d.sdpa_backends)}; GPU only)")
    p.add_argument("--profile-decode", type=positive_int, metavar="STEPS", dest="profile_steps",
                   help="also profile STEPS decode steps per variant at the shortest length (torch.profiler: "
                        "wall vs device time, kernels and ops per step, top operators)")
    p.add_argument("--profile-length", type=tokens, metavar="L",
                   help="cached tokens of the decode profiles (default: the shortest --lengths; e.g. 1M after a "
                        "random-filled cache, as --decode-lengths)")
    p.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                   help="rtpurbo variants decode from a CUDA graph (static-shape HeadwiseCache), and a dense-graph "
                        "variant (the same weights, every head full attention, graphed) joins eager transformers "
                        "dense; captured in the untimed decode steps (needs --decode-warmup >= 2). Default: on "
                        "with --device cuda; on the CPU the eager stand-ins run")
    p.add_argument("--seed", type=int, help="weights and prompts seed (default 0)")
    p.add_argument("--window-kernel", choices=flex.WINDOW_KERNELS, help="local heads' plain prefill kernel: rtpurbo's "
                   "Triton kernel or cuDNN's band + sinks merge (default: RTPURBO_WINDOW_KERNEL, else triton; GPU only)")
    p.add_argument("--sparse-prefill-kernel", choices=flex.SPARSE_PREFILL_KERNELS,
                   help="with --prefill-blocks: the retrieval heads' sparse-prefill kernels for unpadded prompts: "
                        "auto (triton where its kernels take the tensors, else flex), triton (the Triton kernels; raises "
                        "where they cannot run) or flex (block choice in PyTorch ops, compiled flex attention) "
                        "(default: RTPURBO_SPARSE_PREFILL_KERNEL, else auto; GPU only)")
    p.add_argument("--out", type=out_file, default=Path("runs/bench-model/model_bench.jsonl"),
                   help="JSON-lines file: one line per measurement as it comes, appended (earlier runs in it stay); "
                        "the run's Markdown report beside it (x.jsonl -> x.md, another name + .md)")


FLAG_TO_FIELD = {"layers": "layers", "lengths": "lengths", "dtype": "dtype", "window": "window", "sinks": "sinks",
                 "top_p": "top_p", "seqlen_threshold": "seqlen_threshold", "retrieval_fraction": "retrieval_fraction", "decode_steps": "decode_steps",
                 "decode_warmup": "decode_warmup", "repeats": "repeats", "warmup": "warmup",
                 "oom_lengths": "oom_lengths", "oom_decode_steps": "oom_decode_steps", "deadline": "deadline_s",
                 "oom_reserve": "oom_reserve_s",
                 "sdpa": "sdpa_backends", "seed": "seed", "profile_steps": "profile_steps", "profile_length": "profile_length",
                 "decode_lengths": "decode_lengths", "prefill_chunk": "prefill_chunk", "flash_ttft": "flash_ttft",
                 "index_logit_std": "index_logit_std", "prefill_top_p": "prefill_top_p",
                 "prefill_scoring": "prefill_scoring", "prefill_dense_tail": "prefill_dense_tails"}


def settings_from(args: argparse.Namespace) -> ModelBenchSettings:
    """Defaults, then the --tiny / --quick preset, then every flag given; :class:`SettingsError` (one line) for flags
    that contradict each other, that the settings cannot run with, or that would do nothing."""
    _refuse_idle_flags(args)
    fields: dict[str, Any] = {}
    if args.tiny:
        fields.update(TINY_RUN)
    if args.quick:
        fields.update(QUICK)
    if args.device == "cpu":
        fields["dtype"] = "float32"
    if args.geometry is not None:
        fields["geometry"] = (TINY_OF if args.tiny else GEOMETRIES)[args.geometry]
    fields.update({name: getattr(args, flag) for flag, name in FLAG_TO_FIELD.items() if getattr(args, flag) is not None})
    fields.update(device=args.device, budgets=list(args.max_tokens), prefill_blocks=list(args.prefill_blocks),
                  oom_search=args.oom_search, oom_keep_going=args.oom_keep_going, two_launch=args.two_launch_decode,
                  cuda_graph=args.device == "cuda" if args.cuda_graph is None else args.cuda_graph)
    mlp_chunk = fields.get("prefill_chunk") if args.mlp_chunk is None else args.mlp_chunk
    fields["mlp_chunk"] = mlp_chunk or None
    try:
        return ModelBenchSettings(**fields)
    except ValueError as err:
        raise SettingsError(str(err)) from None


def _refuse_idle_flags(args: argparse.Namespace) -> None:
    """:class:`SettingsError` naming every flag given that would be ignored (the settings cannot tell those apart
    from defaults)."""
    problems = ["--tiny and --quick are two presets (a CPU model, a GPU smoke run): give one"] if args.tiny and args.quick else []
    needs = {"--prefill-blocks": (bool(args.prefill_blocks), ("prefill_top_p", "prefill_scoring", "prefill_dense_tail",
                                                               "sparse_prefill_kernel")),
             "--oom-search": (args.oom_search, ("oom_lengths", "oom_decode_steps", "oom_reserve", "oom_keep_going")),
             "--profile-decode": (args.profile_steps is not None, ("profile_length",))}
    for needed, (given, dests) in needs.items():
        problems += [f"--{dest.replace('_', '-')} does nothing without {needed}" for dest in dests
                     if not given and getattr(args, dest) not in (None, False)]
    if args.device == "cpu":
        gpu_only = {"sdpa": "--sdpa picks the dense model's GPU SDPA backends",
                    "window_kernel": "--window-kernel picks the local heads' GPU prefill kernel",
                    "sparse_prefill_kernel": "--sparse-prefill-kernel picks the retrieval heads' GPU prefill kernels",
                    "flash_ttft": "--no-flash-ttft drops the dense-flash row, which only a GPU run has"}
        problems += [f"{why}: not with --device cpu" for dest, why in gpu_only.items() if getattr(args, dest) is not None]
    if problems:
        raise SettingsError("; ".join(problems))


def _require_gpu(what: str) -> None:
    if not torch.cuda.is_available():
        hint = "; for a CPU run of the whole code path use --device cpu --tiny" if what == "model" else ""
        raise SystemExit(NEEDS_GPU.format(what=what) + hint)


def run_model(args: argparse.Namespace) -> dict[str, Any]:
    """``rtpurbo bench model``: the report and the JSON line on stdout; returns the result."""
    settings = settings_from(args)
    if settings.device == "cuda":
        _require_gpu("model")
    if args.window_kernel:
        flex.set_window_kernel(args.window_kernel)
    if args.sparse_prefill_kernel:
        flex.set_sparse_prefill_kernel(args.sparse_prefill_kernel)
    result = run_benchmark(settings, args.out, log=lambda message: print(message, file=sys.stderr, flush=True))
    report = markdown(result)
    report_path(args.out).write_text(report + "\n")
    print(report)
    print(json.dumps(result), flush=True)
    return result


def run_attention(args: argparse.Namespace) -> dict[str, Any]:
    """``rtpurbo bench attention``: see :mod:`rtpurbo.bench.attention`."""
    if args.sparse_prefill_kernels and not args.prefill_blocks:
        raise SettingsError("--sparse-prefill-kernels does nothing without --prefill-blocks")
    _require_gpu("attention")
    from .attention import run

    return run(args)
