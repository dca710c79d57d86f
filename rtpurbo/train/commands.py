"""CLI of the training stages: ``rtpurbo data prepare``, ``train-indexer``, ``distill`` and ``convert --train``.

``add_parsers(subparsers)`` adds the three subcommands (each parser's ``handler`` default is
its function below); ``add_convert_train_arguments(parser)`` adds the ``--train`` flags to
``rtpurbo convert``, whose handler then calls :func:`train_converted` before saving.
Every handler takes the parsed args and returns a JSON-able dict.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from .. import io
from ..cli_args import (SettingsError, add_revision, beside, count_float, count_value, path_value, positive_float,
                        positive_int, sequence_length, share_below_one)
from ..files import check_replaceable
from ..data.needles import KINDS
from ..data.user import RecordText, UserInput, chat_renderer, dataset_input, file_input
from ..models import DEFAULT_MODEL, source_record
from ..models import load_tokenizer as load_model_tokenizer
from ..ops.block_scores import SCORINGS as PREFILL_SCORINGS
from .data import (DEFAULT_DEV_SOURCES, DEFAULT_SEQ_LEN, DEFAULT_TRAIN_SOURCES, LONG_RANGE_KINDS, TASK_KINDS,
                   PrepareSettings, check_crop, load_shards, prepare_shards, round_robin_documents)
from .checkpoint import check_start, checkpoint_state, has_checkpoint, run_of
from ..lora import LoraSettings
from .loop import LoopSettings, make_runtime
from .stage1_indexer import IndexerSettings, train_indexer as run_stage1
from .stage2_distill import STUDENT_PREFILL, TRAINABLE, DistillSettings, distill as run_stage2


PREPARE_EXAMPLES = """examples:
  rtpurbo data prepare --out runs/shards                          # built-in training pool, 1024 x 8K
  rtpurbo data prepare --model Qwen/Qwen3-8B --files 'corpus/**/*.md' chats.jsonl --out runs/my-train
  rtpurbo data prepare --model Qwen/Qwen3-8B --dataset my_saved_ds:train --out runs/my-train
  rtpurbo data prepare --model Qwen/Qwen3-8B --pool dev --files 'held-out/*.txt' --sequences 12 --out runs/my-dev
