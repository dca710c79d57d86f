"""Issue #4 on the GPU: SmolLM2, W=1024, S=4, 15% retrieval heads, 8K sequences, stages 1 and 2.

    python3 scripts/train_gpu.py --model M.gguf --data TRAIN_SHARDS --dev DEV_SHARDS --plan head_plan.json --out DIR
    torchrun --nproc_per_node 2 scripts/train_gpu.py ... --stage2-only --no-eval --no-save --out DIR

Writes to DIR: ``results.json`` (perplexity of dense / converted / after stage 1 / after stage 2,
stage summaries, timings), ``indexer_report.json`` and ``distill_report.json`` (per-step
history), and ``artifact/`` (plan + indexers + adapters). Perplexity is measured on dev-pool
windows in two modes: ``prefill`` (retrieval heads dense, as the paper prefills) and ``topp``
(every retrieval-head query uses the indexer's top-p selection, as at decode).
Each stage has a time budget so the whole run fits one device call.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo copy is not pip-installed there

from rtpurbo import io  # noqa: E402
from rtpurbo.config import HeadPlan, SparseConfig  # noqa: E402
from rtpurbo.convert import convert  # noqa: E402
from rtpurbo.eval.perplexity import perplexity  # noqa: E402
from rtpurbo.models import load_base  # noqa: E402
from rtpurbo.train.commands import summary  # noqa: E402
from rtpurbo.train.data import load_shards  # noqa: E402
from rtpurbo.train.loop import LoopSettings, make_runtime  # noqa: E402
from rtpurbo.train.plot import plot_training  # noqa: E402
from rtpurbo.train.stage1_indexer import IndexerSettings, train_indexer  # noqa: E402
from rtpurbo.convert import prefill_mode  # noqa: E402
from rtpurbo.train.stage2_distill import DistillSettings, distill  # noqa: E402
from rtpurbo.train.teacher import original_attention  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="SmolLM2 GGUF file (or HF directory)")
    p.add_argument("--data", required=True, type=Path, help="training shards")
    p.add_argument("--dev", type=Path, help="dev-pool shards for perplexity")
    p.add_argument("--plan", type=Path, help="head_plan.json (rtpurbo profile --window 1024)")
    p.add_argument("--from-artifact", type=Path,
                   help="start from a saved artifact (its plan, config and indexers) instead of --plan, "
                        "e.g. stage 2 ablations from one stage-1 result (implies --stage2-only)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--window", type=int, default=1024)
    p.add_argument("--sinks", type=int, default=4)
    p.add_argument("--impl", default="sdpa",
                   help="attention backend while training and evaluating (sdpa: no compilation, the autograd path "
                        "the CPU tests cover; auto = compiled flex on CUDA); the artifact is saved with impl=auto")
    p.add_argument("--indexer-steps", type=int, default=600)
    p.add_argument("--indexer-batch-size", type=int, default=2)
    p.add_argument("--indexer-time-budget", type=float, default=100.0, help="seconds")
    p.add_argument("--distill-steps", type=int, default=600)
    p.add_argument("--distill-batch-size", type=int, default=1)
    p.add_argument("--distill-time-budget", type=float, default=240.0, help="seconds")
    p.add_argument("--trainable", default="lora", choices=["lora", "attention", "all"])
    p.add_argument("--no-gradient-checkpointing", action="store_true")
    p.add_argument("--eval-windows", type=int, default=4)
    p.add_argument("--seq-len", type=int, help="crop training and eval sequences (CPU smoke runs)")
    p.add_argument("--checkpoint-dir", type=Path, default=Path("/tmp/rtpurbo-checkpoints"))
    p.add_argument("--stage2-only", action="store_true", help="skip stage 1 (scaling runs)")
    p.add_argument("--no-eval", action="store_true", help="skip perplexity")
    p.add_argument("--no-save", action="store_true", help="do not write the artifact")
    p.add_argument("--save-stage1", action="store_true", help="also save the stage-1 model (artifact-stage1/)")
    return p.parse_args()


def eval_ppl(model, windows: list[list[int]], mode: str, runtime) -> dict:
    """Perplexity under bf16 autocast in ``mode``: dense (original model), prefill or topp."""
    started = time.perf_counter()
    with runtime.accelerator.autocast():
        if mode == "dense":
            with original_attention(model):
                result = perplexity(model, windows, progress=False)
        elif mode == "topp":
            with prefill_mode(model, "topp"):
                result = perplexity(model, windows, progress=False)
        else:
            result = perplexity(model, windows, progress=False)
    row = {"overall": result.perplexity, "by_position": result.bucket_perplexity(),
           "seconds": round(time.perf_counter() - started, 1)}
    print(f"  ppl {mode:8s} {row['overall']:.3f}  {row['by_position']}  ({row['seconds']} s)", flush=True)
    return row


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    runtime = make_runtime("auto")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.from_artifact is not None:
        args.stage2_only = True
        model, tokenizer = io.load(args.from_artifact, base=args.model, dtype=torch.float32, device=runtime.device)
        model.rtpurbo_sparse.impl = args.impl
        plan = model.rtpurbo_plan
    elif args.plan is not None:
        model, tokenizer = load_base(args.model, dtype=torch.float32, device=runtime.device)
        plan = HeadPlan.from_dict(json.loads(args.plan.read_text()))
        convert(model, plan, SparseConfig(window=args.window, sinks=args.sinks, impl=args.impl))
    else:
        raise SystemExit("give --plan or --from-artifact")
    shards = load_shards(args.data, tokenizer)
    _log(runtime, f"loaded model + {len(shards.sequences)} x {shards.seq_len} training tokens in "
                  f"{time.perf_counter() - started:.0f} s on {runtime.world} x {runtime.device}")
    evaluate = not args.no_eval and runtime.is_main and args.dev is not None
    windows = dev_windows(args.dev, tokenizer, args.eval_windows, args.seq_len) if evaluate else []
    results: dict = {"plan_retrieval_kv_heads": plan.num_retrieval(), "world_size": runtime.world, "ppl": {}}
    if evaluate:
        _log(runtime, "perplexity before training:")
        results["ppl"]["dense"] = eval_ppl(model, windows, "dense", runtime)
        results["ppl"]["converted_prefill"] = eval_ppl(model, windows, "prefill", runtime)
        results["ppl"]["converted_topp"] = eval_ppl(model, windows, "topp", runtime)
    if not args.stage2_only:
        results["indexer"] = run_stage1(model, shards, args, runtime)
        if args.save_stage1 and runtime.is_main:
            save_artifact(model, args.out / "artifact-stage1")
        if evaluate:
            results["ppl"]["stage1_topp"] = eval_ppl(model, windows, "topp", runtime)
    results["distill"] = run_stage2(model, shards, args, runtime)
    if evaluate:
        results["ppl"]["stage2_prefill"] = eval_ppl(model, windows, "prefill", runtime)
        results["ppl"]["stage2_topp"] = eval_ppl(model, windows, "topp", runtime)
    if runtime.is_main:
        if not args.no_save:
            results["artifact_bytes"] = save_artifact(model, args.out / "artifact")
        results["seconds_total"] = round(time.perf_counter() - started, 1)
        if torch.cuda.is_available():
            results["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
        (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        reports = {k: json.loads((args.out / f"{k}_report.json").read_text())
                   for k in ("indexer", "distill") if (args.out / f"{k}_report.json").is_file()}
        plot_training(reports, args.out / "training_curves.png", title=f"{args.model}, W={args.window}, S={args.sinks}")
        print(json.dumps({k: v for k, v in results.items() if k not in ("indexer", "distill")}))


def save_artifact(model, path: Path) -> int:
    """Save with ``impl=auto`` (the backend training used is restored after); returns the bytes written."""
    impl = model.rtpurbo_sparse.impl
    model.rtpurbo_sparse.impl = "auto"
    try:
        io.save(model, path)
    finally:
        model.rtpurbo_sparse.impl = impl
    return sum(f.stat().st_size for f in path.iterdir())


def dev_windows(path: Path, tokenizer, count: int, length: int | None) -> list[list[int]]:
    """``count`` dev-pool windows spread over the shard rows (cropped to ``length``)."""
    rows = load_shards(path, tokenizer, pool="dev").sequences[:, :length]
    picks = torch.linspace(0, len(rows) - 1, min(count, len(rows))).round().long()
    return [rows[i].tolist() for i in picks]


def run_stage1(model, shards, args, runtime) -> dict:
    loop = LoopSettings(steps=args.indexer_steps, batch_size=args.indexer_batch_size, lr=1e-3, seq_len=args.seq_len,
                        checkpoint_dir=args.checkpoint_dir / "indexer", time_budget=args.indexer_time_budget)
    report = train_indexer(model, shards, IndexerSettings(loop=loop), runtime)
    _write(args.out / "indexer_report.json", report, runtime)
    b, a = report["before"], report["after"]
    _log(runtime, f"stage 1: {report['steps_done']} steps in {report['seconds']} s "
                  f"({report['tokens_per_s']:.0f} tok/s); "
                  f"recall {b['mean_recall']:.3f} -> {a['mean_recall']:.3f}, budget {b['mean_budget']:.0f} -> "
                  f"{a['mean_budget']:.0f}, KL {b['mean_kl']:.3f} -> {a['mean_kl']:.3f}")
    return summary(report)


def run_stage2(model, shards, args, runtime) -> dict:
    loop = LoopSettings(steps=args.distill_steps, batch_size=args.distill_batch_size, lr=None, seq_len=args.seq_len,
                        checkpoint_dir=args.checkpoint_dir / "distill", time_budget=args.distill_time_budget)
    settings = DistillSettings(loop=loop, trainable=args.trainable,
                               gradient_checkpointing=not args.no_gradient_checkpointing)
    report = distill(model, shards, settings, runtime)
    _write(args.out / "distill_report.json", report, runtime)
    _log(runtime, f"stage 2: {report['steps_done']} steps in {report['seconds']} s "
                  f"({report['tokens_per_s']:.0f} tok/s on {report['world_size']} x {runtime.device.type}); "
                  f"held-out KL {report['heldout_kl_before']:.4f} -> {report['heldout_kl_after']:.4f}")
    return summary(report)


def _log(runtime, message: str) -> None:
    if runtime.is_main:
        print(message, flush=True)


def _write(path: Path, report: dict, runtime) -> None:
    if runtime.is_main:
        path.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
