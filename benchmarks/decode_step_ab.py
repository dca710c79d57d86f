"""Paired A/B timing of the selecting decode step across versions of rtpurbo's retrieval kernels (GPU).

    python benchmarks/decode_step_ab.py --trees base=/tmp/v0 new=. --json ab.json

Each ``--trees`` entry names a directory holding an ``rtpurbo/`` package; its ``ops.triton`` kernels are loaded
under their own module name (``rtpurbo_<name>``), so every version runs in this one process on the same card.
Per version and case one CUDA graph is captured:

* ``step``: one attention layer's selecting decode step, Llama-3.1-8B geometry (1 retrieval KV head x 4 query heads
  through ``topp_attention``, top-p 0.9; 7 local KV heads over their 8,196 ring slots on a side stream, as that
  tree's ``HeadwiseCache`` runs them there: ``decode_roles.ring_beside_selection`` where the tree has it, else
  ``api.attention(impl="flex")``), random bf16 inputs;
* ``select``: the whole selection alone (index scores + threshold search) of one retrieval head on peaked,
  trained-like and flat scores (indexer keys scaled: score std 4, 2.56, 0.04 logits);
* ``every``: the layer step below the seqlen threshold, as ``HeadwiseCache``'s static decode runs it there: the
  retrieval head over every key and the local heads' ring in one launch (``decode_roles.two_role_decode``), so
  ``--ceiling`` gives the share of the step a model runs at lengths where it does not select.
* ``ring`` and ``chain``: the two streams of the ``step`` case apart, each alone on the GPU: the local heads' ring as
  the step runs it beside the selection, and the retrieval head's chain (index scores, search, list attention, its
  combine); against ``step`` they show how much the two slow each other down.

The ``step``, ``ring`` and ``chain`` cases hand each kernel what the tree's ``HeadwiseCache`` hands it in static
decode, where the tree's functions take it (:func:`model_io`): both kinds of heads write the layer's merged output
(``out`` / ``out_heads``), and the selection adds to the layer's running sums of selected and visible keys
(``key_sums``). A tree whose cache ran such work as launches of its own (copies to merge the heads, the selection
statistics' adds, a count of the visible keys) is timed without them: the end-to-end ``rtpurbo bench model`` is the
figure that compares those trees. Results files up to ``llama-3.1-8b_h100_2026-12-08_model-step-overhead.md`` gave
every kernel fresh outputs and no sums.

The indexer query of every case has L2 norm 4 (``sqrt(16)``, :func:`fixed_norm`), so a regime's score std is the
same at every length and in every layer, and top-p 0.9 keeps about 10 % of the keys at std 2.56. Results files up to
``llama-3.1-8b_h100_2026-12-07_level0-chunks.md`` drew the query at random: the step case's score std then varied with
the layer and the length, and top-p kept 7.4 % of the keys at 256K, 10.3-10.6 % at 128K and 1M, 14-17 % at 288K-512K.
Their paired differences hold (every tree ran the same inputs); their figures at different lengths do not compare.
Each layer of the ``step``, ``chain`` and ``every`` cases also reads its own copy of the cache's positions, as a
model's layers do; those files' runs shared one tensor across the layers (2 MB of int64 at 256K keys, from L2 after
the first layer).

``--pdl``: every variant of a tree that has ``ops.triton.dependent_launch`` also runs as ``VARIANT+pdl``, its chains'
kernels captured with programmatic dependent launch (``dependent_launch.ENABLED`` on while its graph is captured).
PDL is on by default in trees that have it, so run with ``RTPURBO_PDL=0`` to time both ways (the ``select`` case calls
``topp_threshold`` directly, which launches without PDL either way).

``--schedules relay``: every tree whose threshold search has that schedule also runs with it (``NAME+relay``; the
step passes ``schedule=`` to ``topp_attention``, the selection to ``topp_threshold``).

``--priorities``: the step case also runs each tree with CUDA stream priorities (``NAME+prio``: the graph captured
on a high-priority stream, so the retrieval head's chain launches at high priority and the local heads' ring, on a
default-priority side stream, at low; ``NAME+prio+pre``: the same with the ring forked before the index scores;
``NAME+ringprio``: the other way round, the ring's side stream at high priority). A graph replays each kernel at the
priority of the stream it was captured on (PyTorch instantiates graphs with per-node priorities), so where both
streams have programs waiting for an SM, the block scheduler should take the high-priority ones first. On an H100 none
of the three made the step shorter (``benchmarks/results/llama-3.1-8b_h100_2026-12-07_stream-priorities.md``).

The cache's key positions are int32, as static decode holds them (``rtpurbo.cache_layer.STATIC_POSITIONS``); results
files up to ``llama-3.1-8b_h100_2026-12-07_int32-positions.md`` held them as int64. ``--positions int64``: the step,
chain and every cases also run each tree with them as int64 (``NAME+int64``, on the same layers' inputs), as a cache
holds them outside static decode and as trees before it held them in static decode too: the index scores read them
beside the indexer keys, 8 bytes a key as int64 against 32 of indexer key (one retrieval head, d_idx 16).

``--layers N``: the step, every, ring and chain cases run N layers' steps in one graph, each on its own inputs, and
report time per layer: what a layer costs inside a model's decode graph, without one graph launch per layer.

``--timeline``: after the timing, the kernels of one replay of each variant's graph (profiler), each as
``name@start+duration`` in us from the first kernel, and the span from the first kernel's start to the last one's end.

Then ``--rounds`` rounds time every graph once each (triton's ``do_bench``: L2 flushed before each replay, median
of ``--rep`` ms of replays), the versions' order rotating from round to round. Each round gives one paired
difference per version against the first; the report gives the medians, the mean difference with a 95 % bootstrap
interval over rounds, and whether each version selected the same keys as the first (the sum of selected slots and
their count).

``--placebo``: the first tree runs a second time under another name (``NAME_again``: the same files, loaded as a
module of their own, so its kernels compile and allocate apart). Its paired difference is what the harness reads
between identical code; on an H100 that was up to 0.3 us per layer with an interval excluding zero, and 0.9 us in a
call of five trees (``benchmarks/results/llama-3.1-8b_h100_2026-12-06_step-streams-stamps.md``), so differences of
that size between versions are not resolved.
"""
from __future__ import annotations

