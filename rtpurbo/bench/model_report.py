"""What the end-to-end model benchmark (:mod:`rtpurbo.bench.end_to_end`) writes: JSON lines as
measurements come, the environment, the resolved configuration with the notes a reader needs,
dense / sparse ratios, and the Markdown report.

Rows are dicts with ``variant``, ``length``, ``status`` and, when ``status == "ok"``, the
measurements (``ttft_ms``, ``decode_ms_per_token``, ``decode_tokens_per_s``, ``peak_gib``,
``kv_bytes``, ``tokens``, ...).
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from statistics import NormalDist
from typing import Any

import torch
import torch.nn as nn

from ..config import HeadPlan
from ..memory import human_bytes
from ..ops import flex
from ..ops.triton import topp as triton_topp
from ..ops.api import resolve_impl
from .decode_profile import markdown_lines as profile_lines
from .provenance import footer, provenance
from .settings import TINY, TINY_MOE, ModelBenchSettings

GIB = 2**30


class JsonLines:
    """One JSON object per line, appended and flushed at once: what was measured survives a crash, and so do
    earlier runs written to the same file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self._file = path, open(path, "a")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def __enter__(self) -> "JsonLines":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._file.close()


def report_path(out: Path) -> Path:
    """Where the Markdown report of a run written to ``out`` goes: ``x.jsonl`` -> ``x.md``, any other name gets
    ``.md`` appended (``llama-3.1-8b_eager`` -> ``llama-3.1-8b_eager.md``, ``x.md`` -> ``x.md.md``): never ``out``
    itself, and names with dots do not collide."""
    return out.with_suffix(".md") if out.suffix == ".jsonl" else out.with_name(out.name + ".md")


