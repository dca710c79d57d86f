"""Programmatic dependent launch (PDL) for the chains of short kernels of a decode step.

A decode step that selects runs six to eight dependent kernels in a row on one stream (index scores, the five
launches of the threshold search, the list attention, its combine; or three search launches, the cut attention and its
combine), each short; a step over every key runs one launch for both
kinds of heads and its combine. Between two of them the GPU normally waits for
the first to finish before it launches the second. With PDL (compute capability 9.0 and later) the second kernel is
launched with ``launch_pdl=True`` and its programs may be scheduled once every program of the first has called
:func:`let_next_launch` (or exited); they then wait in :func:`wait_for_previous` until the first kernel has finished
and its writes are visible. The launch and the ramp-up of the second kernel overlap the tail of the first (for a
search level: the walk of the level's last program).

Rules every kernel launched this way follows here, so that the chain stays correct:

* it calls :func:`wait_for_previous` at the start of every program, before any load or store of global memory (a
  program may start while the kernel before it still runs, and memory the caching allocator hands out may still be
  in use by an earlier kernel until then);
* so it completes only after the kernel before it did, and waiting on the previous kernel is waiting on all of them.

Under CUDA graph capture the dependency becomes a programmatic edge of the graph. Without PDL the same kernels run
with ordinary launches and the two calls compile to nothing.

**On by default** on GPUs that have it; ``RTPURBO_PDL=0`` switches it off (``1``: on). On an H100 the selecting layer
step took 60.1 us at 128K keys with it against 67.4 for the tree before it, and 131.0 against 141.0 at 1M (paired,
``benchmarks/results/llama-3.1-8b_h100_2026-12-06_pdl-relay-anchor.md``; on an H200 56.7 against 63.4 and 116.5
against 124.7 with it off, ``..._h200_2026-12-06_search-prefetch-grouped-walk.md``), and greedy decode through CUDA
graphs gave the same tokens and logits bit for bit with it and without (``tests/test_decode_static.py``). On CPUs the
launches it adds are compiled for sm_90 by the kernel tests' compile check (the interpreter cannot run them), whose
reading of their PTX holds them to the rules above (``tests/test_pdl_order.py``).
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

ENV = "RTPURBO_PDL"


def _from_environment() -> bool:
    value = os.environ.get(ENV, "1")
    if value not in ("0", "1"):
        raise ValueError(f"{ENV} must be 0 (off) or 1 (on, the default), got {value!r}")
    return value == "1"


ENABLED = _from_environment()  # tests and benchmarks switch it to run the chain both ways


def supported(device: torch.device) -> bool:
    """Whether ``device`` can launch with PDL (a CUDA device of compute capability 9.0 or later)."""
    return device.type == "cuda" and _capability(device.index)[0] >= 9


def enabled(device: torch.device) -> bool:
    """Whether the chains' kernels on ``device`` launch with PDL: :data:`ENABLED` and :func:`supported`."""
    return ENABLED and supported(device)


@functools.cache
def _capability(index: int | None) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def options(pdl: bool) -> dict:
    """Launch keyword arguments for a kernel launched with PDL or not (none at all without, so that the interpreter
    sees the launch it always saw)."""
    return {"launch_pdl": True} if pdl else {}


@triton.jit
def wait_for_previous(PDL: tl.constexpr):
    """Wait until the kernel launched before this one on the stream has finished and its writes are visible."""
    if PDL:
        tl.extra.cuda.gdc_wait()


@triton.jit
def let_next_launch(PDL: tl.constexpr):
    """Let the next kernel on the stream be scheduled once every program of this one has called this (or exited)."""
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