import argparse
import functools
import importlib
import inspect
import json
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from rtpurbo.bench.attention_common import (DENSE_BACKENDS, GEOMETRIES, INDEX_DIM, MIN_TOKENS, RECENT, TOP_P, _dense,
                                            _randn, decode_bytes)
from rtpurbo.bench.attention_decode import _ring_positions
from rtpurbo.cache_layer import STATIC_POSITIONS
from rtpurbo.stats import bootstrap_means, interval

REGIMES = {"peaked": 1.0, "trained-like": 0.64, "flat": 0.01}
QUERY_NORM = INDEX_DIM ** 0.5  # the indexer query's L2 norm: score std = REGIMES scale x 4
SINKS, WINDOW = 4, 8192
GEOM = GEOMETRIES["llama-3.1-8b"]  # one retrieval KV head
UNITS = {"K": 1 << 10, "M": 1 << 20}


def length_value(label: str) -> int:
    """Keys of a ``--lengths`` entry: ``384K`` = 393,216, ``1M`` = 1,048,576, or a plain count."""
    number, unit = (label[:-1], UNITS[label[-1]]) if label[-1:] in UNITS else (label, 1)
    if not number.isdigit() or int(number) * unit < 1:
        raise argparse.ArgumentTypeError(f"a length is a positive count, optionally with K or M: got {label!r}")
    return int(number) * unit


def fixed_norm(x: torch.Tensor, norm: float) -> torch.Tensor:
    """``x`` rescaled along its last dimension to L2 norm ``norm`` (computed in fp32, returned in ``x``'s dtype)."""
    wide = x.float()
    return (wide * (norm / wide.norm(dim=-1, keepdim=True))).to(x.dtype)