def environment(device: torch.device) -> dict[str, Any]:
    """Device, library versions, date, command line and rtpurbo checkout (:func:`.provenance.provenance`)."""
    env: dict[str, Any] = {"device": "cpu", **provenance()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(device=props.name, gpu_memory_gib=round(props.total_memory / GIB, 1), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(), window_kernel=flex.window_kernel(),
                   sparse_prefill_kernel=flex.sparse_prefill_kernel())
        if triton_topp.available():  # the selecting decode chain: search schedule, programmatic dependent launch
            env.update(triton_topp.launch_settings())
    return env


def describe(settings: ModelBenchSettings, plan: HeadPlan, dense_sdpa: dict[str, str], model: nn.Module,
             device: torch.device) -> dict[str, Any]:
    """The resolved configuration, with the notes a reader needs to interpret the numbers."""
    geo = settings.geometry
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    retrieval = plan.num_retrieval()
    attention = resolve_impl("auto", device)
    notes = [
        f"{geo.name} attention geometry ({geo.q_heads} q / {geo.kv_heads} KV heads, head dim {geo.head_dim}, "
        f"hidden {geo.hidden}, MLP {geo.intermediate}, vocab {geo.vocab}), {settings.layers} of its "
        f"{geo.full_layers} layers (fewer layers to save memory: per-token times and KV bytes grow about "
        "linearly with layers); random weights, " + settings.dtype + ", batch 1",
        f"dense: transformers SDPA (prefill: {dense_sdpa['prefill']}, decode: {dense_sdpa['decode']}) + DynamicCache "
        "(K/V concatenated on every decode step)",
        f"sparse: {retrieval} of {plan.num_layers * plan.num_kv_heads} KV heads retrieval "
        f"({100 * plan.retrieval_fraction():.1f} %), W = {settings.window}, S = {settings.sinks}, top-p "
        f"{settings.top_p} with {_indexers(settings)}; {_threshold_note(settings)}; attention impl {attention}; "
        f"{_decode_path(device, attention)}; HeadwiseCache with retrieval slots reserved up front"
        + (f"; budgets (max_tokens) {settings.budgets}" if settings.budgets else "")
        + (f"; sparse-prefill{{N}}: retrieval heads prefill over at most N key blocks of 128 per query block, N in "
           f"{settings.prefill_blocks} (top-p {settings.prefill_top_p} over the indexer's block scores, plus the sink "
           "block and the local band; random weights score blocks almost flat, so N sets what is kept: the Amdahl "
           "table gives the kept share)" if settings.prefill_blocks else "")
        + (_graph_note(device) if settings.cuda_graph else ""),
        *([_dense_graph_note(device, attention)] if settings.cuda_graph else []),
        _selection_note(settings),
        "TTFT = prefill of L tokens (dense: one shot"
        + (f"; rtpurbo variants: chunks of {settings.prefill_chunk}" if settings.prefill_chunk else "; every variant one shot")
        + (f"; decoder MLPs of every variant on at most {settings.mlp_chunk} tokens at a time, the same output"
           if settings.mlp_chunk else "")
        + f") + argmax; decode = {settings.decode_steps} greedy steps after "
        f"{settings.decode_warmup} warm-up steps; every point (decode-only ones too) the median of {settings.repeats} "
        f"run(s) after {settings.warmup} warm-up run(s); weights {weights / GIB:.2f} GiB (in every peak)",
    ]
    return {"model": f"{geo.name}, {settings.layers}/{geo.full_layers} layers", "settings": asdict(settings),
            "plan": {"retrieval_kv_heads": retrieval, "by_layer": [len(h) for h in plan.retrieval]},
            "sparse_configs": {name: c.to_dict() for name, c in settings.sparse_configs().items()},
            "dense_sdpa": dense_sdpa, "weights_bytes": weights, "notes": notes}


def _threshold_note(settings: ModelBenchSettings) -> str:
    """From how many cached tokens the retrieval heads select (below: every key, no selection)."""
    if settings.seqlen_threshold == 0:
        tiny = (" (--tiny's default, so that a CPU run exercises the selection)"
                if settings.geometry in (TINY, TINY_MOE) else "")
        return f"seqlen threshold 0: retrieval heads select at every length{tiny}"
    return (f"retrieval heads select from {human_tokens(settings.seqlen_threshold)} cached tokens on (--seqlen-threshold;"
            " below it they attend to every key)")


def _decode_path(device: torch.device, attention: str) -> str:
    """What a converted model's decode step runs on ``device``, as :class:`rtpurbo.cache.HeadwiseCache` picks it."""
    if device.type == "cuda" and triton_topp.available():
        without = ("both kinds of heads in one Triton launch (two_role_decode)" if attention == "flex"
                   else f"{attention} attention")
        return f"decode: steps that select through Triton top-p kernels, steps without selection {without}"
    return (f"decode: eager PyTorch, steps that select through the reference top-p implementation, local heads and "
            f"steps without selection through {attention} attention")


def _graph_note(device: torch.device) -> str:
    if device.type == "cuda":
        return ("; decode: static-shape cache, one step replayed from a CUDA graph (--cuda-graph; timed runs only, "
                "not the OOM search or decode profile)")
    return ("; decode with --cuda-graph on the CPU: static-shape cache stepped eagerly by GraphedDecoder's CPU "
            "stand-in (no graph is captured: the code path, not its speed)")


def _dense_graph_note(device: torch.device, attention: str) -> str:
    head = ("dense-graph: the same weights converted with every KV head a retrieval head at top-p 1 (full attention, "
            "the dense model's function), decoding through the static-shape HeadwiseCache")
    if device.type == "cuda":
        return (head + " and rtpurbo's GQA split-K Triton kernel from a CUDA graph: dense with its launch overhead "
                "removed (transformers' StaticCache is not that baseline: its decode mask makes SDPA repeat K/V)")
    return head + f", eagerly on the CPU ({attention} attention over every key; no CUDA graph, no Triton kernel)"


def gaussian_topp_fraction(sigma: float, top_p: float) -> float:
    """Fraction of keys that top-p keeps when their scores are N(0, sigma^2) logits (many keys).

    Under softmax the mass above a threshold ``t`` is ``1 - Phi((t - sigma^2) / sigma)``; setting it to
    ``top_p`` gives the kept fraction ``1 - Phi(t / sigma) = Phi(Phi^-1(top_p) - sigma)``.
    """
    if top_p >= 1.0:
        return 1.0
    normal = NormalDist()
    return normal.cdf(normal.inv_cdf(top_p) - sigma)


def _indexers(settings: ModelBenchSettings) -> str:
    """How the indexers score, for the 'sparse' note."""
    sigma = settings.index_logit_std
    if sigma is None:
        return "untrained indexers"
    kept = 100 * gaussian_topp_fraction(sigma, settings.top_p)
    return (f"indexers scaled so decode scores have std {sigma:g} logits (trained-like; top-p {settings.top_p} keeps "
            f"about {kept:.1f} % of Gaussian scores)")


def _selection_note(settings: ModelBenchSettings) -> str:
    """What the retrieval heads' decode selection keeps, and why."""
    if settings.index_logit_std is None:
        return ("untrained indexers on random weights score keys almost uniformly, so top-p keeps most of them "
                "(column 'selected keys/head', sinks and recent tokens included); --max-tokens adds budgeted variants")
    return (f"--index-logit-std {settings.index_logit_std:g}: after each conversion every retrieval head's indexer "
            "query weights are scaled so its queries (on a short random prompt) have that mean L2 norm; against the "
            "N(0, I) indexer keys of random-filled caches (decode-only points) the scores then have that std, so "
            "top-p keeps few keys (column 'selected keys/head' and the decode-only table, sinks and recent tokens "
            "included); after a real prefill the keys are the model's own and the spread differs; --max-tokens adds "
            "budgeted variants")


def human_tokens(n: int) -> str:
    """32768 -> '32K', 1048576 -> '1M', 1000 -> '1000'."""
    for unit, size in (("M", 2**20), ("K", 2**10)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def compare(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per length and sparse variant, dense / sparse ratios (above 1 = sparse better) and token agreement.

    ``tokens_match_dense``: share of the greedy tokens (first token + decoded ones) equal to the
    dense model's at the same position. ``decode_speedup_vs_dense_graph``: against the graphed
    dense variant, where it ran.
    """
    ok = {(r["variant"], r["length"]): r for r in rows if r.get("status") == "ok"}
    out = []
    for (variant, length), sparse in sorted(ok.items(), key=lambda item: (item[0][1], item[0][0])):
        dense = ok.get(("dense", length))
        if variant == "dense" or dense is None:
            continue
        pairs = list(zip(dense["tokens"], sparse["tokens"]))
        graphed = ok.get(("dense-graph", length))
        if variant == "dense-flash":
            continue
        out.append({
            "length": length, "variant": variant,
            "ttft_speedup": _ratio(dense["ttft_ms"], sparse["ttft_ms"]),
            "decode_speedup": _ratio(dense["decode_ms_per_token"], sparse["decode_ms_per_token"]),
            "decode_speedup_vs_dense_graph": None if graphed is None or variant == "dense-graph" else
            _ratio(graphed["decode_ms_per_token"], sparse["decode_ms_per_token"]),
            "kv_ratio": _ratio(dense["kv_bytes"], sparse["kv_bytes"]),
            "peak_ratio": _ratio(dense.get("peak_gib"), sparse.get("peak_gib")),
            "tokens_match_dense": sum(a == b for a, b in pairs) / len(pairs) if pairs else None,
            **_amdahl(sparse, dense, ""), **_amdahl(sparse, ok.get(("dense-flash", length)), "_vs_flash"),
        })
    return out


def _amdahl(sparse: dict[str, Any], dense: dict[str, Any] | None, suffix: str) -> dict[str, Any]:
    """TTFT speedup against ``dense``, its Amdahl ceiling and the fraction of it reached.

    Ceiling = T / (T - A + A / r): the dense TTFT ``T`` with its measured attention time ``A``
    divided by the attention FLOP ratio ``r`` of the sparse variant, everything else unchanged.
    """
    if dense is None or sparse.get("attention_flop_ratio") is None or dense.get("attention_ms") is None:
        return {}
    total, attention, ratio = dense["ttft_ms"], min(dense["attention_ms"], dense["ttft_ms"]), sparse["attention_flop_ratio"]
    speedup = total / sparse["ttft_ms"]
    ceiling = total / (total - attention + attention / ratio)
    return {f"ttft_speedup{suffix}": speedup, f"ttft_ceiling{suffix}": ceiling, f"ttft_of_ceiling{suffix}": speedup / ceiling,
            f"attention_share{suffix}": attention / total}


def _num(x: float | None, spec: str, unit: str = "") -> str:
    return "-" if x is None else format(x, spec) + unit


def _status(row: dict[str, Any]) -> str:
    return "ok" if row.get("status") == "ok" else f"{row.get('status')}: {row.get('error', '')}".rstrip(": ")


def markdown(result: dict[str, Any]) -> str:
    """The human-readable report: header, measurements, ratios, OOM search."""
    env, config = result["environment"], result["config"]
    lines = [f"# rtpurbo bench model: {config['model']}", ""] + [f"- {note}" for note in config["notes"]] + [""]
    lines += ["| variant | L | TTFT ms | decode ms/token | tokens/s | peak GiB | KV cache | selected keys/head | status |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        kv = human_bytes(r["kv_bytes"]) if r.get("kv_bytes") is not None else "-"
        lines.append(f"| {r['variant']} | {human_tokens(r['length'])} | {_num(r.get('ttft_ms'), '.1f')} | "
                     f"{_num(r.get('decode_ms_per_token'), '.2f')} | {_num(r.get('decode_tokens_per_s'), '.1f')} | "
                     f"{_num(r.get('peak_gib'), '.2f')} | {kv} | {_selected(r)} | {_status(r)} |")
    if result["comparison"]:
        lines += ["", "Dense / sparse (above 1: sparse is faster or smaller):", "",
                  "| L | variant | TTFT | decode | decode vs dense-graph | KV bytes | peak memory | greedy tokens = dense |",
                  "|---:|---|---:|---:|---:|---:|---:|---:|"]
        for c in result["comparison"]:
            keys = ("ttft_speedup", "decode_speedup", "decode_speedup_vs_dense_graph", "kv_ratio", "peak_ratio")
            ratios = [_num(c.get(key), ".2f", "x") for key in keys]
            lines.append(f"| {human_tokens(c['length'])} | {c['variant']} | " + " | ".join(ratios)
                         + f" | {_num(c['tokens_match_dense'], '.0%')} |")
    amdahl = [c for c in result["comparison"] if c.get("ttft_ceiling") is not None]
    if amdahl:
        baselines = {"": f"{_backend_label(config['dense_sdpa']['prefill'])} dense"}
        if any(c.get("ttft_ceiling_vs_flash") is not None for c in amdahl):
            baselines["_vs_flash"] = "flash dense (dense-flash)"
        lines += ["", "Time to first token against its Amdahl ceiling (dense TTFT with its measured attention time "
                      "divided by the attention FLOP ratio, the rest unchanged):", "",
                  "| L | variant | attention FLOP ratio | " + " | ".join(
                      f"vs {name}: share, speedup / ceiling (reached)" for name in baselines.values()) + " |",
                  "|---:|---|---:|" + "---|" * len(baselines)]
        rows = {(r["variant"], r["length"]): r for r in result["rows"] if r.get("status") == "ok"}
        for c in amdahl:
            cells = []
            for suffix in baselines:
                if c.get(f"ttft_ceiling{suffix}") is None:
                    cells.append("-")
                    continue
                cells.append(f"{c[f'attention_share{suffix}']:.0%}, {c[f'ttft_speedup{suffix}']:.2f}x / "
                             f"{c[f'ttft_ceiling{suffix}']:.2f}x ({c[f'ttft_of_ceiling{suffix}']:.0%})")
            row = rows[(c["variant"], c["length"])]
            kept = row.get("prefill_block_fraction")
            ratio = f"{row['attention_flop_ratio']:.2f}" + ("" if kept is None else f" ({kept:.1%} of key blocks kept)")
            lines.append(f"| {human_tokens(c['length'])} | {c['variant']} | {ratio} | " + " | ".join(cells) + " |")
    if result.get("decode_only"):
        lines += ["", *_decode_only_lines(result["decode_only"])]
    if result.get("decode_profile"):
        lines += ["", *profile_lines(result["decode_profile"])]
    if result.get("oom_search"):
        lines += ["", *_oom_lines(result["oom_search"])]
    notes = _selected_footnotes(result["rows"] + (result.get("decode_only") or []))
    lines += ["", *notes, *([""] if notes else []),
              f"{env['device']}; {footer(env)}; wall {result['wall_seconds']:.0f} s", "",
              f"Command: `{env.get('command')}`"]
    return "\n".join(lines)


SDPA_LABELS = {"cudnn": "cuDNN", "flash": "flash", "efficient": "memory-efficient", "math": "math",
               "default": "torch's default SDPA"}


def _backend_label(name: str) -> str:
    return SDPA_LABELS.get(name, name)


def _selected(row: dict[str, Any]) -> str:
    """'selected keys/head' cell: the mean, 'all' where no decode step selected (below the seqlen threshold), '-'
    where the variant has no retrieval heads' selection (dense)."""
    if "selected_keys_per_head" not in row:
        return "-"
    if row["selected_keys_per_head"] is None:
        return "all*"
    return _num(row["selected_keys_per_head"], ".0f")


def _selected_footnotes(rows: list[dict[str, Any]]) -> list[str]:
    """The footnote of every 'all*' cell: per seqlen threshold, why no key was left out."""
    thresholds = sorted({r["seqlen_threshold"] for r in rows if r.get("status") == "ok"
                         and "selected_keys_per_head" in r and r["selected_keys_per_head"] is None})
    return [f"\\* all: no selection below threshold {human_tokens(n)} (fewer cached tokens than the seqlen threshold: "
            "the retrieval heads attend to every key)" for n in thresholds]


def _decode_only_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Decode after random-filled caches: one row per length, ms/token per variant and dense / sparse."""
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    cells = {(r["variant"], r["length"]): r for r in rows}
    lines = ["Decode only, caches filled with random K/V of L tokens (no prefill): ms/token (speedup against the "
             "faster dense variant), peak memory, keys per retrieval head where its decode selects:", "",
             "| L | " + " | ".join(variants) + " |", "|---:|" + "---:|" * len(variants)]
    for length in sorted({r["length"] for r in rows}):
        dense_times = [r["decode_ms_per_token"] for (v, n), r in cells.items()
                       if n == length and v.startswith("dense") and r.get("status") == "ok"]
        best_dense = min(dense_times, default=None)
        texts = []
        for variant in variants:
            r = cells.get((variant, length), {})
            if r.get("status") != "ok":
                texts.append(_status(r) if r else "-")
                continue
            ratio = None if variant.startswith("dense") else _ratio(best_dense, r["decode_ms_per_token"])
            peak = "" if r.get("peak_gib") is None else f", {r['peak_gib']:.1f} GiB"
            keys = "" if "selected_keys_per_head" not in r else f", {_selected(r)} keys"
            speedup = "" if ratio is None else f" ({ratio:.2f}x)"
            texts.append(f"{r['decode_ms_per_token']:.2f}{speedup}{peak}{keys}")
        lines.append(f"| {human_tokens(length)} | " + " | ".join(texts) + " |")
    return lines


def _oom_lines(oom: dict[str, Any]) -> list[str]:
    variants = list(oom["first_oom"])
    lines = [f"OOM search ({oom['method']}):", "", "| L | " + " | ".join(variants) + " |",
             "|---:|" + "---|" * len(variants)]
    cells: dict[int, dict[str, str]] = {}
    for r in oom["rows"]:
        text = (f"ok, peak {_num(r.get('peak_gib'), '.1f')} GiB, {_num(r.get('decode_ms_per_token'), '.1f')} ms/token"
                if r["status"] == "ok" else _status(r))
        cells.setdefault(r["length"], {})[r["variant"]] = text
    for length in sorted(cells):
        lines.append(f"| {human_tokens(length)} | " + " | ".join(cells[length].get(v, "-") for v in variants) + " |")
    win = oom["dense_oom_sparse_fits"]
    lines += ["", "First length where dense runs out of memory and sparse does not: "
                  + (human_tokens(win) if win else "none among the lengths tried")]
    return lines
