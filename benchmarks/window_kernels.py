"""Local-head (window + sinks) prefill kernels on a GPU: rtpurbo's Triton window kernel under launch settings,
flex configurations and a banded cuDNN decomposition.

    PYTHONPATH=. python benchmarks/window_kernels.py --lengths 32768,131072 --json window.json
    PYTHONPATH=. python benchmarks/window_kernels.py --kernels triton,cudnn --rounds 3 \
        --launches m128-n128-w8-s3,m256-n64-w16-s3,m128-n128-w8-s3-ws   # chosen launches, timed in turn

One layer's local heads of the Llama-3.1-8B geometry (28 query / 7 KV heads, head dim 128, W = 8192,
S = 4, bf16, plain prefill), the model's q/k/v layout. Rows:

* ``triton-*``: :func:`rtpurbo.ops.triton.window.window_attention` under each launch setting of
  :data:`TRITON_LAUNCHES` (tile shape, warps, pipeline stages, TMA descriptors or pointer loads, warp
  specialisation), on the model's q/k/v views;
* ``rtpurbo-plain``: what the model runs, ``ops.attention(plain=True)`` (the Triton kernel's default launch);
* ``flex``: compiled flex with the plain path's block mask (``flex.run``, the baseline of the errors), then
  the same block mask under other flex ``kernel_options`` (TMA loads, tile shapes, warp specialisation);
* ``cudnn-band``: cuDNN's banded SDPA alone (``0 <= i - j < W``, no sinks; its FLOPs count that band), the
  first step of ``cudnn-window``: the same plus the sinks merged in by log-sum-exp
  (:mod:`rtpurbo.ops.cudnn_window`); ``rtpurbo-plain-cudnn``: ``ops.attention(plain=True)`` under
  ``set_window_kernel("cudnn")`` (needs ``nvidia-cudnn-frontend``);
* ``banded``: query chunks of C = W / 2 tokens see their own chunk (causal), the previous chunk but its
  first key (no mask), the chunk before that shifted by one key (an upper triangle: causal on flipped
  copies) and the sinks; cuDNN runs each part with its log-sum-exp, and the parts merge by it. The
  first 3 C queries run through flex. K / V are repeated per query head (cuDNN's private LSE entry
  takes no GQA).

Useful TFLOP/s count 4 D FLOPs per visible (query, key) pair; errors are against rtpurbo's flex output.
"""
from __future__ import annotations

import argparse
import json

import torch

from rtpurbo.bench.attention import environment
from rtpurbo.bench.attention_common import time_ms
from rtpurbo.bench.attention_prefill import _model_layout
from rtpurbo.ops.semantics import local_pairs
from rtpurbo.ops import api, cudnn_window, flex
from rtpurbo.ops.triton import window as triton_window

WINDOW, SINKS, N_Q, N_KV, DIM = 8192, 4, 28, 7, 128
VARIANTS = {
    "tma": {"USE_TMA": True},
    "m128-n128-w8-s2": {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 2},
    "m128-n64-w8-s3": {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3},
    "m128-n64-w4-s3-tma": {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3, "USE_TMA": True},
    "ws2": {"num_consumer_groups": 2, "num_buffers_warp_spec": 3},
}


TRITON_LAUNCHES = [
    triton_window.WindowLaunch(block_m=128, block_n=bn, num_warps=w, num_stages=st, tma=tma, warp_specialize=ws)
    for tma, ws in ((True, False), (False, False), (True, True))
    for bn in (64, 128) for w in (4, 8) for st in (2, 3, 4)
    if not (ws and w == 4 and bn == 128)
]


def _launch_name(launch) -> str:
    kind = "tma-ws" if launch.warp_specialize else "tma" if launch.tma else "ptr"
    return f"triton-{kind}-m{launch.block_m}-n{launch.block_n}-w{launch.num_warps}-s{launch.num_stages}"


