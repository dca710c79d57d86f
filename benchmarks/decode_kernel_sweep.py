"""Launch-shape sweep of the decode kernels, and where one sparse decode step's time goes (GPU).

    PYTHONPATH=. python benchmarks/decode_kernel_sweep.py --json sweep.json

1. ``decode_attention`` in dense mode over the local heads' S + W ring slots (Llama-3.1-8B: 7 local
   KV heads x 4 q heads; Qwen3-30B-A3B: 3 x 8) and in list mode over a retrieval head's selected
   keys (1 KV head x 4 q heads; 1K / 2K / 14K keys, the selections of the attention bench, and 90 % of
   1M keys, what top-p 0.9 keeps of nearly flat scores), for every
   :class:`rtpurbo.ops.triton.decode.DecodeLaunch` of a grid. Each time is the median
   CUDA-graph replay with L2 flushed (the attention bench's ``graph_us``); GB/s counts the K/V
   bytes read (the ring, or the selected rows).
2. ``index_scores`` at 128K and 1M keys for blocks 512..4096 and 4 / 8 warps (GB/s of the 16-d
   bf16 indexer keys, the positions and the scores).
3. ``select``: the whole selection (index scores + threshold search) at 128K and 1M keys for 16 and
   32 level-0 bins (``--n-logits``) and every schedule of the search (fused, phased, relay), on peaked,
   trained-like and flat scores (score std 4, 2.56 and 0.04 logits).
4. ``search_launch``: the same selection (phased schedule, 32 level-0 bins) for launches of the threshold
   search: programs per SM, warps of levels 0-3, keys per inner step (``--search-launches``).
5. ``walk``: the serial tail of a search level, timed alone as one program (CUDA-graph replays of 20 launches,
   per launch): an empty launch, loading a level's bins, walking them (:func:`~rtpurbo.ops.triton.threshold_phases._walk`,
   32 / 256 / 2048 bins, 1-8 warps) and level 0's bounds on its bin's keys.
6. A ``torch.profiler`` table of the kernels of one sparse decode step (retrieval + local heads, the
   attention bench's decode point) at 128K and 1M, for each schedule: device microseconds per kernel
   per step, and the step's wall time.
7. ``list_locality``: list mode over 36,864 of 1M keys spread, within 64K and contiguous, and over 6,144 spread keys,
   beside dense mode over the same contiguous keys (whether a short list's time is its scattered reads).

Prints one JSON line per row, then the best launch per case; ``--json`` writes everything.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import time

import torch
import triton
import triton.language as tl

from rtpurbo.bench.attention import environment
from rtpurbo.bench.attention_common import DEVICE, GEOMETRIES, INDEX_DIM, RECENT, TOP_P, _randn, graph_us
from rtpurbo.bench.attention_decode import _ring_positions
from rtpurbo.ops import api
from rtpurbo.ops.triton import decode as kernels
from rtpurbo.ops.triton.threshold_phases import _logit_bin_bounds, _walk

WINDOW, SINKS = 8192, 4
LOCAL_GRID = [kernels.DecodeLaunch(block_n=b, waves=w, num_warps=nw, num_stages=ns)
              for b, w, nw, ns in itertools.product((32, 64, 128), (2, 4, 8), (4, 8), (None, 4))]
LIST_GRID = [kernels.DecodeLaunch(block_n=b, waves=w, num_warps=nw, combine_chunk=cc)
             for b, w, nw, cc in itertools.product((32, 64, 128), (1, 2, 4, 8), (4, 8), (16, 256))]
# lists of ~90 % of 1M keys (what top-p 0.9 keeps of nearly flat, untrained-indexer scores): long programs
LONG_LIST_GRID = [kernels.DecodeLaunch(block_n=b, waves=w, num_warps=nw, num_stages=ns, combine_chunk=cc)
                  for b, w, nw, ns, cc in itertools.product((64, 128), (1, 2, 4), (4, 8), (None, 3), (16, 64))]
SELECT_SCALES = {"peaked": 1.0, "trained-like": 0.64, "flat": 0.01}  # indexer key scale: score std 4, 2.56, 0.04
SELECT_N_LOGIT = (16, 32)
SEARCH_LAUNCH_GRID = list(itertools.product((1, 2, 4, 8), (4, 8), (1024, 2048, 4096)))  # per SM, warps, block
SCORE_GRID = list(itertools.product((512, 1024, 2048, 4096), (4, 8)))
DENSE_GRID = [kernels.DecodeLaunch(block_n=b, waves=w, num_stages=ns, split_keys=sk, combine_chunk=cc)
              for b, w, ns, sk, cc in itertools.product((64, 128), (2, 4), (None, 3), (0, 512, 1024, 2048), (16, 64))]


def _launch(launch: kernels.DecodeLaunch) -> dict:
    return dict(block_n=launch.block_n, waves=launch.waves, num_warps=launch.num_warps, num_stages=launch.num_stages,
                split_keys=launch.split_keys, combine_chunk=launch.combine_chunk, combine_d=launch.combine_d)


def _dense_cases(geometries, lengths) -> list[tuple]:
    """(name, KV heads, group, keys, k_pos, visibility): each geometry's local-head ring, then one retrieval head
    (4 query heads) over all of ``lengths`` keys."""
    cases = [(f"ring-{geom.name}", geom.n_kv - geom.n_retrieval(), geom.group, SINKS + WINDOW,
              _ring_positions(131072, WINDOW, SINKS), dict(window=WINDOW, sinks=SINKS)) for geom in geometries]
    return cases + [(f"all-{n // 1024}K", 1, 4, n, torch.arange(n, device=DEVICE)[None], {}) for n in lengths]


def _dense_points(cases):
    """Per case of :func:`_dense_cases`: (name, call(launch) -> dense-mode decode output, K/V bytes read)."""
    for name, n_kv, group, n_keys, k_pos, visibility in cases:
        q = _randn(1, n_kv * group, 1, 128)
        k, v = _randn(1, n_kv, n_keys, 128), _randn(1, n_kv, n_keys, 128)
        q_pos = torch.full((1, 1), int(k_pos.max()), device=DEVICE)

        def call(launch, q=q, k=k, v=v, q_pos=q_pos, k_pos=k_pos, visibility=visibility):
            return kernels.decode_attention(q, k, v, q_pos, k_pos, scale=128**-0.5, launch=launch, **visibility)[0]

        yield name, call, 2 * k.numel() * k.element_size()


def _list_points(selections):
    """One retrieval head (Llama-3.1-8B: 4 query heads) over 1M cached keys; per selection size: (size,
    call(launch) -> list-mode decode output, K/V bytes read) for that many random slots plus sinks and recent."""
    geom = GEOMETRIES["llama-3.1-8b"]
    length, dim, group = 1048576, geom.head_dim, geom.group
    q = _randn(1, group, 1, dim)
    k, v = _randn(1, 1, length, dim), _randn(1, 1, length, dim)
    q_pos, k_pos = torch.full((1, 1), length - 1, device=DEVICE), torch.arange(length, device=DEVICE)[None]
    always = torch.cat([torch.arange(SINKS), torch.arange(length - RECENT, length)]).to(DEVICE, torch.int32)[None]
    for n_sel in selections:
        index = torch.sort(torch.randperm(length - RECENT, device=DEVICE)[:n_sel])[0].view(1, 1, n_sel) + SINKS
        n_index = torch.full((1, 1), n_sel, device=DEVICE)

        def call(launch, index=index, n_index=n_index):
            return kernels.decode_attention(q, k, v, q_pos, k_pos, scale=dim**-0.5, index=index, n_index=n_index,
                                            always=always, skip_sinks=SINKS, skip_recent=RECENT, launch=launch)[0]

        yield n_sel, call, 2 * (n_sel + SINKS + RECENT) * dim * 2


def list_locality_rows(record) -> None:
    """List mode over 36,864 selected keys of 1M spread over all of them, within the first 64K, and contiguous (LIST_LAUNCH,
    then the LIST_GRID shapes for the spread list), and 6,144 spread keys: whether a short list's time is the scattered
    reads or the launch. Beside them, dense mode over the same 36,864 contiguous keys."""
    geom = GEOMETRIES["llama-3.1-8b"]
    length, dim, group, n_sel = 1048576, geom.head_dim, geom.group, 36864
    q = _randn(1, group, 1, dim)
    k, v = _randn(1, 1, length, dim), _randn(1, 1, length, dim)
    q_pos, k_pos = torch.full((1, 1), length - 1, device=DEVICE), torch.arange(length, device=DEVICE)[None]
    always = torch.cat([torch.arange(SINKS), torch.arange(length - RECENT, length)]).to(DEVICE, torch.int32)[None]
    spread = lambda n: torch.sort(torch.randperm(length - RECENT - SINKS, device=DEVICE)[:n])[0] + SINKS  # noqa: E731
    lists = {"spread-1M": spread(n_sel), "within-64K": torch.sort(torch.randperm(65536, device=DEVICE)[:n_sel])[0] + SINKS,
             "contiguous": torch.arange(n_sel, device=DEVICE) + SINKS, "spread-6K": spread(6144)}
    for name, slots in lists.items():
        index = torch.zeros(1, 1, length, dtype=torch.int64, device=DEVICE)
        index[0, 0, : len(slots)] = slots
        n_index = torch.full((1, 1), len(slots), device=DEVICE)
        for launch in [kernels.LIST_LAUNCH] + (LIST_GRID if name.startswith("spread") else []):
            us = graph_us(lambda l=launch: kernels.decode_attention(
                q, k, v, q_pos, k_pos, scale=dim**-0.5, index=index, n_index=n_index, always=always, skip_sinks=SINKS,
                skip_recent=RECENT, launch=l)[0], rep=60)
            record(dict(case="list_locality", what=name, selected=len(slots), **_launch(launch), us=us,
                        gbps=2 * len(slots) * dim * 2 / us / 1e3))
    us = graph_us(lambda: kernels.decode_attention(q, k[:, :, :n_sel], v[:, :, :n_sel], q_pos, k_pos[:, :n_sel],
                                                   scale=dim**-0.5)[0], rep=60)
    record(dict(case="list_locality", what="dense-contiguous", selected=n_sel, us=us, gbps=2 * n_sel * dim * 2 / us / 1e3))


def dense_rows(record) -> None:
    """Dense mode, the grid with split floors and combine chunks: the local heads' ring (both geometries) and
    a retrieval head over all its keys (below the seqlen threshold) at 32K / 128K / 1M."""
    for name, call, nbytes in _dense_points(_dense_cases(GEOMETRIES.values(), (32768, 131072, 1048576))):
        for launch in DENSE_GRID:
            us = graph_us(lambda l=launch: call(l), rep=30)
            record(dict(case="dense", what=name, **_launch(launch), us=us, gbps=nbytes / us / 1e3))


def local_rows(record) -> None:
    for geom in GEOMETRIES.values():
        n_local, group, dim = geom.n_kv - geom.n_retrieval(), geom.group, geom.head_dim
        q = _randn(1, n_local * group, 1, dim)
        ring_k, ring_v = _randn(1, n_local, SINKS + WINDOW, dim), _randn(1, n_local, SINKS + WINDOW, dim)
        ring_pos, q_pos = _ring_positions(131072, WINDOW, SINKS), torch.full((1, 1), 131071, device=DEVICE)
        nbytes = 2 * ring_k.numel() * ring_k.element_size()
        for launch in LOCAL_GRID:
            fn = lambda l=launch: kernels.decode_attention(q, ring_k, ring_v, q_pos, ring_pos, scale=dim**-0.5,  # noqa: E731
                                                           window=WINDOW, sinks=SINKS, launch=l)[0]
            us = graph_us(fn, rep=50)
            record(dict(case="local", geometry=geom.name, **_launch(launch), us=us, gbps=nbytes / us / 1e3))


def list_rows(record) -> None:
    for n_sel, call, nbytes in _list_points((1024, 2048, 14336, 943718)):
        for launch in LONG_LIST_GRID if n_sel > 524288 else LIST_GRID:
            us = graph_us(lambda l=launch: call(l), rep=50)
            record(dict(case="list", selected=n_sel, **_launch(launch), us=us, gbps=nbytes / us / 1e3))


def combine_rows(record) -> None:
    """The shipped launch shapes with the combine reading 64 or 256 partial results per step: the local heads'
    ring, a retrieval head over all keys at 32K / 128K, and lists of 14K / 944K of 1M keys."""
    points = [(name, call, nbytes, kernels.DENSE_LAUNCH)
              for name, call, nbytes in _dense_points(_dense_cases([GEOMETRIES["llama-3.1-8b"]], (32768, 131072)))]
    for name, call, nbytes, shipped in points + [(f"list-{n}", call, nbytes, kernels.LIST_LAUNCH)
                                                 for n, call, nbytes in _list_points((14336, 943718))]:
        for chunk in (64, 256):
            launch = dataclasses.replace(shipped, combine_chunk=chunk)
            us = graph_us(lambda l=launch: call(l), rep=50)
            record(dict(case="combine", what=name, **_launch(launch), us=us, gbps=nbytes / us / 1e3))


def select_rows(record, n_logits=SELECT_N_LOGIT) -> None:
    """The whole selection (index scores + threshold search + list) of one retrieval head at 128K and 1M keys,
    for level-0 bin counts and three score regimes (indexer keys scaled: std of the scores 4, 2.56, 0.04)."""
    from rtpurbo.ops.triton import threshold

    for length in (131072, 1048576):
        q_pos, k_pos = torch.full((1, 1), length - 1, device=DEVICE), torch.arange(length, device=DEVICE)[None]
        for regime, scale in SELECT_SCALES.items():
            torch.manual_seed(0)
            q_idx, k_idx = _randn(1, 1, 1, INDEX_DIM), _randn(1, 1, length, INDEX_DIM) * scale

            def select(n_logit, schedule, work=None, sync=None):
                scored = kernels.index_scores(q_idx, k_idx, q_pos, k_pos, sinks=SINKS, recent=RECENT)
                return threshold.topp_threshold(scored.scores.view(1, length), scored.block_max, scored.block_sum,
                                                scored.block_count, scored.block_min, top_p=TOP_P, min_tokens=64,
                                                max_tokens=None, n_logit=n_logit, work=work, schedule=schedule,
                                                sync=sync)

            for n_logit, schedule in itertools.product(n_logits, threshold.SCHEDULES):
                us = graph_us(lambda n=n_logit, s=schedule: select(n, s)[1], rep=50)
                work = torch.zeros(1, threshold.N_LEVELS, 2 * threshold.N_BINS + 1, dtype=torch.int64, device=DEVICE)
                sync = torch.zeros(1, threshold.N_SYNC, dtype=torch.int64, device=DEVICE)
                order, n_keep = select(n_logit, schedule, work, sync)
                record(dict(case="select", L=length, regime=regime, n_logit=n_logit, schedule=schedule, us=us,
                            gbps=0.0, selected=int(n_keep), level1_keys=int(work[0, 1, : threshold.N_BINS].sum()),
                            stalls=int(sync[0, threshold.STALLS]), order_sum=int(order[0, : int(n_keep)].sum())))


def search_launch_rows(record, grid=None) -> None:
    """The whole selection of one retrieval head at 128K and 1M keys, phased, for each launch of
    :data:`SEARCH_LAUNCH_GRID` or ``grid`` (programs per SM, warps of levels 0-3, keys per inner step), on the three
    score regimes; ``order_sum`` checks that every launch selects the same keys."""
    from rtpurbo.ops.triton import threshold

    for length in (131072, 1048576):
        q_pos, k_pos = torch.full((1, 1), length - 1, device=DEVICE), torch.arange(length, device=DEVICE)[None]
        for regime, scale in SELECT_SCALES.items():
            torch.manual_seed(0)
            q_idx, k_idx = _randn(1, 1, 1, INDEX_DIM), _randn(1, 1, length, INDEX_DIM) * scale

            def select(per_sm, warps, block):
                scored = kernels.index_scores(q_idx, k_idx, q_pos, k_pos, sinks=SINKS, recent=RECENT)
                return threshold.topp_threshold(scored.scores.view(1, length), scored.block_max, scored.block_sum,
                                                scored.block_count, scored.block_min, top_p=TOP_P, min_tokens=64,
                                                max_tokens=None, block=block, programs_per_sm=per_sm,
                                                num_warps=warps)

            for launch in SEARCH_LAUNCH_GRID if grid is None else grid:
                per_sm, warps, block = launch
                us = graph_us(lambda a=per_sm, w=warps, b=block: select(a, w, b)[1], rep=50)
                order, n_keep = select(per_sm, warps, block)
                record(dict(case="search_launch", L=length, regime=regime, programs_per_sm=per_sm, num_warps=warps,
                            block=block, us=us, gbps=0.0, selected=int(n_keep),
                            order_sum=int(order[0, : int(n_keep)].sum())))


@triton.jit
def _empty_kernel(out_ptr):
    tl.store(out_ptr, 1)


@triton.jit
def _load_bins_kernel(counts_ptr, masses_ptr, out_ptr, NB: tl.constexpr):
    bins = tl.arange(0, NB)
    counts = tl.load(counts_ptr + bins, cache_modifier=".cg")
    masses = tl.load(masses_ptr + bins, cache_modifier=".cg")
    tl.store(out_ptr, tl.sum(counts + masses, axis=0))


@triton.jit
def _walk_kernel(counts_ptr, masses_ptr, out_ptr, target, NB: tl.constexpr):
    bins = tl.arange(0, NB)
    counts = tl.load(counts_ptr + bins, cache_modifier=".cg")
    masses = tl.load(masses_ptr + bins, cache_modifier=".cg")
    zero = tl.load(counts_ptr) * 0
    chosen, mode, rank, above, mass_above, n_in, mass_in = _walk(counts, masses, zero, zero, zero, zero, target,
                                                                 zero + 64, zero + (1 << 40), NB)
    tl.store(out_ptr, chosen + mode + rank + above + mass_above + n_in + mass_in)


@triton.jit
def _bounds_kernel(stats_ptr, out_ptr):
    row_max = tl.load(stats_ptr)
    lo, hi = _logit_bin_bounds(row_max, tl.load(stats_ptr + 1), (row_max * 0.0 + 3.0).to(tl.int32), 32)
    tl.store(out_ptr, lo + hi)


def walk_rows(record) -> None:
    """One program's serial work at the end of a search level (see the module docstring, part 5)."""
    out = torch.zeros(4, dtype=torch.int64, device=DEVICE)
    launches = 20

    def per_launch(fn) -> float:
        def many():
            for _ in range(launches):
                fn()
        return graph_us(many, rep=100) / launches

    for warps in (1, 8):
        record(dict(case="walk", what="empty launch", num_warps=warps, us=per_launch(
            lambda w=warps: _empty_kernel[(1,)](out, num_warps=w)), gbps=0.0))
    for bins in (32, 256, 2048):
        counts = torch.randint(0, 100, (bins,), device=DEVICE, dtype=torch.int64)
        masses = counts * (1 << 40)
        target = int(masses.sum().item() * 0.9)
        for warps in (1, 2, 4, 8):
            record(dict(case="walk", what="load bins", bins=bins, num_warps=warps, gbps=0.0, us=per_launch(
                lambda w=warps: _load_bins_kernel[(1,)](counts, masses, out, NB=bins, num_warps=w))))
            record(dict(case="walk", what="walk", bins=bins, num_warps=warps, gbps=0.0, us=per_launch(
                lambda w=warps: _walk_kernel[(1,)](counts, masses, out, target, NB=bins, num_warps=w))))
    stats = torch.tensor([5.0, 1.3], device=DEVICE)
    for warps in (1, 8):
        record(dict(case="walk", what="logit bin bounds", num_warps=warps, gbps=0.0,
                    us=per_launch(lambda w=warps: _bounds_kernel[(1,)](stats, out, num_warps=w))))