def load_tree(name: str, root: str) -> dict:
    """The retrieval kernels (``topp``, ``decode``, ``threshold``) and ``api`` of the package under ``root``."""
    package = f"rtpurbo_{name}"
    module = types.ModuleType(package)
    module.__path__ = [str(Path(root).resolve() / "rtpurbo")]
    sys.modules[package] = module  # a bare parent: only the imported subpackages run, with their relative imports
    return {part: importlib.import_module(f"{package}.ops.{path}") for part, path in
            (("topp", "triton.topp"), ("decode", "triton.decode"), ("threshold", "triton.threshold"), ("api", "api"),
             ("roles", "triton.decode_roles"))}


def with_pdl(calls: dict) -> dict:
    """``calls`` plus, per call of a tree with ``ops.triton.dependent_launch``, the call run with PDL on
    (``CALL+pdl``, e.g. ``new+pdl``, ``new+relay+pdl``)."""
    more = dict(calls)
    for label, call in calls.items():
        switch = sys.modules.get(f"rtpurbo_{label.split('+')[0]}.ops.triton.dependent_launch")
        if switch is None:
            continue

        def with_switch(call=call, switch=switch):
            before = switch.ENABLED
            switch.ENABLED = True
            try:
                return call()
            finally:
                switch.ENABLED = before
        more[f"{label}+pdl"] = with_switch
    return more


def load_trees(entries: list[str], placebo: bool = False) -> dict:
    """``NAME=DIR`` entries (``--trees``) -> {NAME: :func:`load_tree`}; exits with a message on a malformed one or a
    repeated name. ``placebo``: the first tree once more, as ``NAME_again`` (see the module docstring)."""
    trees = {}
    for entry in entries:
        name, sep, root = entry.partition("=")
        if not sep or not (Path(root) / "rtpurbo").is_dir():
            sys.exit(f"--trees takes NAME=DIR with DIR/rtpurbo a package, got {entry!r}")
        if name in trees:
            sys.exit(f"--trees names {name!r} twice")
        trees[name] = load_tree(name, root)
    if placebo and entries:
        name, _, root = entries[0].partition("=")
        again = f"{name}_again"
        if again in trees:
            sys.exit(f"--placebo adds a tree named {again!r}, which --trees already names")
        trees[again] = load_tree(again, root)
    return trees


def _variants(trees: dict, schedules: list[str]):
    """(call name, tree, extra keyword arguments of the search) per tree and per search schedule it has."""
    for name, tree in trees.items():
        yield name, tree, {}
        for schedule in schedules:
            if schedule in getattr(tree["threshold"], "SCHEDULES", ()):
                yield f"{name}+{schedule}", tree, {"schedule": schedule}


def _layer_inputs(length: int, seed: int) -> dict:
    """One attention layer's decode inputs (random bf16): queries, the retrieval head's cache, its indexer query
    (L2 norm 4) and keys (trained-like: score std 2.56), the local heads' ring; and what the layer's cache holds
    for the step to write (:func:`model_io`): its merged output (1, Hq, 1, D), a view of (1, 1, Hq, D) as the
    cache's, and its running sums (1, 1, 2) int64."""
    n_local, dim = GEOM.n_kv - GEOM.n_retrieval(), GEOM.head_dim
    torch.manual_seed(seed)
    heads = torch.arange(GEOM.n_q, device="cuda")
    return dict(q=_randn(1, GEOM.n_q, 1, dim), k=_randn(1, 1, length, dim), v=_randn(1, 1, length, dim),
                ring_k=_randn(1, n_local, SINKS + WINDOW, dim), ring_v=_randn(1, n_local, SINKS + WINDOW, dim),
                q_idx=fixed_norm(_randn(1, 1, 1, INDEX_DIM), QUERY_NORM),
                k_idx=_randn(1, 1, length, INDEX_DIM) * REGIMES["trained-like"],
                merged=_randn(1, 1, GEOM.n_q, dim).transpose(1, 2), retrieval_heads=heads[:GEOM.group],
                local_heads=heads[GEOM.group:], key_sums=torch.zeros(1, 1, 2, dtype=torch.int64, device="cuda"))