def parse_launch(spec: str):
    """``m128-n128-w8-s3`` plus optional ``-ptr`` (pointer loads) and ``-ws`` (warp specialisation) -> a
    :class:`~rtpurbo.ops.triton.window.WindowLaunch`."""
    parts = spec.split("-")
    fields = {"m": "block_m", "n": "block_n", "w": "num_warps", "s": "num_stages"}
    options = {fields[p[0]]: int(p[1:]) for p in parts if p[:1] in fields and p[1:].isdigit()}
    flags = {"ptr": ("tma", False), "ws": ("warp_specialize", True)}
    unknown = [p for p in parts if not (p[:1] in fields and p[1:].isdigit()) and p not in flags]
    if unknown or len(options) != 4:
        raise SystemExit(f"bad launch {spec!r}: want m<rows>-n<keys>-w<warps>-s<stages>[-ptr][-ws]")
    options.update(flags[p] for p in parts if p in flags)
    return triton_window.WindowLaunch(**options)


def _cudnn(q, k, v, causal: bool, scale: float):
    """(out (B, H, L, D), lse (B, H, L) fp32) from cuDNN's attention."""
    result = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, causal, False, scale=scale)
    return result[0], result[1].reshape(q.shape[:3]).float()


def _chunks(x: torch.Tensor, size: int) -> torch.Tensor:
    """(1, H, n * size, D) -> (n, H, size, D), contiguous."""
    return x.view(x.shape[1], -1, size, x.shape[-1]).transpose(0, 1).contiguous()


