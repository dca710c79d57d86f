"""``rtpurbo plan search`` and ``rtpurbo plan compare``: choose the plan instead of guessing the ratio.

    rtpurbo plan search --data tune/eval_data.npz --scores profile/head_scores.json --tolerance 0.5 --out runs/plan
    rtpurbo plan search --data tune/eval_data.npz --criterion knockout --out runs/plan      # profile first
    rtpurbo plan compare --scores copy/head_scores.json knockout/head_scores.json --out runs/compare
    rtpurbo convert --plan runs/plan/headwise_config.json --out runs/artifact               # the chosen W comes along

Tune data: ``rtpurbo eval --prepare-only --split tune --lengths 4096 8192 --samples 4 --ppl-windows 8``.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from ..cli_args import add_model, count_value, path_value, positive_int, ratio_value
from ..commands import device_dtype, say
from ..config import HeadPlan, dumps
from ..data.task_data import check_tune_split, load_task_data
from ..files import check_replaceable, written_whole
from ..models import load_base
from .compare import COMPARE_MARKER, read_scores, write_comparison
from .plot import pareto_plot
from .search import SearchSettings, pareto_front, search_plans

SEARCH_MARKER = "search.json"  # what marks a directory as an earlier search


def add_parsers(subparsers: Any) -> None:
    """Add ``plan search`` and ``plan compare`` to the ``rtpurbo`` subparsers."""
    plan = subparsers.add_parser("plan", help="plan search (ratio x window within a tolerance) and ranking comparison")
    sub = plan.add_subparsers(dest="plan_command", required=True)
    d = SearchSettings()
    p = sub.add_parser("search", help="sweep retrieval ratio x W on tune data; the cheapest plan within --tolerance",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model(p)
    p.add_argument("--data", type=path_value, required=True,
                   help="tune-split task data (rtpurbo eval --prepare-only --split tune): samples and windows")
    p.add_argument("--scores", type=path_value, help="head ranking: head_scores.json, a head_plan.json with scores, "
                                                     "or an artifact (default: profile now with --criterion)")
    p.add_argument("--score", help="with a head_scores.json: rank by this KV-head score instead of its ranking "
                                   "(knockout: text_kl, answer_kl, answer_nll; copy: copy, needle_mass, "
                                   "long_range_mass)")
    p.add_argument("--criterion", choices=["copy", "knockout"], default="knockout",
                   help="ranking to compute without --scores (knockout runs on --data; copy needs the training-pool "
                        "haystack sources)")
    p.add_argument("--profile-window", type=positive_int, default=1024, help="W of the knockout profile")
    p.add_argument("--ratios", type=ratio_value, nargs="+", default=d.ratios, help=f"default {d.ratios}")
    p.add_argument("--windows", type=positive_int, nargs="+", default=d.windows, help=f"default {d.windows}")
    p.add_argument("--sinks", type=count_value, default=d.sinks)
    p.add_argument("--tolerance", type=float, default=d.tolerance,
                   help="points of task-average teacher-forced accuracy a plan may lose against dense (default 0.5)")
    p.add_argument("--ppl-tolerance", type=float, help="percent of perplexity a plan may add (default: no limit)")
    p.add_argument("--cost-context", type=positive_int, help="context of the KV bytes ranked on (default: the "
                                                             "longest task length)")
    p.add_argument("--samples", type=positive_int, help="samples per task and length (default: all in --data)")
    p.add_argument("--batch-size", type=positive_int, help="samples per forward (default 1 on CPU, 8 on GPU)")
    p.add_argument("--out", type=path_value, required=True,
                   help="directory for search.json/.md, pareto.png, the chosen head_plan.json and headwise_config.json")
    p.set_defaults(handler=search)

    p = sub.add_parser("compare", help="two head rankings: rank correlation, overlap, scatter plot, both plans")
    p.add_argument("--scores", nargs=2, type=path_value, required=True, metavar="SCORES",
                   help="two rankings (head_scores.json, head_plan.json with scores, or artifacts)")
    p.add_argument("--names", nargs=2, help="names of the two rankings (default: their criteria)")
    p.add_argument("--ratio", type=ratio_value, default=0.15, help="ratio of the written plans (default 0.15)")
    p.add_argument("--ratios", type=ratio_value, nargs="+", default=[0.10, 0.15, 0.20, 0.25],
                   help="ratios of the overlap table")
    p.add_argument("--out", type=path_value, required=True)
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    p.set_defaults(handler=compare)


def _ranking(args: argparse.Namespace, model: Any, tokenizer: Any, data: Any, out: Path) -> dict[str, Any]:
    """The ranking to sweep: ``--scores``, or a fresh profile written to OUT/profile."""
    if args.scores:
        return read_scores(args.scores, args.score)
    from ..pipeline import ProfileSettings, run_profile, write_profile
    from ..profile.knockout import inputs_from_task_data, knockout_profile
    from ..profile.run import plan_from_scores

    settings = ProfileSettings(window=args.profile_window, sinks=args.sinks, criterion=args.criterion,
                               knockout_data=args.data)
    if args.criterion == "knockout":
        inputs = inputs_from_task_data(data, settings.knockout_samples, settings.knockout_windows)
        scores = knockout_profile(model, inputs, args.profile_window, args.sinks, progress=not args.json)
        write_profile(out / "profile", scores, plan_from_scores(scores, 0.15), settings)
    else:
        scores = run_profile(model, tokenizer, settings, out / "profile", progress=not args.json)[0]
    return {"criterion": scores.criterion, "ranking": scores.ranking.tolist(), "num_q_heads": scores.num_q_heads}


def search(args: argparse.Namespace) -> dict[str, Any]:
    """``rtpurbo plan search``: returns the search result (also OUT/search.json). OUT is written whole
    (:func:`rtpurbo.files.written_whole`): a failed or interrupted run leaves an earlier search there as it was."""
    check_replaceable(args.out, SEARCH_MARKER)  # before profiling and the sweep, not after
    device, dtype = device_dtype(args)
    model, tokenizer = load_base(args.model, dtype=dtype, device=device, revision=args.revision)
    data = load_task_data(args.data, tokenizer)
    check_tune_split(data, args.data)
    settings = SearchSettings(ratios=args.ratios, windows=args.windows, sinks=args.sinks, tolerance=args.tolerance,
                              ppl_tolerance=args.ppl_tolerance, cost_context=args.cost_context, samples=args.samples,
                              batch_size=args.batch_size or (8 if device == "cuda" else 1))
    with written_whole(args.out, SEARCH_MARKER) as tmp:
        _keep_scores_inside(args.scores, args.out, tmp)
        ranking = _ranking(args, model, tokenizer, data, tmp)
        result = search_plans(model, ranking["ranking"], data, settings, progress=not args.json)
        result.update(criterion=ranking["criterion"], model=args.model,
                      scores=str(args.scores or args.out / "profile" / "head_scores.json"))
        write_search(tmp, result)
    best = result["rows"][result["chosen"]]
    verdict = "within" if result["within_tolerance"] else "NOT within (closest shown)"
    say(args, (args.out / "search.md").read_text())
    say(args, f"chosen: {100 * best['ratio']:g}% retrieval ({best['retrieval_kv_heads']} KV heads), W {best['window']}:"
               f" {best['tf_points']:+.2f} TF points, {best['kv_bytes_per_token']:,.0f} KV bytes/token "
               f"({verdict} the {args.tolerance:g}-point tolerance); rtpurbo convert --plan "
               f"{args.out / 'headwise_config.json'} ...")
    return {k: v for k, v in result.items() if k != "rows"} | {"chosen_row": _public(best)}


def _keep_scores_inside(scores: Path | None, out: Path, tmp: Path) -> None:
    """Copy into the new output ``tmp`` what of the earlier output ``out`` ``--scores`` lies in (e.g. OUT/profile,
    when a search runs again on the ranking an earlier one profiled): ``out`` is replaced whole, and the result
    names ``--scores`` as where its ranking came from."""
    if scores is None:
        return
    scores, out = Path(scores).resolve(), Path(out).resolve()
    if out not in scores.parents:
        return
    top = out / scores.relative_to(out).parts[0]  # the file or folder directly in OUT that holds it
    if top.is_dir():
        shutil.copytree(top, tmp / top.name, symlinks=True)
    else:
        shutil.copy2(top, tmp / top.name)


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "plan"}


def write_search(out: Path, result: dict[str, Any]) -> None:
    """search.json, search.md, pareto.png, and the chosen plan as head_plan.json + headwise_config.json."""
    best = result["rows"][result["chosen"]]
    plan = HeadPlan.from_dict(best["plan"])
    (out / "search.json").write_text(dumps(result))
    (out / "head_plan.json").write_text(dumps(plan.to_dict()))
    (out / "headwise_config.json").write_text(json.dumps(plan.to_headwise_config(result["settings"]["sinks"],
                                                                                best["window"])) + "\n")
    (out / "search.md").write_text(search_markdown(result))
    pareto_plot(result, out / "pareto.png",
                title=f"plan search ({result['criterion']} ranking): {result['samples']} tune samples, "
                      f"{result['windows']} windows; tolerance {result['settings']['tolerance']:g} points")


def search_markdown(result: dict[str, Any]) -> str:
    rows, chosen, front = result["rows"], result["chosen"], set(pareto_front(result["rows"]))
    lines = [f"# Plan search ({result['criterion']} ranking)", "",
             f"{result['samples']} tune samples, {result['windows']} perplexity windows; costs at "
             f"{result['cost_context']} tokens; tolerance {result['settings']['tolerance']:g} points of task-average "
             "teacher-forced accuracy (paired vs dense, 95% CI)"
             + (f", perplexity +{result['settings']['ppl_tolerance']:g}%" if result['settings']['ppl_tolerance']
                is not None else "") + ".", "",
             "| ratio | W | KV heads | KV B/token | KV ratio | prefill x | decode x | Δ TF points (95% CI) | "
             "Δ log-prob | Δ ppl | |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows):
        mark = "**chosen**" if i == chosen else ("Pareto" if i in front else "")
        ppl = "–" if r["ppl_percent"] is None else f"{r['ppl_percent']:+.2f}%"
        lines.append(f"| {100 * r['ratio']:g}% | {r['window']} | {r['retrieval_kv_heads']} | "
                     f"{r['kv_bytes_per_token']:,.0f} | {r['kv_ratio']:.2f} | {r['prefill_speedup']:.2f} | "
                     f"{r['decode_speedup']:.2f} | {r['tf_points']:+.2f} ({r['tf_lo']:+.2f} – {r['tf_hi']:+.2f}) | "
                     f"{r['logprob']:+.4f} | {ppl} | {mark} |")
    lines += ["", "Speedups are modelled (FLOPs for prefill, bytes read for decode; rtpurbo.plan.cost), not timed."]
    if not result["within_tolerance"]:
        lines += ["", "No plan is within the tolerance: the chosen one is the most faithful."]
    return "\n".join(lines) + "\n"


def compare(args: argparse.Namespace) -> dict[str, Any]:
    """``rtpurbo plan compare``: OUT is written whole (:func:`write_comparison`)."""
    check_replaceable(args.out, COMPARE_MARKER)  # before reading the rankings
    a, b = (read_scores(path) for path in args.scores)
    result = write_comparison(args.out, a, b, args.ratios, args.ratio, tuple(args.names) if args.names else None)
    say(args, (args.out / "compare.md").read_text())
    return result