def _step_inputs(length: int, layers: int) -> tuple:
    """(per-layer inputs, the ring's positions, the query's position) of a ``layers``-layer step after ``length``
    tokens. Each layer's inputs hold the cache's positions (``k_pos``, (1, length) in static decode's dtype,
    :data:`rtpurbo.cache_layer.STATIC_POSITIONS`) in a tensor of their own, as
    each layer of a :class:`rtpurbo.cache.HeadwiseCache` does: one shared tensor would let layers 2-N read them from L2
    (results files up to ``llama-3.1-8b_h100_2026-12-07_level0-chunks.md`` ran that way)."""
    inputs = [_layer_inputs(length, seed) for seed in range(layers)]
    for x in inputs:
        x["k_pos"] = torch.arange(length, device="cuda", dtype=STATIC_POSITIONS)[None]
    return inputs, _ring_positions(length, WINDOW, SINKS), torch.full((1, 1), length - 1, device="cuda")


POSITION_DTYPES = {"int64": torch.int64}  # --positions: dtypes other than the baseline's STATIC_POSITIONS


def by_positions(inputs: list, dtypes: tuple[str, ...]) -> dict:
    """{"": ``inputs``} plus, per name in ``dtypes`` (``--positions``), {"+NAME": the same layers' inputs with
    ``k_pos`` in that dtype (a tensor of its own per layer; the other tensors shared)}."""
    out = {"": inputs}
    for name in dtypes:
        out[f"+{name}"] = [dict(x, k_pos=x["k_pos"].to(POSITION_DTYPES[name])) for x in inputs]
    return out


def model_io(fn: Callable, x: dict, role: str) -> dict:
    """The destinations a layer's ``HeadwiseCache`` hands ``fn`` in static decode, as far as ``fn`` takes them:
    ``out`` / ``out_heads``, the layer's merged output (``x["merged"]``, (1, Hq, 1, D), the retrieval heads' query
    heads first) at this ``role``'s heads (``"retrieval"`` or ``"local"``); ``key_sums``, the layer's running sums of
    the selection (``x["key_sums"]``, retrieval only)."""
    params = inspect.signature(fn).parameters
    io = {}
    if "out" in params:
        io.update(out=x["merged"], out_heads=x[f"{role}_heads"])
    if role == "retrieval" and "key_sums" in params:
        io["key_sums"] = x["key_sums"]
    return io


def _ring(tree: dict, x: dict, ring_pos: torch.Tensor, q_pos: torch.Tensor) -> torch.Tensor:
    """The local heads' ring of one layer, launched as the tree's ``HeadwiseCache`` launches it beside a selection:
    ``decode_roles.ring_beside_selection`` where the tree has it (into the merged output where it takes one), else
    ``api.attention(impl="flex")``."""
    group, dim = GEOM.group, GEOM.head_dim
    if hasattr(tree["roles"], "ring_beside_selection"):
        ring = tree["roles"].ring_beside_selection
        return ring(x["q"][:, group:], x["ring_k"], x["ring_v"], ring_pos, q_pos, scale=dim**-0.5, window=WINDOW,
                    sinks=SINKS, **model_io(ring, x, "local"))
    return tree["api"].attention(x["q"][:, group:], x["ring_k"], x["ring_v"], q_pos, ring_pos, window=WINDOW,
                                 sinks=SINKS, impl="flex")


def _chain(tree: dict, x: dict, q_pos: torch.Tensor, **options) -> tuple:
    """The retrieval head's selecting decode of one layer (``topp_attention``; ``options``: the search's schedule, the
    fork of the local heads; :func:`model_io`: the merged output and the running sums): (out, keys used)."""
    topp = tree["topp"].topp_attention
    return topp(x["q"][:, :GEOM.group], x["k"], x["v"], q_pos, x["k_pos"], x["q_idx"], x["k_idx"], top_p=TOP_P,
                min_tokens=MIN_TOKENS, sinks=SINKS, recent=RECENT, **options, **model_io(topp, x, "retrieval"))