def score_rows(record) -> None:
    for length in (131072, 1048576):
        q_idx, k_idx = _randn(1, 1, 1, INDEX_DIM), _randn(1, 1, length, INDEX_DIM)
        q_pos, k_pos = torch.full((1, 1), length - 1, device=DEVICE), torch.arange(length, device=DEVICE)[None]
        nbytes = k_idx.numel() * 2 + length * (8 + 4)  # keys, positions (int64) in; fp32 scores out
        for block, warps in SCORE_GRID:
            fn = lambda b=block, w=warps: kernels.index_scores(  # noqa: E731
                q_idx, k_idx, q_pos, k_pos, sinks=SINKS, recent=RECENT, block=b, num_warps=w).scores
            us = graph_us(fn, rep=50)
            record(dict(case="index_scores", L=length, block=block, num_warps=warps, us=us, gbps=nbytes / us / 1e3))


def step_profile(record) -> None:
    """Kernels of one sparse decode step (eager, 20 steps profiled) at 128K and 1M, Llama-3.1-8B geometry, with
    each schedule of the threshold search; ``graph_us``: the step replayed from a CUDA graph (L2 flushed);
    ``search_phase_us``: device time of each launch of the threshold search, in launch order (the phased
    schedule's six phases: level 0, levels 1-3, tally, gather)."""
    from rtpurbo.ops.triton import threshold
    from rtpurbo.ops.triton import topp as triton_topp

    geom = GEOMETRIES["llama-3.1-8b"]
    n_ret, group, dim = geom.n_retrieval(), geom.group, geom.head_dim
    split, n_local = n_ret * group, geom.n_kv - n_ret
    for length in (131072, 1048576):
        q = _randn(1, geom.n_q, 1, dim)
        k, v = _randn(1, n_ret, length, dim), _randn(1, n_ret, length, dim)
        ring_k, ring_v = _randn(1, n_local, SINKS + WINDOW, dim), _randn(1, n_local, SINKS + WINDOW, dim)
        ring_pos = _ring_positions(length, WINDOW, SINKS)
        q_idx, k_idx = _randn(1, n_ret, 1, INDEX_DIM), _randn(1, n_ret, length, INDEX_DIM)
        q_pos, k_pos = torch.full((1, 1), length - 1, device=DEVICE), torch.arange(length, device=DEVICE)[None]

        for schedule in threshold.SCHEDULES:
            def step(schedule=schedule):
                out, _ = triton_topp.topp_attention(q[:, :split], k, v, q_pos, k_pos, q_idx, k_idx, top_p=TOP_P,
                                                    min_tokens=64, sinks=SINKS, recent=RECENT, schedule=schedule)
                local = api.attention(q[:, split:], ring_k, ring_v, q_pos, ring_pos, window=WINDOW, sinks=SINKS,
                                      impl="flex")
                return torch.cat([out, local], dim=1)

            for _ in range(5):
                step()
            torch.cuda.synchronize()
            steps = 20
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                for _ in range(steps):
                    step()
                torch.cuda.synchronize()
            kernels_us: dict[str, list[float]] = {}
            search: list[tuple[float, float]] = []  # (start, us) of each launch of the threshold search
            for event in prof.events():
                if event.device_type == torch.autograd.DeviceType.CUDA:
                    kernels_us.setdefault(event.name[:80], []).append(event.device_time)
                    if event.name.startswith("_search_kernel"):
                        search.append((event.time_range.start, event.device_time))
            per_step = len(search) // steps  # the search's launches per step, in launch order (phases)
            search.sort()
            phase_us = [round(sum(us for _, us in search[i::per_step]) / steps, 2) for i in range(per_step)]
            table = sorted(((name, len(t) / steps, sum(t) / steps) for name, t in kernels_us.items()),
                           key=lambda r: -r[2])
            record(dict(case="step_profile", L=length, schedule=schedule, graph_us=graph_us(step, rep=50),
                        kernels_per_step=sum(r[1] for r in table), device_us_per_step=sum(r[2] for r in table),
                        search_phase_us=phase_us,
                        kernels=[dict(name=n, per_step=c, us_per_step=round(u, 2)) for n, c, u in table]))


