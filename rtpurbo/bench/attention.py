"""Attention-layer benchmark: the head-wise sparse layer against dense SDPA (cuDNN and flash).

One attention layer of a model geometry (``n_q`` query heads, ``n_kv`` KV heads, head dim 128,
bf16, batch 1). ``R = max(1, round(0.15 * n_kv))`` KV heads are retrieval heads, the others
local heads (window ``W``, ``S`` sinks); heads are role-contiguous (retrieval first), the
layout :class:`rtpurbo.modules.SparseAttention` uses when roles are contiguous.

* Prefill of ``L`` tokens (:mod:`.attention_prefill`): both roles through ``ops.api.attention(impl="flex")`` plus
  the head merge, against one SDPA call with only the cuDNN, resp. flash, backend enabled. Ideal speedup = dense
  FLOPs / sparse FLOPs.
* Decode of one token after ``L`` (:mod:`.attention_decode`): the sparse step in one CUDA graph (local heads on a
  side stream overlapping the retrieval heads' top-p selection and attention; also both in one launch), against
  SDPA over every head's ``L`` keys. Ideal speedup = dense bytes / sparse bytes.

The geometries, the work counts (FLOPs, bytes) and the timing (CUDA events, ``triton.testing.do_bench`` medians,
L2 flushed) are in :mod:`.attention_common`. Here: the flags (:func:`add_arguments`), the run over every point
(:func:`run`: one JSON line per point, then the tables, then one JSON line) and the report.

Scripts frozen under ``benchmarks/results/`` import helpers from this module: those names are re-exported here
(``__all__``).
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from ..cli_args import SettingsError, count_float, count_value, positive_int
from ..ops import flex
from ..ops.triton import topp as triton_topp
from .attention_common import DENSE_BACKENDS, GEOMETRIES, Geometry
from .attention_decode import decode_point
from .attention_prefill import prefill_point, profile_prefill
from .flags import comma_list, one_of, tokens
from .provenance import provenance

# re-exported: scripts frozen under benchmarks/results/ import these from here
from ..ops.semantics import local_pairs
from .attention_common import INDEX_DIM, _randn, time_ms
from .attention_prefill import _merged_layer, _model_layout

__all__ = ["add_arguments", "budget", "environment", "main", "run", "table",  # the CLI, tests and benchmarks/*.py
           "INDEX_DIM", "_merged_layer", "_model_layout", "_randn", "local_pairs", "time_ms"]  # re-exported, see above


def environment() -> dict:
    """The GPU, CUDA / cuDNN, the window kernel, how the selecting decode chain launches (search schedule, PDL), and
    :func:`.provenance.provenance` (date, command line, rtpurbo checkout, library versions)."""
    props = torch.cuda.get_device_properties(0)
    return dict(device=props.name, sms=props.multi_processor_count, cuda=torch.version.cuda,
                cudnn=torch.backends.cudnn.version(), window_kernel=flex.window_kernel(),
                sparse_prefill_kernel=flex.sparse_prefill_kernel(), **triton_topp.launch_settings(), **provenance())


def _fmt(x, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def table(rows: list[dict]) -> str:
    """Human-readable tables of prefill and decode rows."""
    lines = ["PREFILL (ms; TFLOP/s; speedups vs dense SDPA; ideal = FLOP ratio)",
             f"{'model':<15}{'L':>9}{'sparse':>10}{'local':>9}{'cuDNN':>10}{'flash':>10}{'x cuDNN':>9}{'x flash':>9}"
             f"{'ideal':>8}{'%ideal':>8}{'TF/s sp':>9}{'TF/s lo':>9}{'TF/s cu':>9}{'TF/s fl':>9}"]
    for r in (r for r in rows if r["phase"] == "prefill" and "error" not in r):
        lines.append(f"{r['geometry']:<15}{r['L']:>9}{_fmt(r['sparse_ms']):>10}{_fmt(r['local_ms']):>9}"
                     f"{_fmt(r.get('cudnn_ms')):>10}{_fmt(r.get('flash_ms')):>10}{_fmt(r['speedup_vs_cudnn']):>9}"
                     f"{_fmt(r['speedup_vs_flash']):>9}{_fmt(r['ideal_speedup']):>8}{_fmt(r['pct_of_ideal_vs_cudnn'], '.0f'):>8}"
                     f"{_fmt(r['sparse_tflops'], '.0f'):>9}{_fmt(r.get('local_tflops'), '.0f'):>9}"
                     f"{_fmt(r['cudnn_tflops'], '.0f'):>9}{_fmt(r['flash_tflops'], '.0f'):>9}")
    lines += ["", "DECODE, batch 1 (us per layer step, CUDA graphs; GB/s; ideal = bytes ratio; %ideal vs the faster dense)",
              f"{'model':<15}{'L':>9}{'budget':>8}{'selected':>10}{'sparse':>9}{'serial':>8}{'local':>8}{'retr':>8}{'r all':>8}"
              f"{'sp all':>8}{'sel thr':>8}{'sel srt':>8}{'pass MB':>8}{'cuDNN':>9}"
              f"{'flash':>9}{'x cuDNN':>9}{'x flash':>9}{'ideal':>8}{'%ideal':>8}{'GB/s sp':>9}{'GB/s cu':>9}{'GB/s fl':>9}"]
    for r in (r for r in rows if r["phase"] == "decode" and "error" not in r):
        lines.append(f"{r['geometry']:<15}{r['L']:>9}{str(r['budget']):>8}{r['selected']:>10.0f}{_fmt(r['sparse_us'], '.1f'):>9}"
                     f"{_fmt(r.get('sparse_serial_us'), '.1f'):>8}{_fmt(r['local_us'], '.1f'):>8}{_fmt(r['retrieval_us'], '.1f'):>8}"
                     f"{_fmt(r.get('retrieval_all_us'), '.1f'):>8}{_fmt(r.get('sparse_all_us'), '.1f'):>8}"
                     f"{_fmt(r.get('select_threshold_us'), '.1f'):>8}{_fmt(r.get('select_sort_us'), '.1f'):>8}"
                     f"{_fmt(r.get('select_pass_bytes', 0) / 1e6, '.1f'):>8}"
                     f"{_fmt(r.get('cudnn_us'), '.1f'):>9}"
                     f"{_fmt(r.get('flash_us'), '.1f'):>9}{_fmt(r['speedup_vs_cudnn']):>9}{_fmt(r['speedup_vs_flash']):>9}"
                     f"{_fmt(r['ideal_speedup']):>8}{_fmt(r['pct_of_ideal_vs_best_dense'], '.0f'):>8}"
                     f"{_fmt(r['sparse_gbps'], '.0f'):>9}{_fmt(r['cudnn_gbps'], '.0f'):>9}{_fmt(r['flash_gbps'], '.0f'):>9}")
    one = [r for r in rows if r["phase"] == "decode" and "error" not in r and "sparse_one_us" in r]
    if one:
        lines += ["", "DECODE STEP, both kinds of heads in one launch vs two launches on two streams (us per layer step; "
                      "%ideal: share of the bytes ceiling at the faster dense backend's rate)",
                  f"{'model':<15}{'L':>9}{'budget':>8}{'select 2':>10}{'select 1':>10}{'%ideal':>8}{'all 2':>9}"
                  f"{'all 1':>9}{'%ideal':>8}{'x dense':>9}{'err sel':>10}{'err all':>10}"]
        for r in one:
            err = r.get("one_launch_rel_err", {})
            lines.append(f"{r['geometry']:<15}{r['L']:>9}{str(r['budget']):>8}{_fmt(r['sparse_us'], '.1f'):>10}"
                         f"{_fmt(r['sparse_one_us'], '.1f'):>10}{_fmt(r.get('sparse_one_pct_of_ideal'), '.0f'):>8}"
                         f"{_fmt(r.get('sparse_all_us'), '.1f'):>9}{_fmt(r['sparse_all_one_us'], '.1f'):>9}"
                         f"{_fmt(r.get('sparse_all_one_pct_of_ideal'), '.0f'):>8}"
                         f"{_fmt(r.get('sparse_all_one_speedup_vs_best_dense')):>9}"
                         f"{_fmt(err.get('select'), '.1e'):>10}{_fmt(err.get('all'), '.1e'):>10}")
    sparse_rows = [r for r in rows if r["phase"] == "prefill" and "error" not in r and any("_b" in k for k in r)]
    if sparse_rows:
        lines += ["", "PREFILL with sparse retrieval heads (ms; kept = chosen / visible key blocks; x vs dense SDPA)"]
        for r in sparse_rows:
            for key in sorted(k for k in r if k.startswith("sparse_b") and k.endswith("_ms") and "retrieval" not in k):
                variant = key[len("sparse_b"):-len("_ms")]  # budget, then _kernel unless flex
                budget, _, kernel = variant.partition("_")
                ms = r[key]
                vs = "  ".join(f"x {name} {r[f'{name}_ms'] / ms:.2f}" for name in DENSE_BACKENDS if r.get(f"{name}_ms"))
                lines.append(f"{r['geometry']:<15}{r['L']:>9}  max {budget:>5} blocks, {kernel or 'flex':<6}: {ms:9.2f} "
                             f"ms (retrieval {r[f'sparse_b{variant}_retrieval_ms']:.2f}), kept "
                             f"{r[f'sparse_b{variant}_kept']:.1%}  {vs}")
    for r in (r for r in rows if r["phase"] == "prefill-profile" and "error" not in r):
        lines += ["", f"PREFILL PROFILE {r['geometry']} L={r['L']}: {r['wall_ms_per_step']:.2f} ms wall per layer, "
                      f"{r['device_ms_per_step']:.2f} ms of kernels ({r['busy_fraction']:.1%} busy), "
                      f"{r['kernels_per_step']:.0f} kernels, {r['ops_per_step']:.0f} aten ops"]
        lines += [f"  {t['name'][:70]:<72}{t['calls_per_step']:>6.1f}{t['self_device_us_per_step'] or 0:>12.0f} us"
                  for t in r["top"][:8]]
    notes = [f"  {r['phase']} {r['geometry']} L={r['L']} {r.get('budget', '')} {k}: {v}"
             for r in rows for k, v in r.items() if k.endswith("_note") or k in ("error", "spot_rel_err")]
    return "\n".join(lines + (["", "notes:"] + notes if notes else []))


def budget(value: str) -> str | int:
    """A decode budget: 'top-p' or a token count (2048, 2K)."""
    if value == "top-p":
        return value
    try:
        return tokens(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"a budget is top-p or a token count like 2048 or 2K, got {value!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's flags (shared by ``benchmarks/attention_bench.py`` and ``rtpurbo bench attention``)."""
    lengths = comma_list(tokens, allow_empty=True)  # --prefill "" or --decode "": that half not at all
    parser.add_argument("--geometries", type=comma_list(one_of(list(GEOMETRIES))), default=",".join(GEOMETRIES),
                        help="comma-separated: " + ", ".join(GEOMETRIES))
    parser.add_argument("--prefill", type=lengths, default=[8192, 32768, 131072, 524288, 1048576],
                        help="prefill lengths, comma-separated (8192 or 8K); \"\" for none")
    parser.add_argument("--decode", type=lengths, default=[32768, 131072, 524288, 1048576],
                        help="decode context lengths, comma-separated (32768 or 32K); \"\" for none")
    parser.add_argument("--budgets", type=comma_list(budget), default="top-p,2048,8192",
                        help="decode budgets, comma-separated: top-p and/or fixed token counts (2048 or 2K)")
    parser.add_argument("--index-scale", type=float, default=1.0,
                        help="decode: scale of the random indexer keys. 1: indexer scores ~ N(0, 16), peaked like trained "
                             "indexers (top-p 0.9 keeps ~0.1-1 %% of 1M keys); 0.01: nearly flat, like untrained "
                             "indexers on random weights (top-p keeps most keys)")
    parser.add_argument("--window", type=tokens, default=8192)
    parser.add_argument("--sinks", type=count_value, default=4)
    parser.add_argument("--deadline-s", type=count_float, default=1e9, help="start no dense point that would end later")
    parser.add_argument("--prefill-blocks", type=comma_list(positive_int), default=[], help="also time the layer with its retrieval "
                        "heads on a sparse prefill keeping at most this many key blocks of 128 per query block")
    parser.add_argument("--sparse-prefill-kernels", type=comma_list(one_of(flex.SPARSE_PREFILL_KERNELS)), default=None,
                        help="with --prefill-blocks: time the retrieval heads' sparse prefill on each of these "
                             f"kernels, comma-separated ({', '.join(flex.SPARSE_PREFILL_KERNELS)}; default: the "
                             "current choice, RTPURBO_SPARSE_PREFILL_KERNEL, else auto)")
    parser.add_argument("--profile-prefill", type=lengths, default=[], help="also profile the sparse prefill layer at "
                        "these lengths (torch.profiler: wall vs device-busy time, kernels, top operators)")
    parser.add_argument("--window-kernel", choices=flex.WINDOW_KERNELS, default=None, help="local heads' plain "
                        "prefill kernel: rtpurbo's Triton kernel or cuDNN's band + sinks merge (default: "
                        "RTPURBO_WINDOW_KERNEL, else triton)")
    parser.add_argument("--json", dest="json_path", default=None,
                        help="also write all rows here (rewritten after every point)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser)
    run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> dict:
    """Every point of ``args``: one JSON line per point while running, then the tables, then one JSON line.

    Returns {"environment": ..., "rows": [...]}.
    """
    if not (args.prefill or args.decode or args.profile_prefill):
        raise SettingsError("nothing to time (--prefill and --decode are both empty)")
    deadline = time.time() + args.deadline_s
    if args.window_kernel:
        flex.set_window_kernel(args.window_kernel)
    geoms = [GEOMETRIES[name] for name in args.geometries]
    budgets = args.budgets
    env = environment()
    print(json.dumps(env), flush=True)
    rows: list[dict] = []

    def record(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.json_path:
            with open(args.json_path, "w") as f:
                json.dump(dict(environment=env, rows=rows), f, indent=1)

    def attempt(phase: str, geom: Geometry, length: int, point, *point_args) -> None:
        try:
            record(point(geom, length, args.window, args.sinks, *point_args))
        except Exception as err:  # one broken point must not lose the others
            record(dict(phase=phase, geometry=geom.name, L=length, error=f"{type(err).__name__}: {str(err)[:300]}"))
        torch.cuda.empty_cache()

    torch.manual_seed(0)
    for length in args.prefill:
        for geom in geoms:
            attempt("prefill", geom, length, prefill_point, deadline, length == max(args.prefill),
                    tuple(args.prefill_blocks), tuple(args.sparse_prefill_kernels or ()))
    for length in args.profile_prefill:
        for geom in geoms:
            attempt("prefill-profile", geom, length, profile_prefill)
    for geom in geoms:
        for length in args.decode:
            for budget in budgets:
                spot = length == max(args.decode) and budget == budgets[0]
                attempt("decode", geom, length, decode_point, budget, deadline, spot, args.index_scale)
    print(table(rows))
    print(json.dumps(dict(environment=env, rows=rows)))
    return dict(environment=env, rows=rows)
