"""A test kernel (imported only where triton is): one key level's bin walk done both ways, flat and grouped."""
import triton
import triton.language as tl

from rtpurbo.ops.triton.threshold_phases import _grouped_walk, _walk


@triton.jit
def walk_both(level, params, out, N_BINS: tl.constexpr):
    """``params``: (mode, rank, above, mass_above, target, lower, upper); ``out[:7]``: ``_walk`` over all ``N_BINS``
    bins at ``level``, ``out[7:]``: ``_grouped_walk`` over the same level (both return 7 values)."""
    mode = tl.load(params)
    rank = tl.load(params + 1)
    above = tl.load(params + 2)
    mass_above = tl.load(params + 3)
    target = tl.load(params + 4)
    lower = tl.load(params + 5)
    upper = tl.load(params + 6)
    bins = tl.arange(0, N_BINS)
    flat = _walk(tl.load(level + bins), tl.load(level + N_BINS + bins), above, mass_above, mode, rank, target, lower,
                 upper, N_BINS)
    grouped = _grouped_walk(level, above, mass_above, mode, rank, target, lower, upper, N_BINS)
    for i in tl.static_range(7):
        tl.store(out + i, flat[i].to(tl.int64))
        tl.store(out + 7 + i, grouped[i].to(tl.int64))