def banded(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Window + sinks attention of q (1, Hq, L, D) over k, v (1, Hkv, L, D), L a multiple of W / 2."""
    chunk, group = WINDOW // 2, q.shape[1] // k.shape[1]
    length = q.shape[2]
    n = length // chunk
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    head = 3 * chunk  # the first chunks: flex (their sinks overlap the window)
    pos = torch.arange(head, device=q.device)[None]
    out = torch.empty_like(q)
    out[:, :, :head] = api.attention(q[:, :, :head], k[:, :, :head], v[:, :, :head], pos, pos, window=WINDOW,
                                     sinks=SINKS, impl="flex", plain=True)
    qc, kc, vc = (_chunks(x, chunk) for x in (q, k, v))
    shifted_k = torch.nn.functional.pad(k[:, :, 1:], (0, 0, 0, 1))
    shifted_v = torch.nn.functional.pad(v[:, :, 1:], (0, 0, 0, 1))
    ks, vs = _chunks(shifted_k, chunk), _chunks(shifted_v, chunk)
    rows = slice(3, n)
    parts = [
        _cudnn(qc[rows], kc[rows], vc[rows], True, scale),  # own chunk, causal
        _cudnn(qc[rows], ks[2:n - 1, :, : chunk - 1], vs[2:n - 1, :, : chunk - 1], False, scale),  # previous, all
    ]
    flipped = _cudnn(qc[rows].flip(2), ks[1:n - 2].flip(2), vs[1:n - 2].flip(2), True, scale)  # two back, shifted
    parts.append((flipped[0].flip(2), flipped[1].flip(2)))
    sink_scores = torch.einsum("nhqd,hkd->nhqk", qc[rows].float(), k[0, :, :SINKS].float()) * scale
    sink_lse = torch.logsumexp(sink_scores, -1)
    sink_out = torch.einsum("nhqk,hkd->nhqd", torch.softmax(sink_scores, -1), v[0, :, :SINKS].float())
    parts.append((sink_out, sink_lse))
    top = torch.stack([lse for _, lse in parts]).amax(0)
    weights = [torch.exp(lse - top) for _, lse in parts]
    merged = sum(w[..., None] * o.float() for w, (o, _) in zip(weights, parts)) / sum(weights)[..., None]
    out[:, :, head:] = merged.to(q.dtype).transpose(0, 1).reshape(1, q.shape[1], -1, q.shape[-1])
    return out


def run_point(length: int, record, wanted=lambda name: True, launches=None, rounds: int = 1) -> None:
    """Time every kernel whose name ``wanted`` accepts at one length (flex, the baseline, always runs). With
    ``rounds`` > 1 each round times every kernel once, in turn, so that slow drifts of the card's clock fall on
    all kernels alike; every row carries its round."""
    q, k, v = _model_layout(length, N_Q, DIM), _model_layout(length, N_KV, DIM), _model_layout(length, N_KV, DIM)
    pos = torch.arange(length, device="cuda")[None]
    flops = 4 * DIM * N_Q * local_pairs(length, WINDOW, SINKS)
    plan = api.plan(pos, pos, window=WINDOW, sinks=SINKS, plain=True, impl="flex")
    base = lambda: flex.run(plan, q, k, v, DIM**-0.5)  # noqa: E731 - compiled flex, as the plain path ran before the Triton kernel
    want = base().float()
    calls = {"flex": base}
    if wanted("cudnn-causal"):  # the dense kernel's rate on the same heads, for reference
        calls["cudnn-causal"] = lambda: api.attention(q, k, v, pos, pos, impl="flex", plain=True)
    calls["rtpurbo-plain"] = lambda: api.attention(  # what the model runs now (the Triton window kernel)
        q, k, v, pos, pos, window=WINDOW, sinks=SINKS, impl="flex", plain=True, plan=plan)
    calls["cudnn-band"] = lambda: cudnn_window.band_attention(q, k, v, window=WINDOW, scale=DIM**-0.5)[0]
    calls["cudnn-window"] = lambda: cudnn_window.window_attention(q, k, v, window=WINDOW, sinks=SINKS, scale=DIM**-0.5)

    def plain_cudnn():
        previous = flex.set_window_kernel("cudnn")
        try:
            return api.attention(q, k, v, pos, pos, window=WINDOW, sinks=SINKS, impl="flex", plain=True, plan=plan)
        finally:
            flex.set_window_kernel(previous)

    calls["rtpurbo-plain-cudnn"] = plain_cudnn
    for launch in TRITON_LAUNCHES if launches is None else launches:
        calls[_launch_name(launch)] = lambda launch=launch: triton_window.window_attention(
            q, k, v, window=WINDOW, sinks=SINKS, scale=DIM**-0.5, launch=launch)
    kq, kk, kv = q, k.contiguous(), v.contiguous()
    for name, options in VARIANTS.items():
        fn = torch.compile(flex.flex_attention, dynamic=False)
        calls[f"flex-{name}"] = lambda fn=fn, options=options: fn(
            kq, kk, kv, block_mask=plan.block_mask, scale=DIM**-0.5, enable_gqa=True,
            kernel_options={**flex._KERNEL_OPTIONS, **options})  # IS_DIVISIBLE + the variant
    calls["banded-cudnn"] = lambda: banded(q, k, v, DIM**-0.5)
    errors = {"flex": None}  # the reference; its first call (the compile) made ``want``
    for name, call in list(calls.items())[1:]:
        if not wanted(name):
            del calls[name]
            continue
        try:  # the first call also compiles, and cuDNN builds its plan
            out = call().float()
            errors[name] = None if name in ("cudnn-causal", "cudnn-band") else (
                (out - want).norm().item() / want.norm().item())
        except Exception as exc:  # noqa: BLE001 - report and go on
            record(dict(kernel=name, L=length, error=f"{type(exc).__name__}: {str(exc)[:300]}"))
            del calls[name]
    work = {"cudnn-causal": 4 * DIM * N_Q * length * (length + 1) / 2,
            "cudnn-band": 4 * DIM * N_Q * local_pairs(length, WINDOW, 0)}
    for round_ in range(rounds):
        for name, call in calls.items():
            ms = time_ms(call)
            row = dict(kernel=name, L=length, ms=ms, tflops=work.get(name, flops) / ms / 1e9)
            if errors[name] is not None:
                row["rel_err"] = errors[name]
            record(row | (dict(round=round_) if rounds > 1 else {}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", default="32768,131072")
    parser.add_argument("--json", dest="json_path")
    parser.add_argument("--kernels", default="", help="comma-separated name prefixes to run (default: all)")
    parser.add_argument("--launches", default="", help="comma-separated Triton launches to time instead of the "
                        "grid, e.g. m128-n128-w8-s3,m256-n64-w16-s3,m128-n128-w8-s3-ws (see parse_launch)")
    parser.add_argument("--rounds", type=int, default=1, help="time every kernel once per round, in turn")
    args = parser.parse_args()
    rows: list[dict] = []

    def record(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)

    prefixes = [p for p in args.kernels.split(",") if p]
    launches = [parse_launch(x) for x in args.launches.split(",") if x] or None
    with torch._dynamo.config.patch(recompile_limit=64):
        for length in (int(x) for x in args.lengths.split(",")):
            run_point(length, record, lambda name: not prefixes or any(name.startswith(p) for p in prefixes),
                      launches, args.rounds)
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(dict(environment=environment(), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