def best(rows: list[dict]) -> list[str]:
    lines = []
    keys = {"local": ("geometry",), "list": ("selected",), "index_scores": ("L",), "dense": ("what",),
            "select": ("L", "regime"), "search_launch": ("L", "regime"), "combine": ("what",)}
    for case, by in keys.items():
        groups: dict[tuple, list[dict]] = {}
        for r in rows:
            if r.get("case") == case and "us" in r:
                groups.setdefault(tuple(r[k] for k in by), []).append(r)
        for key, group in groups.items():
            top = sorted(group, key=lambda r: r["us"])[:3]
            lines.append(f"{case} {key}: " + "; ".join(
                f"{r['us']:.1f} us ({r['gbps']:.0f} GB/s) " + json.dumps({k: r[k] for k in r if k not in
                                                                           ("case", "us", "gbps", *by)})
                for r in top))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", dest="json_path")
    parser.add_argument("--parts", default="local,list,scores,profile", help="comma-separated, of: local, list, "
                        "scores, profile, dense, select, search_launch, combine, walk, list_locality")
    parser.add_argument("--search-launches", default="", help="search_launch's grid instead of the default: "
                        "comma-separated PROGRAMS_PER_SMxWARPSxBLOCK, e.g. 2x8x2048,8x2x2048")
    parser.add_argument("--n-logits", default=",".join(map(str, SELECT_N_LOGIT)),
                        help="select's level-0 bin counts, comma-separated powers of two")
    args = parser.parse_args()
    search_grid = [tuple(int(x) for x in launch.split("x")) for launch in args.search_launches.split(",") if launch]
    rows: list[dict] = []
    env = environment()
    started = time.time()

    def record(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)

    n_logits = [int(n) for n in args.n_logits.split(",")]
    parts = {"local": local_rows, "list": list_rows, "scores": score_rows, "profile": step_profile, "dense": dense_rows,
             "select": lambda record: select_rows(record, n_logits),
             "search_launch": lambda record: search_launch_rows(record, search_grid or None),
             "combine": combine_rows, "walk": walk_rows, "list_locality": list_locality_rows}
    for name in args.parts.split(","):
        try:
            parts[name](record)
        except Exception as err:  # one broken part must not lose the others
            record(dict(case=name, error=f"{type(err).__name__}: {str(err)[:300]}"))
    print("\n".join(best(rows)))
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(dict(environment=env, rows=rows, wall_s=round(time.time() - started, 1)), f, indent=1)


if __name__ == "__main__":
    main()