def _layers(one, inputs: list) -> Callable[[], tuple]:
    """A callable running ``one`` on every layer's inputs: (the first layer's two outputs, keys used over all)."""
    def run():
        results = [one(x) for x in inputs]
        return results[0][0], results[0][1], torch.stack([r[2] for r in results]).sum(0)
    return run


HIGH_PRIORITY = -1  # torch maps a priority outside the device's range to the nearest valid one; 0 is the lowest
# --priorities: (capture stream's priority, side stream's priority, ring forked before the index scores) per variant
PRIORITY_VARIANTS = {"prio": (HIGH_PRIORITY, 0, False), "prio+pre": (HIGH_PRIORITY, 0, True),
                     "ringprio": (0, HIGH_PRIORITY, False)}


def step_case(trees: dict, length: int, schedules: list[str], layers: int = 1, priorities: bool = False,
              positions: tuple[str, ...] = ()) -> dict:
    """Per tree (and schedule), a callable of one selecting layer step, and what it selected (count, slot sum).

    ``layers`` > 1: the callable runs that many layers' steps one after the other, each on its own inputs (as the
    layers of a model's decode graph do: no graph launch per layer, one layer's data evicting another's from L2);
    ``measure(..., per=layers)`` then reports time per layer. ``priorities``: each tree also runs as the variants of
    :data:`PRIORITY_VARIANTS` (module docstring); such a callable carries the stream its graph is captured on as
    ``capture_stream``. ``positions``: each tree also runs with the cache's positions in these dtypes
    (:func:`by_positions`, ``NAME+int64``), not only in static decode's int32."""
    inputs, ring_pos, q_pos = _step_inputs(length, layers)
    variants = by_positions(inputs, positions)
    sides = {0: torch.cuda.Stream(), HIGH_PRIORITY: torch.cuda.Stream(priority=HIGH_PRIORITY)}
    calls = {}
    for name, tree, search in _variants(trees, schedules):
        # as the tree's HeadwiseCache forks the local heads: after the index scores' launch where it can
        forks_after_scores = "after_scores" in inspect.signature(tree["topp"].topp_attention).parameters

        def layer_step(x, tree=tree, search=search, forks_after_scores=forks_after_scores, side=sides[0],
                       before_scores=False):
            main = torch.cuda.current_stream()
            local = []

            def local_step():
                side.wait_stream(main)
                with torch.cuda.stream(side):
                    local.append(_ring(tree, x, ring_pos, q_pos))
            fork = {"after_scores": local_step} if forks_after_scores and not before_scores else {}
            if not fork:
                local_step()
            out, counts = _chain(tree, x, q_pos, **search, **fork)
            main.wait_stream(side)
            return out, local[0], counts
        for suffix, layer_inputs in variants.items():
            calls[name + suffix] = _layers(layer_step, layer_inputs)
        if not priorities:
            continue
        for suffix, (capture, ring, before) in PRIORITY_VARIANTS.items():
            step = functools.partial(layer_step, side=sides[ring], before_scores=before)
            calls[f"{name}+{suffix}"] = _layers(step, inputs)
            calls[f"{name}+{suffix}"].capture_stream = torch.cuda.Stream(priority=capture)
    return calls


def stream_case(trees: dict, length: int, stream: str, layers: int = 1,
                positions: tuple[str, ...] = ()) -> dict:
    """Per tree, a callable of ``layers`` layers of one stream of the ``step`` case alone: ``"ring"`` (the local
    heads' ring, launched as the step launches it beside the selection) or ``"chain"`` (the retrieval head's
    ``topp_attention``, no local heads), each layer on its own inputs; the chain also with the positions in each
    dtype of ``positions`` (:func:`by_positions`)."""
    inputs, ring_pos, q_pos = _step_inputs(length, layers)
    variants = by_positions(inputs, positions if stream == "chain" else ())
    calls = {}
    for name, tree, _ in _variants(trees, []):
        def ring(x, tree=tree):
            out = _ring(tree, x, ring_pos, q_pos)
            return None, out, torch.zeros(1, dtype=torch.int64, device=out.device)

        def chain(x, tree=tree):
            out, counts = _chain(tree, x, q_pos)
            return out, None, counts
        for suffix, layer_inputs in variants.items():
            calls[name + suffix] = _layers(ring if stream == "ring" else chain, layer_inputs)
    return calls


