"""``rtpurbo`` command line: one subcommand per stage, dashed flags mapping to config fields."""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from . import quickstart
from .bench.commands import add_parsers as add_bench_parsers
from .cli_args import (RecordGiven, add_criterion, add_haystacks, add_model, add_profile, add_sparse, count_value,
                       path_value, positive_float, positive_int, ratio_value, size_value, top_p_value)
from .eval.commands import add_parsers as add_eval_parsers
from .plan.commands import add_parsers as add_plan_parsers
from .train.commands import add_convert_train_arguments
from .train.commands import add_parsers as add_training_parsers


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rtpurbo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("profile", help="score every KV head and choose retrieval heads")
    add_model(p)
    add_profile(p)
    add_criterion(p)
    p.add_argument("--window", type=positive_int, default=1024, help="W of long-range mass and of the knockout (default 1024)")
    p.add_argument("--sinks", type=count_value, default=4, help="S (default 4)")
    p.add_argument("--out", type=path_value, required=True, help="directory for head_scores.json, head_plan.json/.png")
    p.add_argument("--data", type=path_value, help="shards of the user's text (rtpurbo data prepare): their documents "
                                                   "become haystacks of more profiling prompts (domain_stability.json)")
    add_haystacks(p)

    p = sub.add_parser("convert", help="convert a base model and save the artifact")
    add_model(p)
    add_sparse(p)
    add_profile(p)
    p.add_argument("--plan", type=path_value, help="head_plan.json, or a config.json with headwise_config "
                                                   "(default: profile now)")
    p.add_argument("--out", type=path_value, required=True, help="artifact directory to write")
    add_convert_train_arguments(p)
    add_haystacks(p)

    p = sub.add_parser("generate", help="generate text (streamed) through the head-wise cache")
    add_model(p, artifact_ok=True)
    p.add_argument("--prompt", required=True, help="prompt text")
    p.add_argument("--max-new-tokens", type=positive_int, default=64)
    p.add_argument("--top-p", type=top_p_value, default=None, help="override the artifact's indexer top-p")
    p.add_argument("--seqlen-threshold", type=count_value, default=None,
                   help="cached tokens from which the retrieval heads select their top-p keys at decode (default: the "
                        "artifact's, 524288 for smollm2-135m-rtpurbo, so below it --top-p changes nothing; 0 = always "
                        "select, as rtpurbo eval scores)")
    p.add_argument("--prefill-chunk", type=positive_int, default=None, help="prefill the prompt in chunks")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=positive_float, default=0.7, action=RecordGiven,
                   help="sampling temperature, with --sample (default 0.7)")
    p.add_argument("--no-chat-template", action="store_true", help="send the prompt as raw text")
    p.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                   help="decode from a CUDA graph (converted models; sampling at --temperature only). Default: as "
                        "model.generate() decides, on for a converted model on CUDA with at least 4 new tokens (the "
                        "fast path on a GPU; RTPURBO_GENERATE_CUDA_GRAPH=0 turns it off); --no-cuda-graph decodes "
                        "eagerly")

    p = sub.add_parser("export", help="write a converted model as a Hugging Face model directory (transformers, "
                                      "transformers serve, lm-evaluation-harness, RTP-LLM)")
    add_model(p, artifact_ok=True)
    p.add_argument("--out", type=path_value, required=True, help="model directory to write")
    p.add_argument("--max-shard-size", type=size_value, default="5GB",
                   help="split model.safetensors into shards of at most this size (default 5GB)")
    p.add_argument("--seqlen-threshold", type=count_value, help="cached tokens from which the exported model's retrieval "
                   "heads select at decode (default: the artifact's; 0 = always, as rtpurbo eval scores)")

    p = sub.add_parser("lm-eval-task", help="write rtpurbo eval's task samples as a local lm-evaluation-harness "
                                            "task (YAML + JSONL + metrics)")
    add_model(p, artifact_ok=True)
    p.add_argument("--data", type=path_value, required=True, help="eval data: OUT/eval_data.npz of rtpurbo eval "
                                                                  "(--prepare-only writes it)")
    p.add_argument("--out", type=path_value, required=True,
                   help="directory for the task files (lm_eval --include_path)")
    p.add_argument("--tasks", nargs="+", metavar="TASK", help="only these rtpurbo eval tasks (default: all held)")
    p.add_argument("--lengths", type=positive_int, nargs="+", help="only these lengths (default: all held)")

    p = sub.add_parser("info", help="plan summary and KV-cache bytes, dense vs sparse")
    add_model(p, artifact_ok=True)
    p.add_argument("--layers", type=positive_int, help="geometry instead of a model: layers")
    p.add_argument("--kv-heads", type=positive_int, help="geometry: KV heads per layer")
    p.add_argument("--head-dim", type=positive_int, help="geometry: head dim")
    p.add_argument("--retrieval-ratio", type=ratio_value, default=0.15, action=RecordGiven,
                   help="geometry: share of retrieval KV heads")
    p.add_argument("--window", type=positive_int, default=8192, action=RecordGiven)
    p.add_argument("--sinks", type=count_value, default=4, action=RecordGiven)
    p.add_argument("--index-dim", type=positive_int, default=16, action=RecordGiven)
    p.add_argument("--bytes-per-value", type=positive_int, default=2, help="2 for bf16 caches")

    p = sub.add_parser("quickstart", help="main job: dense vs converted (shipped adapter): quality, memory, speed")
    p.set_defaults(handler=quickstart.command)
    add_model(p)
    p.add_argument("--adapter", default="smollm2-135m-rtpurbo", action=RecordGiven,
                   help="converted row: a shipped adapter or artifact directory of --model (default: "
                        "smollm2-135m-rtpurbo)")
    p.add_argument("--from-scratch", action="store_true",
                   help="converted row: profile -> convert -> save here instead (training-free split)")
    add_profile(p)
    p.add_argument("--window", type=positive_int, default=1024, action=RecordGiven, help="W with --from-scratch")
    p.add_argument("--sinks", type=count_value, default=4, action=RecordGiven, help="S with --from-scratch")
    p.add_argument("--out", type=path_value, default=Path("runs/quickstart"), help="output directory")
    p.add_argument("--eval-windows", type=positive_int, default=2, help="8K-token windows of dev text")
    p.add_argument("--eval-length", type=positive_int, default=8192, help="tokens per perplexity window")
    p.add_argument("--probe-samples", type=positive_int, default=2, help="needle prompts per kind (3 kinds)")
    p.add_argument("--probe-length", type=positive_int, default=4096, help="tokens per needle prompt")
    p.add_argument("--speed-length", type=positive_int, default=8192, help="context of the CPU speed rows")
    add_training_parsers(sub)
    add_eval_parsers(sub)
    add_plan_parsers(sub)
    add_bench_parsers(sub)
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by the user's input: printed as one line, no traceback."""
    from .cli_args import SettingsError
    from .config import PlanMismatch
    from .convert import AlreadyConverted
    from .data.needles import SampleTooShort
    from .data.sources import SourceUnavailable, UnknownSource
    from .data.task_data import TooFewSamples
    from .data.user import UserDataError
    from .export import ExportError
    from .families import UnsupportedModel
    from .files import NotAnEarlierOutput, OutputNotWritable
    from .generate import PromptTooLong
    from .io import ArtifactError
    from .models import ModelNotFound, NotABaseModel
    from .ops.api import BackendUnavailable
    from .train.checkpoint import CheckpointInTheWay, CheckpointMismatch
    from .train.data import NotEnoughData, ShardMismatch
    from .train.loop import TrainingDiverged
    from .train.stage2_distill import LoraMismatch, TrainedBase

    return (AlreadyConverted, ArtifactError, BackendUnavailable, CheckpointInTheWay, CheckpointMismatch, ExportError,
            LoraMismatch, ModelNotFound, NotABaseModel, NotAnEarlierOutput, NotEnoughData, OutputNotWritable,
            PlanMismatch, PromptTooLong, SampleTooShort, SettingsError, ShardMismatch, SourceUnavailable, TooFewSamples,
            TrainedBase, TrainingDiverged, UnknownSource, UnsupportedModel, UserDataError)


