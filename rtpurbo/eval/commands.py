"""``rtpurbo eval``: perplexity by position and RULER-style tasks for dense, StreamingLLM-style,
training-free split and trained rows, with KV bytes and speed, into one results directory.

    rtpurbo eval --quick                                   # SmolLM2 on CPU, minutes
    rtpurbo eval --lengths 2048 4096 8192 --samples 100 --out runs/eval-full
    rtpurbo eval --prepare-only --lengths 2048 4096 8192 --samples 100 --out runs/eval-full   # data only
    rtpurbo eval --data runs/eval-full/eval_data.npz --plan head_plan.json ...            # no corpora needed
    rtpurbo eval --model ARTIFACT --rows dense --ppl-data runs/my-dev   # perplexity on your text (data prepare --pool dev)
    rtpurbo eval --rows dense --plans copy=a.json knockout=b.json ...      # more split rows, paired vs dense
    rtpurbo eval --prepare-only --split tune --lengths 4096 8192 --samples 4 --out runs/tune  # plan search data
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import transformers

from .. import __version__, io
from ..cli_args import (RecordGiven, SettingsError, add_model, add_profile, add_sparse, check_index_dim, count_value,
                        given_flags, path_value, positive_int, sparse_from_args, top_p_value)
from ..commands import device_dtype, say
from ..config import PREFILL_SCORINGS, RETRIEVAL_PREFILL, HeadPlan, dumps
from ..convert import convert
from ..families import geometry
from ..files import NotAnEarlierOutput, check_output
from ..models import load_base, load_config, load_tokenizer
from ..pipeline import ProfileSettings, plan_summary, read_plan, run_profile
from .domain import with_user_windows
from .report import merge_runs, rebuild_report, write_report
from .scoring import DECODE_MODES
from ..data.task_data import TaskData, load_task_data, save_task_data
from ..data.tasks import TASKS, TaskCorpus, load_dev_corpus
from .suite import BASE_ROWS, Row, SuiteSettings, base_rows, build_data, run_suite

QUICK = {"lengths": [1024, 2048], "samples": 1, "ppl_windows": 1, "ppl_length": 4096, "speed_repeats": 2,
         "speed_steps": 8}
FULL = {"samples": 100, "ppl_windows": 12, "speed_repeats": 5, "speed_steps": 32}
MAX_PPL_LENGTH = 32768


def add_parsers(subparsers: Any) -> None:
    """Add the ``eval`` subcommand to the ``rtpurbo`` parser's subparsers."""
    p = subparsers.add_parser("eval", help="perplexity + long-context tasks, dense vs sparse rows, into one report",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model(p, artifact_ok=True)
    add_sparse(p)
    add_profile(p)
    p.add_argument("--out", type=path_value, default=Path("runs/eval"),
                   help="results directory (resumes what is there)")
    p.add_argument("--quick", action="store_true",
                   help=f"small CPU run: lengths {QUICK['lengths']}, {QUICK['samples']} sample per task, "
                        f"{QUICK['ppl_windows']} perplexity window of {QUICK['ppl_length']}")
    p.add_argument("--lengths", type=positive_int, nargs="+", help="task lengths in tokens (default 1K, 2K, 4K, ... "
                                                                "up to the model's positions)")
    p.add_argument("--samples", type=positive_int, help=f"samples per task and length (default {FULL['samples']})")
    p.add_argument("--tasks", nargs="+", choices=TASKS, metavar="TASK",
                   help=f"tasks to run (default: all): {', '.join(TASKS)}")
    p.add_argument("--rows", nargs="*", choices=BASE_ROWS, default=list(BASE_ROWS), action=RecordGiven,
                   help="base-model rows (none: only the --artifacts rows)")
    p.add_argument("--artifacts", nargs="*", default=[], metavar="NAME=PATH",
                   help="trained stages (artifact dirs); NAME=PATH@TOP_P evaluates one at another top-p, "
                        "NAME=PATH@KEY=VALUE,... with other sparse settings (keys: " + ", ".join(ROW_SETTINGS) + "; "
                        "e.g. sp=ART@retrieval_prefill=sparse,prefill_top_p=0.9)")
    p.add_argument("--plan", type=path_value, help="head plan of the split row (head_plan.json or config.json with "
                                                   "headwise_config); default: profile now")
    p.add_argument("--ppl-windows", type=int, help=f"perplexity windows (default {FULL['ppl_windows']}, 0 = none)")
    p.add_argument("--ppl-data", type=path_value, metavar="DIR",
                   help="perplexity by position on your text: dev shards from `rtpurbo data prepare --pool dev "
                        "--files ...` (all their windows unless --ppl-windows); perplexity only unless --tasks or "
                        "--speed-repeats ask for more")
    p.add_argument("--ppl-length", type=positive_int, help="tokens per perplexity window (default: model positions, "
                                                        f"at most {MAX_PPL_LENGTH})")
    p.add_argument("--batch-size", type=positive_int, help="samples per batch (default 1 on CPU, 8 on GPU)")
    p.add_argument("--prefill-chunk", type=positive_int, help="prefill prompts in chunks of this many tokens")
    p.add_argument("--decode", choices=("auto",) + DECODE_MODES, default="auto",
                   help="answer decode steps: graph (static cache, one CUDA graph per batch; much faster for small "
                        "models on a GPU), eager, or auto (graph on CUDA, eager elsewhere)")
    p.add_argument("--speed-repeats", type=int, help="timed prefill repeats per row (0 = no timing)")
    p.add_argument("--data", type=path_value, help="eval data written by an earlier run (OUT/eval_data.npz): "
                                                   "no corpus needed")
    p.add_argument("--prepare-only", action="store_true", help="write OUT/eval_data.npz and stop (tokenizer only)")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite the report from OUT/rows/*.json (e.g. rows computed by separate runs)")
    p.add_argument("--merge", nargs="+", type=path_value, metavar="RUN_DIR",
                   help="with --report-only: first gather the rows of these results directories into OUT "
                        "(e.g. one run per row and length on several GPUs)")
    p.add_argument("--no-chat-template", action="store_true", help="plain-text prompts even if a template exists")
    p.add_argument("--plans", nargs="*", default=[], metavar="NAME=PLAN",
                   help="more training-free split rows, each with its own plan (head_plan.json, or a "
                        "headwise_config file whose swa_token_num sets the row's W)")
    p.add_argument("--split", choices=["eval", "tune"], default="eval",
                   help="eval: the reported samples and perplexity windows; tune: other seeds and documents, for "
                        "profiling and plan search")
    p.add_argument("--corpus", type=path_value,
                   help="build task samples from this corpus file (--save-corpus) instead of the installed dev pool; "
                        "perplexity windows then come from --data")
    p.add_argument("--save-corpus", type=path_value,
                   help="with --prepare-only: also write the task corpus to this file (gzipped JSON, a few MB) for "
                        "machines without the sources")
    p.add_argument("--first-sample", type=count_value, default=0,
                   help="index of the first sample of every task and length that this run builds (with "
                        "--prepare-only, or a run without --data; e.g. 100 to add samples 100.. to an earlier "
                        "100-sample file; evaluate them separately, then --merge)")
    p.add_argument("--workers", type=positive_int, default=1, help="processes that build task samples")
    p.add_argument("--reference", metavar="ROW",
                   help="the row every other row is paired against (default dense; e.g. an artifact row with dense "
                        "retrieval prefill against the same artifact with sparse prefill); with --report-only it "
                        "re-pairs stored rows")
    p.add_argument("--ci-target", type=float, default=0.5, action=RecordGiven,
                   help="half-width (points) the report projects the samples per task for (paired differences vs the "
                        "reference row)")
    p.set_defaults(handler=run)
    FLAG_DEFAULTS.clear()  # what a run given no flag holds: --report-only refuses any flag set away from it
    FLAG_DEFAULTS.update((name, value) for name, value in vars(p.parse_args([])).items() if name != "handler")


FLAG_DEFAULTS: dict[str, Any] = {}  # every eval flag's default (dest -> value), filled by add_parsers


# --- resolving the run --------------------------------------------------------------------------------
ROW_SETTINGS = ("top_p", "retrieval_prefill", "prefill_top_p", "prefill_min_blocks", "prefill_max_blocks",
                "prefill_band", "prefill_dense_tail", "prefill_scoring", "window",
                "sinks")  # what an artifact row may set after "@"


def _row_value(key: str, value: str) -> Any:
    if key in ("top_p", "prefill_top_p"):
        return top_p_value(value)
    if key == "retrieval_prefill":
        if value not in RETRIEVAL_PREFILL:
            raise ValueError(f"retrieval_prefill must be one of {RETRIEVAL_PREFILL}, got {value!r}")
        return value
    if key == "prefill_scoring":
        if value not in PREFILL_SCORINGS:
            raise ValueError(f"prefill_scoring must be one of {PREFILL_SCORINGS}, got {value!r}")
        return value
    number = int(value)
    least = 1 if key == "window" else 0
    if number < least:
        raise ValueError(f"{key} must be >= {least}, got {number}")
    return number


def _artifact_row(item: str) -> tuple[str, Path, dict[str, Any]]:
    """``NAME=PATH`` or ``NAME=PATH@SETTINGS``: the artifact with some sparse settings changed.

    SETTINGS is a comma-separated list of ``KEY=VALUE`` (keys :data:`ROW_SETTINGS`), or a bare
    top-p: ``s2=runs/a@0.95``, ``sp=runs/a@retrieval_prefill=sparse,prefill_top_p=0.9``.
    """
    name, sep, path = item.partition("=")
    if not sep or not name or not path or name in BASE_ROWS:
        raise SettingsError(f"--artifacts takes NAME=PATH[@SETTINGS] with a name other than {BASE_ROWS}, got {item!r}")
    settings: dict[str, Any] = {}
    if "@" in path:
        path, _, text = path.rpartition("@")
        for part in text.split(","):
            key, eq, value = part.partition("=")
            key, value = (key.strip(), value.strip()) if eq else ("top_p", key.strip())
            if key not in ROW_SETTINGS:
                raise SettingsError(f"--artifacts {item!r}: unknown setting {key!r}; choose from {ROW_SETTINGS}")
            try:
                settings[key] = _row_value(key, value)
            except (argparse.ArgumentTypeError, ValueError) as err:
                raise SettingsError(f"--artifacts {item!r}: {err}") from err
    return name, path_value(path), settings


def _base_spec(args: argparse.Namespace) -> tuple[str, str | None, list[tuple[str, Path, dict[str, Any]]]]:
    """(base model spec, its revision, artifact rows): an artifact ``--model`` adds itself as a row."""
    artifacts = [_artifact_row(item) for item in args.artifacts]
    own = io.artifact_path(args.model)
    if own is not None:
        artifacts.insert(0, (own.resolve().name, own, {}))
        return *io.base_spec(args.model, args.base, args.revision), artifacts
    return args.model, args.revision, artifacts


EVAL_MARKERS = ("rows", "results.json", "eval_data.npz")  # what only an earlier eval output holds


def check_eval_out(out: Path) -> None:
    """Before any work: ``--out`` is missing, empty or an earlier eval output, which eval resumes into (it holds
    :data:`EVAL_MARKERS` or a config.json eval wrote); else :class:`NotAnEarlierOutput`. A folder with another
    config.json (a model's, an export's) is refused, since eval writes its own run config there."""
    config = Path(out) / "config.json"
    if config.is_file():
        try:
            ours = {"rows", "settings"} <= set(json.loads(config.read_text()))
        except (ValueError, TypeError):  # not JSON, or not an object
            ours = False
        if not ours:
            raise NotAnEarlierOutput(f"{out} holds a config.json that rtpurbo eval did not write (a model's?); eval "
                                     "writes its run config there: name a new or empty --out")
        return
    check_output(out, *EVAL_MARKERS)


def _max_positions(config: Any) -> int:
    """The longest context of a model's transformers ``config`` (8192 where it does not say)."""
    return int(getattr(config, "max_position_embeddings", 8192))


def settings_from(args: argparse.Namespace, max_positions: int, device: str, data: TaskData | None = None
                  ) -> SuiteSettings:
    """Flags, else what ``--data`` holds, else --quick values, else full-suite defaults."""
    mode = dict(QUICK if args.quick else FULL)
    if data is not None:
        held = Counter((s.task, s.length) for s in data.samples)
        tasks = args.tasks or [t for t in TASKS if any(task == t for task, _ in held)]
        mode.update(lengths=sorted({length for _, length in held}),
                    samples=min(n for (t, _), n in held.items() if t in tasks), tasks=tasks)
    lengths = args.lengths or mode.get("lengths") or [1024 * 2**i for i in range(8) if 1024 * 2**i <= max_positions]
    too_long = [n for n in lengths if n > max_positions]
    if too_long:
        raise SettingsError(f"--lengths {too_long} exceed the model's {max_positions} positions")
    ppl_length = args.ppl_length or mode.get("ppl_length") or min(max_positions, MAX_PPL_LENGTH)
    return SuiteSettings(
        lengths=sorted(lengths), samples=args.samples or mode["samples"],
        tasks=args.tasks or mode.get("tasks", list(TASKS)),
        ppl_windows=mode["ppl_windows"] if args.ppl_windows is None else args.ppl_windows,
        ppl_length=min(ppl_length, max_positions), batch_size=args.batch_size or (8 if device == "cuda" else 1),
        prefill_chunk=args.prefill_chunk, speed_length=max(lengths),
        decode=args.decode if args.decode != "auto" else ("graph" if device == "cuda" else "eager"),
        speed_repeats=mode["speed_repeats"] if args.speed_repeats is None else args.speed_repeats,
        speed_warmup=1 if device == "cpu" else 2, speed_steps=mode["speed_steps"], chat=not args.no_chat_template,
        split=args.split, workers=args.workers, first_sample=args.first_sample,
    )


PROFILING = ("retrieval_ratio", "profile_length", "profile_samples")  # the split row's profile, where no --plan


def check_split_flags(args: argparse.Namespace) -> None:
    """Before any work: --plan and the profiling flags set the split row only, and --plan replaces that profiling;
    given where they would do nothing, they are a :class:`SettingsError`."""
    profiling = given_flags(args, *PROFILING)
    split_flags = ", ".join(flag for flag in ("--plan" if args.plan is not None else "", profiling) if flag)
    if split_flags and "split" not in args.rows:
        raise SettingsError(f"{split_flags} set(s) the split row, which --rows {' '.join(args.rows) or '(none)'} "
                            f"leaves out: add split to --rows, or leave {split_flags} out")
    if args.plan is not None and profiling:
        raise SettingsError(f"{profiling} set(s) the split row's profiling that --plan {args.plan} replaces: leave "
                            f"{profiling} out, or --plan to profile now")


ROW_FLAGS = ("rows", "plan", "plans", "artifacts") + PROFILING  # which rows the run computes
REPORT_READS = ("out", "report_only", "merge", "reference", "json")  # all that --report-only reads
MODE_UNUSED = {  # what --prepare-only never reads: given with it, a flag would do nothing
    "prepare_only": ("which only writes OUT/eval_data.npz", ROW_FLAGS + (
        "reference", "ci_target", "data", "ppl_data", "batch_size", "prefill_chunk", "speed_repeats")),
}
RECORDED = PROFILING + ("rows", "ci_target")  # given where args.given says so (they have defaults); others: set


def _is_set(value: Any) -> bool:
    """A flag without a default was given: a value, a list with items, or a store_true flag on (0 counts)."""
    return value is not None and value is not False and value != []


def check_mode_flags(args: argparse.Namespace) -> None:
    """Before any work: --report-only reads only :data:`REPORT_READS` and --prepare-only only some flags
    (:data:`MODE_UNUSED`); another one given with them is a :class:`SettingsError`, not ignored."""
    given = set(getattr(args, "given", ()))
    if args.report_only:  # it reads REPORT_READS only: any other flag set away from its default does nothing
        flags = ", ".join("--" + name.replace("_", "-") for name, default in FLAG_DEFAULTS.items()
                          if name not in REPORT_READS and (name in given or getattr(args, name, default) != default))
        if flags:
            raise SettingsError(f"{flags} do(es) nothing with --report-only, which only rewrites the report from "
                                f"OUT/rows: leave {flags} out")
        return
    for mode, (what, unused) in MODE_UNUSED.items():
        if not getattr(args, mode):
            continue
        flags = ", ".join("--" + name.replace("_", "-") for name in unused
                          if (name in given if name in RECORDED else _is_set(getattr(args, name))))
        if flags:
            raise SettingsError(f"{flags} do(es) nothing with --{mode.replace('_', '-')}, {what}: leave {flags} out")
    if args.save_corpus is not None and not args.prepare_only:
        raise SettingsError("--save-corpus writes the corpus that --prepare-only builds its data from: add "
                            "--prepare-only, or leave --save-corpus out")
    if args.first_sample and args.data is not None:
        raise SettingsError(f"--first-sample numbers the samples a run builds, and --data {args.data} brings its own: "
                            "leave one of them out")


def _split_plan(args: argparse.Namespace, model: torch.nn.Module, tokenizer: Any, out: Path) -> tuple[HeadPlan, dict]:
    """The training-free split: ``--plan`` or a fresh profile (written to OUT/profile)."""
    if args.plan is not None:
        return read_plan(args.plan, model.config)
    settings = ProfileSettings(window=args.window, sinks=args.sinks, retrieval_ratio=args.retrieval_ratio,
                               profile_length=args.profile_length, profile_samples=args.profile_samples)
    say(args, f"profiling heads for the split row ({settings.profile_samples} prompts x 3 kinds, "
               f"{settings.profile_length} tokens); pass --plan to skip")
    return run_profile(model, tokenizer, settings, out / "profile")[1], {}


# --- the handler --------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    """``rtpurbo eval``: returns the results JSON object (also written to OUT/results.json)."""
    started = time.time()
    if args.reorder_heads:
        raise SettingsError("--reorder-heads: eval switches plans in place and cannot reorder heads")
    out: Path = args.out
    if args.merge and not args.report_only:
        raise SettingsError("--merge goes with --report-only")
    check_mode_flags(args)
    check_split_flags(args)
    check_eval_out(out)
    if args.report_only:
        try:
            if args.merge:
                out.mkdir(parents=True, exist_ok=True)
                merge_runs(out, args.merge)
            result = rebuild_report(out, BASE_ROWS, reference=args.reference)
        except (FileNotFoundError, ValueError) as err:
            raise SettingsError(f"--report-only: {err}") from err
        say(args, (out / "results.md").read_text())
        return result
    spec, revision, artifacts = _base_spec(args)  # a malformed --artifacts is refused before OUT is made
    plans = _plan_rows(args)
    check_reference(args, [name for name in BASE_ROWS if name in args.rows] + [name for name, _ in plans]
                    + [name for name, _, _ in artifacts])
    out.mkdir(parents=True, exist_ok=True)
    device, dtype = device_dtype(args)
    base_config = load_config(spec, revision)  # read once (a GGUF's takes seconds): lengths and --index-dim
    max_positions = _max_positions(base_config)
    if args.prepare_only:
        corpus = TaskCorpus.load(args.corpus) if args.corpus else load_dev_corpus()
        if args.save_corpus:
            corpus.save(args.save_corpus)
        data = build_data(load_tokenizer(spec, revision), settings_from(args, max_positions, device), corpus,
                          progress=not args.json)
        save_task_data(data, out / "eval_data.npz")
        say(args, f"wrote {out / 'eval_data.npz'} ({len(data.samples)} samples, {len(data.windows)} windows)")
        return {"data": str(out / "eval_data.npz"), "samples": len(data.samples), "windows": len(data.windows)}
    check_index_dim(args.index_dim, geometry(base_config)[3])  # before the weights and the data load
    model, tokenizer = load_base(spec, dtype=dtype, device=device, revision=revision)
    data = load_task_data(args.data, tokenizer) if args.data else None
    settings = settings_from(args, max_positions, device, None if args.corpus else data)
    if args.ppl_data is not None:
        data, settings = with_user_windows(args, tokenizer, settings, data, max_positions, progress=not args.json)
    if data is None or args.corpus:
        corpus = TaskCorpus.load(args.corpus) if args.corpus else None
        data = build_data(tokenizer, settings, corpus, progress=not args.json,
                          windows=data.windows if data is not None else None)
        save_task_data(data, out / "eval_data.npz")
    data.windows = data.windows[: settings.ppl_windows]  # --ppl-windows 0 skips perplexity with any --data
    for length in settings.lengths:  # too few samples is an error now, not after perplexity and speed ran
        for task in settings.tasks:
            data.group(task, length, settings.samples)
    rows, sparse_overrides = _rows(args, model, tokenizer, out, plans, artifacts)
    dense = HeadPlan.uniform(*geometry(model.config)[:3], retrieval=True)
    convert(model, dense, sparse_from_args(args, **sparse_overrides))
    config = _config(args, spec, device, dtype, settings, rows, data.meta)
    (out / "config.json").write_text(dumps(config))
    say(args, f"rows: {', '.join(r.name for r in rows)}; lengths {settings.lengths}; {settings.samples} samples "
               f"x {len(settings.tasks)} tasks; results in {out}")
    stored = run_suite(model, tokenizer, rows, data, settings, out,
                       lambda path: io.load(path, base=spec, base_revision=revision, dtype=dtype, device=device,
                                            merge_adapters=True),
                       progress=not args.json)
    config["wall_seconds"] = round(time.time() - started, 1)
    result = write_report(out, stored, config)
    say(args, (out / "results.md").read_text())
    return result


def _plan_rows(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """(name, plan path) of each ``--plans NAME=PATH``; a malformed one is a :class:`SettingsError`."""
    rows = []
    for item in args.plans:
        name, _, path = item.partition("=")
        if not name or not path or name in BASE_ROWS:
            raise SettingsError(f"--plans takes NAME=PATH with a name other than {BASE_ROWS}, got {item!r}")
        rows.append((name, path_value(path)))
    return rows


def check_reference(args: argparse.Namespace, names: list[str]) -> None:
    """Before any model loads: ``--reference`` names one of the run's rows (``names``: the --rows, --plans and
    --artifacts names, an artifact --model's own first), else a :class:`SettingsError`."""
    if args.reference is not None and args.reference not in names:
        raise SettingsError(f"--reference {args.reference!r} is not one of this run's rows: "
                            f"{', '.join(names) or '(none)'}")


def _rows(args: argparse.Namespace, model: torch.nn.Module, tokenizer: Any, out: Path, plans: list[tuple[str, Path]],
          artifacts: list[tuple[str, Path, dict[str, Any]]]) -> tuple[list[Row], dict]:
    """Base rows (profiling the split if needed), the --plans split rows, then the artifact rows."""
    overrides: dict = {}
    split = None
    if "split" in args.rows:
        split, overrides = _split_plan(args, model, tokenizer, out)
        say(args, f"split plan: {plan_summary(split)['retrieval_kv_heads']} retrieval KV heads")
    rows = base_rows(list(args.rows), split, args.top_p, geometry(model.config)[:3])
    for name, path in plans:
        plan, found = read_plan(path, model.config)
        rows.append(Row(name, "split", plan, args.top_p, window=found.get("window"), sinks=found.get("sinks")))
    return rows + [Row(name, "artifact", top_p=settings.get("top_p"), artifact=io.artifact_path(path) or path,
                       settings=settings)
                   for name, path, settings in artifacts], overrides


def _config(args: argparse.Namespace, spec: str, device: str, dtype: torch.dtype, settings: SuiteSettings,
            rows: list[Row], meta: dict) -> dict[str, Any]:
    """The resolved configuration written beside the results."""
    flags = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "handler"}
    return {
        "model": spec, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "dtype": str(dtype).replace("torch.", ""), "settings": asdict(settings), "flags": flags,
        "ci_target": args.ci_target, "reference": args.reference or "dense",
        "rows": [{"name": r.name, "kind": r.kind, "top_p": r.top_p, "window": r.window, "sinks": r.sinks,
                  "settings": r.settings, "artifact": str(r.artifact) if r.artifact else None,
                  "plan": plan_summary(r.plan) if r.plan else None} for r in rows],
        "chat_template": meta.get("chat_template"), "data": {k: v for k, v in meta.items() if k != "probe"},
        "data_file": str(args.data or args.out / "eval_data.npz"),
        "versions": {"rtpurbo": __version__, "torch": torch.__version__, "transformers": transformers.__version__},
        "command": " ".join(sys.argv),
    }