def every_case(trees: dict, length: int, layers: int = 1, positions: tuple[str, ...] = ()) -> dict:
    """Per tree, a callable of ``layers`` layers' steps over every key (no selection), each on its own inputs: the
    retrieval head's ``length`` keys and the local heads' ring in one ``two_role_decode`` launch; also with the
    positions in each dtype of ``positions`` (:func:`by_positions`)."""
    group, dim = GEOM.group, GEOM.head_dim
    inputs, ring_pos, q_pos = _step_inputs(length, layers)
    variants = by_positions(inputs, positions)
    calls = {}
    for name, tree, _ in _variants(trees, []):
        def step(x, tree=tree):
            out, counts = tree["roles"].two_role_decode(
                x["q"][:, :group], x["k"], x["v"], x["k_pos"], x["q"][:, group:], x["ring_k"], x["ring_v"], ring_pos,
                q_pos, scale=dim**-0.5, window=WINDOW, sinks=SINKS)
            return out, None, counts
        for suffix, layer_inputs in variants.items():
            calls[name + suffix] = _layers(step, layer_inputs)
    return calls


def dense_per_layer(length: int, layers: int, rep: int) -> dict:
    """Microseconds per layer of dense decode attention (every head over all ``length`` keys, SDPA restricted to one
    backend), ``layers`` layers' calls in one graph, each on its own K/V: the dense side of the bytes ceiling."""
    from triton.testing import do_bench

    dim = GEOM.head_dim
    caches = [(_randn(1, GEOM.n_q, 1, dim), _randn(1, GEOM.n_kv, length, dim), _randn(1, GEOM.n_kv, length, dim))
              for _ in range(layers)]
    per_layer = {}
    for name in DENSE_BACKENDS:
        row = {}
        calls = [_dense(name, q, k, v, False, row, name) for q, k, v in caches]
        try:
            graph = _graph(lambda calls=calls: [call() for call in calls])
        except RuntimeError as error:  # a backend that cannot run this shape: named in the report, not timed
            per_layer[name] = f"not run: {str(error).splitlines()[0][:120]}"
            continue
        per_layer[name] = 1000 * do_bench(graph.replay, warmup=10, rep=rep, return_mode="median") / layers
        del graph
    del caches
    torch.cuda.empty_cache()
    return per_layer


def ceiling_shares(row: dict, length: int, dense_us: dict) -> dict:
    """Each step variant's share of its bytes ceiling: the bytes it must read (:func:`decode_bytes` with the keys
    it selected per layer) at the rate of the faster dense backend (dense bytes / its time per layer)."""
    timed = [us for us in dense_us.values() if isinstance(us, float)]
    if not timed:
        return {}
    dense_bytes = decode_bytes(GEOM, length, WINDOW, SINKS, None)[0]
    rate = dense_bytes / min(timed)  # bytes per us
    shares = {}
    for name, us in row["median_us"].items():
        selected = None if row["case"] == "every" else row["selected"][name][0] / row["layers"]
        shares[name] = 100 * decode_bytes(GEOM, length, WINDOW, SINKS, selected)[1] / rate / us
    return shares


def select_case(trees: dict, length: int, scale: float, schedules: list[str]) -> dict:
    torch.manual_seed(0)
    q_idx, k_idx = fixed_norm(_randn(1, 1, 1, INDEX_DIM), QUERY_NORM), _randn(1, 1, length, INDEX_DIM) * scale
    q_pos, k_pos = torch.full((1, 1), length - 1, device="cuda"), torch.arange(length, device="cuda")[None]
    calls = {}
    for name, tree, search in _variants(trees, schedules):
        def select(tree=tree, search=search):
            scored = tree["decode"].index_scores(q_idx, k_idx, q_pos, k_pos, sinks=SINKS, recent=RECENT)
            return tree["threshold"].topp_threshold(
                scored.scores.view(1, length), scored.block_max, scored.block_sum, scored.block_count,
                scored.block_min, top_p=TOP_P, min_tokens=MIN_TOKENS, max_tokens=None, **search)
        calls[name] = select
    return calls