"""


def _say(args: argparse.Namespace, *parts: Any) -> None:
    print(*parts, file=sys.stderr if getattr(args, "json", False) else sys.stdout, flush=True)


# --- parsers ---------------------------------------------------------------------------------
def add_parsers(subparsers: Any) -> None:
    """Add ``data prepare``, ``train-indexer`` and ``distill`` to the ``rtpurbo`` subparsers."""
    data_parser = subparsers.add_parser("data", help="training / evaluation data")
    data_sub = data_parser.add_subparsers(dest="data_command", required=True)
    p = data_sub.add_parser("prepare", help="tokenised, packed, de-duplicated shards with a provenance manifest",
                            description=PREPARE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL, help="model (or artifact) whose tokenizer (and chat template) "
                                                          "to use; a Hub id org/name works too")
    add_revision(p)
    p.add_argument("--out", type=path_value, required=True, help="shard directory to write")
    p.add_argument("--pool", choices=["train", "dev"], default="train",
                   help="train (packed across documents, synthetic share) or dev: evaluation windows that never "
                        "span two documents (rtpurbo eval --ppl-data)")
    p.add_argument("--sources", help="comma-separated built-in source names (default: the pool's default list, "
                                     "none when --files or --dataset is given)")
    p.add_argument("--files", nargs="+", metavar="PATTERN", help="your files: plain text (any suffix), .jsonl / "
                   ".json records, .parquet (also .gz); wildcards, ** recurses. Quote the patterns")
    p.add_argument("--dataset", action="append", metavar="NAME_OR_PATH[:SPLIT]",
                   help="a dataset through the datasets library: a save_to_disk directory, a data file or "
                        "wildcard (json/parquet/csv/txt), a data directory, or a Hub dataset (streamed); split "
                        "default train. Repeatable")
    p.add_argument("--text-field", help="record field holding the text (default: messages / conversations "
                                        "rendered with the model's chat template, else text, else content)")
    p.add_argument("--seq-len", type=sequence_length, default=DEFAULT_SEQ_LEN, help="tokens per sequence")
    p.add_argument("--sequences", type=positive_int, default=1024, help="sequences to write")
    p.add_argument("--synthetic-ratio", type=share_below_one, default=None,
                   help="share of synthetic needle sequences (default 0.1 for train, 0 for dev)")
    p.add_argument("--no-cross-documents", action="store_true",
                   help="a sequence never spans two documents (default for the dev pool)")
    kinds = p.add_mutually_exclusive_group()
    kinds.add_argument("--synthetic-kinds", nargs="+", choices=KINDS + TASK_KINDS, default=list(KINDS), metavar="KIND",
                       help="synthetic sequences, in turn (default: passkey kv multihop)")
    kinds.add_argument("--long-range-mix", action="store_true",
                       help="stage-2 data of what a head split breaks: synthetic share 0.3 (unless --synthetic-ratio) "
                            f"of {' '.join(LONG_RANGE_KINDS)} (rtpurbo convert --train --distill-data DIR)")
    p.add_argument("--min-doc-chars", type=count_value,
                   help="skip shorter documents (default 2000 for built-in sources, 1 with --files / --dataset: "
                        "records are packed together)")
    p.add_argument("--shard-mb", type=positive_float, default=60.0, help="maximum shard size in MB")
    p.add_argument("--no-install", action="store_true", help="fail instead of installing missing sources")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    p.set_defaults(handler=data)

    p = subparsers.add_parser("train-indexer", help="stage 1: train the indexers (base model frozen)")
    _add_common(p)
    _add_indexer(p, prefix="")
    p.set_defaults(handler=train_indexer)

    p = subparsers.add_parser("distill", help="stage 2: distil the dense model into the sparse one")
    _add_common(p)
    _add_distill(p, prefix="")
    p.set_defaults(handler=distill)


def add_convert_train_arguments(p: argparse.ArgumentParser) -> None:
    """``rtpurbo convert --train``: profile -> convert -> stage 1 -> stage 2 -> save."""
    p.add_argument("--train", action="store_true", help="train indexers and adapters before saving")
    p.add_argument("--data", type=path_value, help="training shards (rtpurbo data prepare); needed with --train. "
                                                   "When profiling (no --plan), their documents also become profiling "
                                                   "haystacks")
    p.add_argument("--distill-data", type=path_value, help="stage-2 shards (default: --data), e.g. a long-range "
                                                           "mix (rtpurbo data prepare --synthetic-kinds ...)")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="training compute (auto: bf16 autocast on CUDA, fp32 on CPU)")
    p.add_argument("--checkpoint-dir", type=path_value, help="default: OUT.checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoints")
    p.add_argument("--seed", type=int, default=0)
    _add_indexer(p, prefix="indexer-")
    _add_distill(p, prefix="distill-")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=path_value, help="rtpurbo artifact directory (rtpurbo convert)")
    p.add_argument("--base", help="the artifact's base model where it is now (default: where the artifact records it)")
    p.add_argument("--data", required=True, type=path_value, help="training shards (rtpurbo data prepare)")
    p.add_argument("--out", required=True, type=path_value, help="artifact directory to write")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (torchrun: one GPU per process)")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="compute (auto: bf16 autocast on CUDA, fp32 on CPU)")
    p.add_argument("--checkpoint-dir", type=path_value, help="default: OUT.checkpoints")
    p.add_argument("--resume", action="store_true", help="continue exactly from the latest checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")


def _add_loop(p: argparse.ArgumentParser, prefix: str, steps: int, batch: int, lr: float | None) -> None:
    lr_help = "learning rate" if lr is not None else "learning rate (default per --trainable: lora 2e-4, " \
                                                     "attention 3e-5, all 1e-5)"
    p.add_argument(f"--{prefix}steps", type=positive_int, default=steps, help=f"optimizer steps (default {steps})")
    p.add_argument(f"--{prefix}batch-size", type=positive_int, default=batch,
                   help=f"sequences per step over all processes (default {batch})")
    p.add_argument(f"--{prefix}lr", type=positive_float, default=lr, help=lr_help)
    p.add_argument(f"--{prefix}warmup", type=count_value, default=30, help="linear warm-up steps before the cosine decay")
    p.add_argument(f"--{prefix}seq-len", type=positive_int, help="crop sequences to this length (default: as prepared)")
    p.add_argument(f"--{prefix}checkpoint-every", type=positive_int, default=100, help="steps between checkpoints")
    p.add_argument(f"--{prefix}time-budget", type=count_float, help="seconds; stop early (checkpointed) when spent")
    p.add_argument(f"--{prefix}keep-checkpoints", action="store_true",
                   help="also save an artifact at every checkpoint (OUT.<stage>-step-NNNNN) to evaluate the run "
                        "part-way")


def _add_indexer(p: argparse.ArgumentParser, prefix: str) -> None:
    d = IndexerSettings()
    _add_loop(p, prefix, d.loop.steps, d.loop.batch_size, d.loop.lr)
    p.add_argument(f"--{prefix}queries", type=positive_int, default=d.queries, help="sampled query positions per sequence")
    p.add_argument(f"--{prefix}eval-sequences", type=positive_int, default=d.eval_sequences,
                   help="held-out sequences for recall before/after")


def _add_distill(p: argparse.ArgumentParser, prefix: str) -> None:
    d = DistillSettings()
    _add_loop(p, prefix, d.loop.steps, d.loop.batch_size, None)
    p.add_argument(f"--{prefix}trainable", choices=TRAINABLE, default=d.trainable,
                   help="lora (peft adapters on q/k/v/o), attention (those weights) or all; indexers always")
    p.add_argument(f"--{prefix}lora-rank", type=positive_int,
                   help=f"rank of new adapters (default {LoraSettings().r}; a model with adapters trains its own)")
    p.add_argument(f"--{prefix}lora-alpha", type=positive_int, help=f"their alpha (default {LoraSettings().alpha})")
    p.add_argument(f"--{prefix}indexer-lr", type=positive_float, default=d.indexer_lr)
    p.add_argument(f"--{prefix}indexer-weight", type=count_float, default=d.indexer_weight,
                   help="weight of the indexer KL next to the distillation KL")
    p.add_argument(f"--{prefix}logits-chunk", type=positive_int, default=d.logits_chunk, help="positions per logits chunk")
    p.add_argument(f"--{prefix}no-gradient-checkpointing", action="store_true",
                   help="keep activations instead of recomputing them in backward: faster where memory allows "
                        "(SmolLM2 at 1 x 8K: 1.0 s/step and 13 GiB on an H200)")
    p.add_argument(f"--{prefix}eval-sequences", type=positive_int, default=d.eval_sequences)
    p.add_argument(f"--{prefix}student-prefill", choices=STUDENT_PREFILL, default=d.student_prefill,
                   help="retrieval heads of the student in training: the block-sparse prefill (sparse, default: "
                        "also adapts to retrieval_prefill=sparse; the better adapter on SmolLM2, dense prefill included) "
                        "or every query over its token top-p selection (topp)")
    p.add_argument(f"--{prefix}student-scoring", choices=PREFILL_SCORINGS, default=d.student_scoring,
                   help="how the sparse student scores key blocks: pooled indexer vectors or the indexer's mass per "
                        "block (default: the model's own prefill_scoring)")


# --- settings from args ------------------------------------------------------------------------
def _get(args: argparse.Namespace, prefix: str, name: str) -> Any:
    return getattr(args, (prefix + name).replace("-", "_"))


def _loop(args: argparse.Namespace, prefix: str, checkpoint_dir: Path) -> LoopSettings:
    return LoopSettings(
        steps=_get(args, prefix, "steps"), batch_size=_get(args, prefix, "batch-size"), lr=_get(args, prefix, "lr"),
        warmup=_get(args, prefix, "warmup"), seq_len=_get(args, prefix, "seq-len"), seed=args.seed,
        checkpoint_dir=checkpoint_dir, checkpoint_every=_get(args, prefix, "checkpoint-every"), resume=args.resume,
        time_budget=_get(args, prefix, "time-budget"), progress=True,
    )


def indexer_settings(args: argparse.Namespace, prefix: str, checkpoint_dir: Path) -> IndexerSettings:
    return IndexerSettings(loop=_loop(args, prefix, checkpoint_dir), queries=_get(args, prefix, "queries"),
                           eval_sequences=_get(args, prefix, "eval-sequences"))


def distill_settings(args: argparse.Namespace, prefix: str, checkpoint_dir: Path) -> DistillSettings:
    return DistillSettings(
        loop=_loop(args, prefix, checkpoint_dir), trainable=_get(args, prefix, "trainable"),
        lora=_lora(_get(args, prefix, "lora-rank"), _get(args, prefix, "lora-alpha")),
        indexer_lr=_get(args, prefix, "indexer-lr"), indexer_weight=_get(args, prefix, "indexer-weight"),
        logits_chunk=_get(args, prefix, "logits-chunk"),
        gradient_checkpointing=not _get(args, prefix, "no-gradient-checkpointing"),
        eval_sequences=_get(args, prefix, "eval-sequences"), student_prefill=_get(args, prefix, "student-prefill"),
        student_scoring=_get(args, prefix, "student-scoring"),
    )


def _lora(rank: int | None, alpha: int | None) -> LoraSettings | None:
    """The LoRA flags as given: None when neither is (stage 2 then trains a model's own adapters, or the defaults)."""
    if rank is None and alpha is None:
        return None
    default = LoraSettings()
    return LoraSettings(r=rank or default.r, alpha=alpha or default.alpha)


def checkpoint_root(args: argparse.Namespace) -> Path:
    """Where a run keeps its checkpoints: ``--checkpoint-dir``, else ``OUT.checkpoints``."""
    return args.checkpoint_dir or beside(args.out, ".checkpoints")


def _checkpoint_dir(args: argparse.Namespace, stage: str) -> Path:
    return checkpoint_root(args) / stage


def check_checkpoints(args: argparse.Namespace, stages: list[str]) -> None:
    """Before any work: a run without --resume never writes over an earlier run's checkpoints, and --resume with
    nothing to resume says so (a mistyped --checkpoint-dir would otherwise start from step 0 unnoticed)."""
    directories = [_checkpoint_dir(args, stage) for stage in stages]
    if not check_start(directories, resume=args.resume) and args.resume:
        _say(args, f"--resume: no checkpoint in {' or '.join(map(str, directories))}; starting from step 0")


# --- handlers ------------------------------------------------------------------------------------
def data(args: argparse.Namespace) -> dict[str, Any]:
    """``rtpurbo data prepare``."""
    tokenizer = load_tokenizer(args.model, args.revision)
    dev = args.pool == "dev"
    user = bool(args.files or args.dataset)
    default_names = [] if user else list(DEFAULT_DEV_SOURCES if dev else DEFAULT_TRAIN_SOURCES)
    names = args.sources.split(",") if args.sources else default_names
    ratio, synthetic_kinds = synthetic_mix(args, dev)
    min_chars = args.min_doc_chars if args.min_doc_chars is not None else (1 if user else 2000)
    settings = PrepareSettings(
        seq_len=args.seq_len, sequences=args.sequences, synthetic_ratio=ratio,
        cross_documents=not (args.no_cross_documents or dev), min_doc_chars=min_chars,
        shard_bytes=int(args.shard_mb * 1e6), pool=args.pool, synthetic_kinds=synthetic_kinds,
    )
    inputs = user_inputs(args, tokenizer, min_chars)
    documents = round_robin_documents(names, args.pool, install=not args.no_install,
                                      extra=[item.documents() for item in inputs])
    manifest = prepare_shards(documents, tokenizer, args.out, settings,
                              provenance={item.name: item.provenance for item in inputs},
                              model=source_record(tokenizer.rtpurbo_source))
    size = sum(s["bytes"] for s in manifest["shards"])
    _say(args, f"wrote {manifest['sequences']} x {args.seq_len} tokens ({manifest['synthetic']['sequences']} "
               f"synthetic) in {len(manifest['shards'])} shard(s), {size / 1e6:.1f} MB, to {args.out}")
    for name, entry in manifest["sources"].items():
        skipped = entry["provenance"].get("skipped")
        _say(args, f"  {name}: {entry['documents']} documents ({entry['duplicates']} duplicates dropped), "
                   f"{entry['tokens']:,} tokens" + (f"; files skipped: {skipped}" if skipped else ""))
    return {"out": str(args.out), "sequences": manifest["sequences"], "bytes": size,
            "sources": {k: {"documents": v["documents"], "tokens": v["tokens"]}
                        for k, v in manifest["sources"].items()}}


def synthetic_mix(args: argparse.Namespace, dev: bool) -> tuple[float, tuple[str, ...]]:
    """(synthetic share, kinds) of ``rtpurbo data prepare``: the flags, else the pool's default (train 0.1,
    dev 0), or the long-range mix (0.3 of :data:`LONG_RANGE_KINDS`)."""
    if args.long_range_mix:
        if dev:
            raise SettingsError("--long-range-mix makes training data; the dev pool holds evaluation windows (drop "
                                "--pool dev)")
        return (0.3 if args.synthetic_ratio is None else args.synthetic_ratio), tuple(LONG_RANGE_KINDS)
    ratio = args.synthetic_ratio if args.synthetic_ratio is not None else (0.0 if dev else 0.1)
    return ratio, tuple(args.synthetic_kinds)


def train_indexer(args: argparse.Namespace) -> dict[str, Any]:
    """``rtpurbo train-indexer``: artifact in, artifact out."""
    check_replaceable(args.out, io.CONFIG_NAME)  # before training, not after
    check_checkpoints(args, ["indexer"])
    model, tokenizer = io.load(args.model, base=args.base)
    runtime = make_runtime(args.device, args.precision)
    settings = indexer_settings(args, "", _checkpoint_dir(args, "indexer"))
    resumed_at = resumed_step(args, settings.loop.checkpoint_dir)
    report = run_stage1(model, load_shards(args.data, tokenizer), settings, runtime,
                        _snapshots(args, model, "", "indexer"))
    if runtime.is_main:
        print_recall(args, report)
    return _finish(args, runtime, model, report, resumed_at)


def distill(args: argparse.Namespace) -> dict[str, Any]:
    """``rtpurbo distill``: artifact in, artifact out."""
    check_replaceable(args.out, io.CONFIG_NAME)  # before training, not after
    check_checkpoints(args, ["distill"])
    model, tokenizer = io.load(args.model, base=args.base)
    runtime = make_runtime(args.device, args.precision)
    settings = distill_settings(args, "", _checkpoint_dir(args, "distill"))
    resumed_at = resumed_step(args, settings.loop.checkpoint_dir)
    report = run_stage2(model, load_shards(args.data, tokenizer), settings, runtime,
                        _snapshots(args, model, "", "distill"))
    if runtime.is_main:
        print_heldout_kl(args, report)
    return _finish(args, runtime, model, report, resumed_at)


def print_heldout_kl(args: argparse.Namespace, report: dict[str, Any]) -> None:
    _say(args, f"held-out KL(teacher || student): {report['heldout_kl_before']:.4f} -> "
               f"{report['heldout_kl_after']:.4f}  ({report['tokens_per_s']:.0f} tokens/s on "
               f"{report['world_size']} process(es))")


def check_training_data(args: argparse.Namespace) -> None:
    """``rtpurbo convert --train`` trains on ``--data``: without it, a :class:`SettingsError` before any work."""
    if args.data is None:
        raise SettingsError("--train needs --data (shards from `rtpurbo data prepare`)")


def check_no_training(args: argparse.Namespace) -> None:
    """``rtpurbo convert`` without ``--train``: its training flags (set to other than their defaults), and ``--data``
    where no profiling takes haystacks from it (``--plan``), would do nothing: a :class:`SettingsError` before any
    work."""
    probe = argparse.ArgumentParser(add_help=False)
    add_convert_train_arguments(probe)
    flags = ", ".join("--" + dest.replace("_", "-") for dest, default in vars(probe.parse_args([])).items()
                      if dest not in ("train", "data") and getattr(args, dest) != default)
    if flags:
        raise SettingsError(f"{flags} set(s) the training that --train runs: add --train, or leave {flags} out")
    if args.plan is not None and args.data is not None:
        raise SettingsError(f"--data {args.data}: with --plan (no profiling to take haystacks from it) it is only "
                            "--train's training data: add --train, or leave --data out")


def train_converted(args: argparse.Namespace, model: torch.nn.Module, tokenizer: Any) -> dict[str, Any]:
    """The ``--train`` part of ``rtpurbo convert``: stage 1 then stage 2 on the converted model, in place.

    Call between conversion and ``io.save``; the stage summaries go into the artifact's history, and the full
    reports (per-step history included) are returned under ``reports`` for :func:`write_reports`.
    """
    check_training_data(args)
    shards = load_shards(args.data, tokenizer)
    distill_shards = load_shards(args.distill_data, tokenizer) if args.distill_data else shards
    check_crop(shards, args.indexer_seq_len)  # both stages' data, before stage 1 runs
    check_crop(distill_shards, args.distill_seq_len)
    runtime = make_runtime(args.device, args.precision)
    stage1 = run_stage1(model, shards, indexer_settings(args, "indexer-", _checkpoint_dir(args, "indexer")), runtime,
                        _snapshots(args, model, "indexer-", "indexer"))
    if runtime.is_main:
        print_recall(args, stage1)
    model.rtpurbo_history = list(getattr(model, "rtpurbo_history", [])) + [summary(stage1)]  # stage 2's snapshots too
    if stage1["stopped_early"]:  # stage 2 starts from finished indexers only: --resume finishes stage 1 first
        _say(args, f"stage 1 stopped early after {stage1['steps_done']} steps (time budget); stage 2 did not run. "
                   "Run the same command with --resume to finish stage 1, then stage 2 runs")
        return {"indexer": summary(stage1), "distill": None, "reports": [stage1]}
    stage2 = run_stage2(model, distill_shards, distill_settings(args, "distill-", _checkpoint_dir(args, "distill")),
                        runtime, _snapshots(args, model, "distill-", "distill"))
    if runtime.is_main:
        print_heldout_kl(args, stage2)
        _say_stopped_early(args, stage2)
    model.rtpurbo_history = model.rtpurbo_history + [summary(stage2)]
    return {"indexer": summary(stage1), "distill": summary(stage2), "reports": [stage1, stage2]}


def _snapshots(args: argparse.Namespace, model: torch.nn.Module, prefix: str, stage: str):
    """With ``--{prefix}keep-checkpoints``: save an artifact of the model at every checkpoint."""
    if not _get(args, prefix, "keep-checkpoints"):
        return None

    def snapshot(step: int) -> None:
        finished = list(getattr(model, "rtpurbo_history", []))
        model.rtpurbo_history = finished + [{"stage": stage, "steps_done": step, "snapshot": True}]  # this stage so far
        try:
            io.save(model, beside(args.out, f".{stage}-step-{step:05d}"))
        finally:
            model.rtpurbo_history = finished

    return snapshot


def _say_stopped_early(args: argparse.Namespace, report: dict[str, Any]) -> None:
    if report["stopped_early"]:
        _say(args, f"{report['stage']} stopped early after {report['steps_done']} of "
                   f"{report['settings']['loop']['steps']} steps (time budget); the model is saved as it stands. Run "
                   "the same command with --resume to finish")


def write_reports(out: Path, reports: list[dict[str, Any]]) -> Path:
    """The stages' full reports beside the artifact ``out``: ``OUT.report.json``."""
    path = beside(out, ".report.json")
    path.write_text(json.dumps(reports, indent=1) + "\n")
    return path


def _finish(args: argparse.Namespace, runtime: Any, model: torch.nn.Module, report: dict[str, Any],
            resumed_at: int) -> dict:
    """Save the trained artifact (its history gaining the stage's entry, :func:`with_entry`) and its report."""
    model.rtpurbo_history = with_entry(getattr(model, "rtpurbo_history", []), report, resumed_at)
    if runtime.is_main:
        _say_stopped_early(args, report)
        io.save(model, args.out)
        write_reports(args.out, [report])
        _say(args, f"saved {args.out}")
    runtime.accelerator.wait_for_everyone()
    return {"out": str(args.out), "reports": [summary(report)]}


def with_entry(history: list[dict[str, Any]], report: dict[str, Any], resumed_at: int) -> list[dict[str, Any]]:
    """``history`` with the stage ``report`` appended, unless the run trained no step of its own (``resumed_at``,
    the step its checkpoint held, is where it ended) and ``history`` holds that run already: a finished run resumed
    into its own earlier output. A run is its stage, steps done and checkpoint directory."""
    entry = summary(report)
    if report["steps_done"] == resumed_at and any(run_of(held) == run_of(entry) for held in history):
        return list(history)
    return list(history) + [entry]


def resumed_step(args: argparse.Namespace, directory: Path) -> int:
    """The step a run starts from: with ``--resume``, that of the checkpoint in ``directory``; else 0."""
    if not (args.resume and has_checkpoint(directory)):
        return 0
    return checkpoint_state(directory)["step"]


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """A stage report without its per-step history (what goes into the artifact)."""
    history = report["history"]
    return {**{k: v for k, v in report.items() if k != "history"},
            "final": history[-1] if history else None}


def print_recall(args: argparse.Namespace, report: dict[str, Any]) -> None:
    before, after = report["before"], report["after"]
    _say(args, f"{'head':>10} {'recall before':>14} {'after':>7} {'budget before':>14} {'after':>7}")
    for head, b in before["heads"].items():
        a = after["heads"][head]
        _say(args, f"{head:>10} {b['recall']:>14.3f} {a['recall']:>7.3f} {b['budget']:>14.0f} {a['budget']:>7.0f}")
    _say(args, f"{'mean':>10} {before['mean_recall']:>14.3f} {after['mean_recall']:>7.3f} "
               f"{before['mean_budget']:>14.0f} {after['mean_budget']:>7.0f}   (context {after['context']} tokens)")


def user_inputs(args: argparse.Namespace, tokenizer: Any, min_chars: int) -> list[UserInput]:
    """Each ``--files`` pattern and each ``--dataset`` (one input each), records read with ``--text-field``."""
    record_text = RecordText(chat_renderer(tokenizer, args.model), args.text_field)
    inputs = [file_input(pattern, record_text, min_chars) for pattern in args.files or []]
    return inputs + [dataset_input(spec, record_text) for spec in args.dataset or []]


def load_tokenizer(spec: str, revision: str | None = None) -> Any:
    """The tokenizer of a model spec (at ``revision``) or of an artifact's base model, without loading weights."""
    if io.artifact_path(spec) is not None:
        spec, revision = io.base_spec(spec)
    return load_model_tokenizer(spec, revision)