WRITTEN_WHOLE = ("convert", "data", "distill", "export", "lm-eval-task", "plan", "profile",
                 "train-indexer")  # their --out: all or nothing


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, a job scheduler), raised where the command is, as Ctrl-C raises
    ``KeyboardInterrupt``: the same clean-up runs."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated()


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While the block runs (in the main thread), SIGTERM raises :class:`Terminated`, so that ``finally`` and
    ``except`` blocks run (half-written outputs are removed, earlier ones kept), as on Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _state(path: Path | None) -> tuple[int, int] | None:
    """What tells a directory replaced whole from the one before: its (device, inode); None if missing."""
    try:
        info = Path(path).stat()
    except (OSError, TypeError):  # missing, or no --out
        return None
    return info.st_dev, info.st_ino


def interrupted(args: argparse.Namespace, out_before: tuple[int, int] | None, err: KeyboardInterrupt) -> str:
    """The one line for a command stopped by Ctrl-C or SIGTERM: what stopped, whether ``--out`` is as it was, and
    for training where its checkpoints are and that ``--resume`` continues from them."""
    parts = ["terminated (SIGTERM)" if isinstance(err, Terminated) else "interrupted (Ctrl-C)"]
    out = getattr(args, "out", None)
    if out is not None and args.command in WRITTEN_WHOLE and _state(out) == out_before:
        parts.append(f"{out} is unchanged" if out_before is not None else f"nothing was written to {out}")
    elif out is not None and args.command == "eval" and not (args.prepare_only or args.report_only):
        parts.append(f"the rows finished so far stay in {out}: the same command continues from them")
    if args.command in ("train-indexer", "distill") or (args.command == "convert" and args.train):
        from .train.commands import checkpoint_root

        try:
            root = checkpoint_root(args)
        except ValueError:  # an --out without a name, refused before any training
            root = None
        if root is not None and any(root.glob("*/latest/state.json")):
            parts.append(f"checkpoints are in {root}: the same command with --resume continues from them")
        elif root is not None:
            parts.append("no training checkpoint was written yet")
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from . import commands

    started = time.time()
    handler = getattr(args, "handler", None) or getattr(commands, args.command.replace("-", "_"))
    out_before = _state(getattr(args, "out", None))
    try:
        with sigterm_as_interrupt():
            result = handler(args)
    except user_errors() as err:
        print(f"rtpurbo {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print(f"\nrtpurbo {args.command}: {interrupted(args, out_before, err)}", file=sys.stderr)  # under a tqdm bar
        return 143 if isinstance(err, Terminated) else 130
    result.setdefault("wall_seconds", round(time.time() - started, 1))
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