def _selected(kind: str, result) -> tuple[int, int]:
    """(keys selected, sum of their slots) of a step's or a selection's result."""
    if kind in ("step", "every", "ring", "chain"):
        return int(result[2].sum()), 0
    order, n_keep = result
    return int(n_keep[0]), int(order[0, : int(n_keep[0])].sum())


def timeline(graph: torch.cuda.CUDAGraph, replays: int = 10) -> str:
    """The kernels of one replay of ``graph`` (the last of ``replays`` profiled), ``name@start+us``, and their span."""
    for _ in range(5):
        graph.replay()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            graph.replay()
        torch.cuda.synchronize()
    kernels = sorted((e.time_range.start, e.device_time, e.name[:24]) for e in prof.events()
                     if e.device_type == torch.autograd.DeviceType.CUDA)
    last = kernels[-(len(kernels) // replays):]
    if not last:
        return "no kernel events"
    start = last[0][0]
    span = max(s + us for s, us, _ in last) - start
    return f"span {span:.1f} us: " + "; ".join(f"{name}@{s - start:.1f}+{us:.1f}" for s, us, name in last)


def _graph(fn) -> torch.cuda.CUDAGraph:
    """``fn`` run three times, then captured (on ``fn.capture_stream`` where it has one, see ``--priorities``)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=getattr(fn, "capture_stream", None)):
        fn()
    torch.cuda.synchronize()
    return graph


def measure(kind: str, calls: dict, rounds: int, rep: int, timelines: bool = False, per: int = 1) -> dict:
    """Paired timings of ``calls`` (see the module docstring); every time is divided by ``per`` (layers per call)."""
    from triton.testing import do_bench

    names = list(calls)
    selected = {name: _selected(kind, calls[name]()) for name in names}
    graphs = {name: _graph(calls[name]) for name in names}
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            samples[name].append(1000 * do_bench(graphs[name].replay, warmup=10, rep=rep, return_mode="median") / per)
    base = names[0]
    result = {"selected": {n: list(s) for n, s in selected.items()},
              "same_selection": {n: selected[n] == selected[base] for n in names},
              "median_us": {n: statistics.median(samples[n]) for n in names}, "samples_us": samples, "vs_" + base: {}}
    for name in names[1:]:
        diffs = [b - a for a, b in zip(samples[base], samples[name])]
        lo, hi = interval(bootstrap_means(np.array(diffs), np.random.default_rng(0), 10000))
        result["vs_" + base][name] = dict(mean_diff_us=statistics.fmean(diffs), ci95=[lo, hi])
    if timelines:
        result["timeline"] = {name: timeline(graphs[name]) for name in names}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trees", nargs="+", required=True, help="NAME=DIR, the first is the baseline")
    parser.add_argument("--lengths", default="128K,1M",
                        help="comma-separated key counts, e.g. 256K,384K,1M (K = 1,024 keys, M = 1,048,576)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--rep", type=int, default=60, help="ms of replays per timing")
    parser.add_argument("--cases", default="step,select", help="comma-separated, of: step, select, every, ring, chain")
    parser.add_argument("--pdl", action="store_true", help="also run each tree with PDL on (NAME+pdl)")
    parser.add_argument("--schedules", default="", help="comma-separated search schedules to run each tree with too "
                        "(NAME+SCHEDULE), e.g. relay")
    parser.add_argument("--timeline", action="store_true", help="print each variant's kernel timeline (one replay)")
    parser.add_argument("--ceiling", action="store_true", help="step and every cases: also time dense decode "
                        "attention per layer (same layer count) and report each variant's share of its bytes ceiling")
    parser.add_argument("--layers", type=int, default=1, help="step, every, ring and chain cases: this many layers' "
                        "steps in one graph, each on its own inputs, timed per layer (as a model's decode graph "
                        "runs them)")
    parser.add_argument("--priorities", action="store_true", help="step case: also run each tree with CUDA stream "
                        "priorities (NAME+prio, NAME+prio+pre, NAME+ringprio; see the module docstring)")
    parser.add_argument("--placebo", action="store_true", help="also run the first tree a second time (NAME_again): "
                        "the difference the harness reads between identical code")
    parser.add_argument("--positions", default="", help="int64: also hold the cache's key positions as int64 "
                        "(static decode holds int32): every tree of the step, chain and every cases runs again, as "
                        "NAME+int64")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.layers < 1:
        parser.error(f"--layers must be at least 1, got {args.layers}")
    try:
        lengths = {label: length_value(label) for label in args.lengths.split(",")}
    except argparse.ArgumentTypeError as error:
        parser.error(str(error))
    positions = tuple(p for p in args.positions.split(",") if p)
    if unknown := [p for p in positions if p not in POSITION_DTYPES]:
        parser.error(f"--positions takes {', '.join(POSITION_DTYPES)}; got {', '.join(unknown)}")
    if not torch.cuda.is_available():
        sys.exit("decode_step_ab.py needs a CUDA GPU")
    trees = load_trees(args.trees, args.placebo)
    cases = args.cases.split(",")
    schedules = [s for s in args.schedules.split(",") if s]
    rows = []
    for label, length in lengths.items():
        todo = []
        if "step" in cases:
            todo.append(("step", "trained-like", step_case(trees, length, schedules, args.layers,
                                                                   args.priorities, positions)))
        if "every" in cases:
            todo.append(("every", "every key", every_case(trees, length, args.layers, positions)))
        for stream in ("ring", "chain"):
            if stream in cases:
                todo.append((stream, "ring alone" if stream == "ring" else "trained-like", stream_case(
                    trees, length, stream, args.layers, positions)))
        if "select" in cases:
            todo += [("select", regime, select_case(trees, length, scale, schedules))
                     for regime, scale in REGIMES.items()]
        for kind, regime, calls in todo:
            calls = with_pdl(calls) if args.pdl else calls
            start = time.time()
            per = 1 if kind == "select" else args.layers
            row = dict(case=kind, L=label, regime=regime, layers=per,
                       **measure(kind, calls, args.rounds, args.rep, args.timeline, per))
            rows.append(row)
            medians = " ".join(f"{n} {us:.1f}" for n, us in row["median_us"].items())
            diffs = " ".join(f"{n} {d['mean_diff_us']:+.2f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]"
                             for n, d in next(v for k, v in row.items() if k.startswith("vs_")).items())
            print(f"{kind} {label} {regime}{f' (per layer of {per})' if per > 1 else ''}: median us {medians} | paired diff {diffs} | same keys "
                  f"{row['same_selection']} ({time.time() - start:.0f} s)", flush=True)
            if kind in ("step", "every") and args.ceiling:
                row["dense_us_per_layer"] = dense_per_layer(length, per, args.rep)
                row["pct_of_bytes_ceiling"] = ceiling_shares(row, length, row["dense_us_per_layer"])
                dense = " ".join(f"{n} {us:.1f}" if isinstance(us, float) else f"{n} {us}"
                                 for n, us in row["dense_us_per_layer"].items())
                shares = " ".join(f"{n} {pct:.1f} %" for n, pct in row["pct_of_bytes_ceiling"].items())
                print(f"  dense us per layer: {dense} | share of the bytes ceiling: {shares}", flush=True)
            for name, kernels in row.get("timeline", {}).items():
                print(f"  timeline {name}: {kernels}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(
            device=torch.cuda.get_device_name(), torch=torch.__version__, trees=args.trees, layers=args.layers,
            rows=rows), indent=1))


if __name__ == "__main__":
    main()
