"""``rtpurbo`` command line: one subcommand per stage, dashed flags mapping to config fields."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from .config import SparseConfig, check_ratio
from .models import DEFAULT_MODEL
from .train.commands import add_convert_train_arguments
from .train.commands import add_parsers as add_training_parsers


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return number


def _ratio(value: str) -> float:
    number = float(value)
    try:
        check_ratio(number)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err
    return number


def _top_p(value: str) -> float:
    number = float(value)
    if not 0 < number <= 1:
        raise argparse.ArgumentTypeError(f"top-p must be in (0, 1], got {value}")
    return number


def add_model(p: argparse.ArgumentParser, artifact_ok: bool = False) -> None:
    what = "embedded name, HF model directory, .gguf file" + (
        ", rtpurbo artifact directory or shipped adapter (smollm2-135m-rtpurbo)" if artifact_ok else "")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"{what} (default: {DEFAULT_MODEL})")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto (cuda when available)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights dtype (auto: float32 on CPU, bfloat16 on GPU)")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")


def add_sparse(p: argparse.ArgumentParser) -> None:
    d = SparseConfig()
    p.add_argument("--window", type=_positive, default=1024, help="W: tokens a local head sees (default 1024)")
    p.add_argument("--sinks", type=int, default=d.sinks, help=f"S: sink tokens (default {d.sinks})")
    p.add_argument("--index-dim", type=_positive, default=d.index_dim, help="indexer width d_idx")
    p.add_argument("--index-rope-dims", type=int, default=d.index_rope_dims, help="indexer dims with RoPE")
    p.add_argument("--top-p", type=_top_p, default=d.top_p, help="indexer mass kept at decode (1 = full)")
    p.add_argument("--min-tokens", type=int, default=d.min_tokens, help="lower clamp of the top-p budget")
    p.add_argument("--max-tokens", type=int, default=d.max_tokens, help="upper clamp of the top-p budget")
    p.add_argument("--recent", type=int, default=d.recent, help="recent tokens retrieval heads always keep")
    p.add_argument("--impl", default=d.impl, help="attention backend: auto, sdpa, reference, flex")
    p.add_argument("--decode-impl", default=d.decode_impl, help="top-p decode backend: auto, reference, triton")
    p.add_argument("--reorder-heads", action="store_true", help="make retrieval KV heads contiguous")


def sparse_from_args(args: argparse.Namespace, **overrides: Any) -> SparseConfig:
    fields = dict(
        window=args.window, sinks=args.sinks, index_dim=args.index_dim, index_rope_dims=args.index_rope_dims,
        top_p=args.top_p, min_tokens=args.min_tokens, max_tokens=args.max_tokens, recent=args.recent,
        impl=args.impl, decode_impl=args.decode_impl, reorder_heads=args.reorder_heads,
    )
    fields.update(overrides)
    return SparseConfig(**fields)


def add_profile(p: argparse.ArgumentParser) -> None:
    p.add_argument("--retrieval-ratio", type=_ratio, default=0.15, help="share of KV heads kept full (default 0.15)")
    p.add_argument("--profile-length", type=_positive, default=2048, help="tokens per profiling prompt")
    p.add_argument("--profile-samples", type=_positive, default=6, help="profiling prompts per needle kind")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rtpurbo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("profile", help="score every KV head and choose retrieval heads")
    add_model(p)
    add_profile(p)
    p.add_argument("--window", type=_positive, default=1024, help="W used for long-range mass (default 1024)")
    p.add_argument("--sinks", type=int, default=4, help="S (default 4)")
    p.add_argument("--out", type=Path, required=True, help="directory for head_scores.json, head_plan.json/.png")

    p = sub.add_parser("convert", help="convert a base model and save the artifact")
    add_model(p)
    add_sparse(p)
    add_profile(p)
    p.add_argument("--plan", type=Path, help="head_plan.json, or a config.json with headwise_config "
                                             "(default: profile now)")
    p.add_argument("--out", type=Path, required=True, help="artifact directory to write")
    add_convert_train_arguments(p)

    p = sub.add_parser("generate", help="generate text (streamed) through the head-wise cache")
    add_model(p, artifact_ok=True)
    p.add_argument("--prompt", required=True, help="prompt text")
    p.add_argument("--max-new-tokens", type=_positive, default=64)
    p.add_argument("--top-p", type=_top_p, default=None, help="override the artifact's indexer top-p")
    p.add_argument("--prefill-chunk", type=_positive, default=None, help="prefill the prompt in chunks")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--no-chat-template", action="store_true", help="send the prompt as raw text")
    p.add_argument("--cuda-graph", action="store_true", help="decode from a CUDA graph (converted models; the fast "
                                                            "path on a GPU; sampling at --temperature only)")

    p = sub.add_parser("info", help="plan summary and KV-cache bytes, dense vs sparse")
    add_model(p, artifact_ok=True)
    p.add_argument("--layers", type=_positive, help="geometry instead of a model: layers")
    p.add_argument("--kv-heads", type=_positive, help="geometry: KV heads per layer")
    p.add_argument("--head-dim", type=_positive, help="geometry: head dim")
    p.add_argument("--retrieval-ratio", type=_ratio, default=0.15, help="geometry: share of retrieval KV heads")
    p.add_argument("--window", type=_positive, default=8192)
    p.add_argument("--sinks", type=int, default=4)
    p.add_argument("--index-dim", type=_positive, default=16)
    p.add_argument("--bytes-per-value", type=_positive, default=2, help="2 for bf16 caches")

    p = sub.add_parser("quickstart", help="main job: dense vs converted (shipped adapter): quality, memory, speed")
    add_model(p)
    p.add_argument("--adapter", default="smollm2-135m-rtpurbo", help="converted row: a shipped adapter or artifact "
                   "directory of --model (default: smollm2-135m-rtpurbo)")
    p.add_argument("--from-scratch", action="store_true",
                   help="converted row: profile -> convert -> save here instead (training-free split)")
    add_profile(p)
    p.add_argument("--window", type=_positive, default=1024, help="W with --from-scratch")
    p.add_argument("--sinks", type=int, default=4, help="S with --from-scratch")
    p.add_argument("--out", type=Path, default=Path("runs/quickstart"), help="output directory")
    p.add_argument("--eval-windows", type=_positive, default=2, help="8K-token windows of dev text")
    p.add_argument("--eval-length", type=_positive, default=8192, help="tokens per perplexity window")
    p.add_argument("--probe-samples", type=_positive, default=2, help="needle prompts per kind (3 kinds)")
    p.add_argument("--probe-length", type=_positive, default=4096, help="tokens per needle prompt")
    p.add_argument("--speed-length", type=_positive, default=8192, help="context of the CPU speed rows")
    add_training_parsers(sub)
    from .eval.commands import add_parsers as add_eval_parsers  # eval.commands imports this module

    add_eval_parsers(sub)
    from .bench.commands import add_parsers as add_bench_parsers  # bench.commands imports this module too

    add_bench_parsers(sub)
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by the user's input: printed as one line, no traceback."""
    from .config import PlanMismatch
    from .data.sources import SourceUnavailable
    from .families import UnsupportedModel
    from .generate import PromptTooLong
    from .io import ArtifactError
    from .models import ModelNotFound
    from .ops.api import BackendUnavailable

    return (ArtifactError, BackendUnavailable, ModelNotFound, PlanMismatch, PromptTooLong, SourceUnavailable,
            UnsupportedModel)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from . import commands

    started = time.time()
    handler = getattr(args, "handler", None) or getattr(commands, args.command.replace("-", "_"))
    try:
        result = handler(args)
    except user_errors() as err:
        print(f"rtpurbo {args.command}: error: {err}", file=sys.stderr)
        return 2
    result.setdefault("wall_seconds", round(time.time() - started, 1))
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
