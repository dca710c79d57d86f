"""Level 0's bounds on the keys of its chosen bin (``threshold_phases._logit_bin_bounds``), on CPU through the
Triton interpreter.

For a row maximum ``m``, a bin width and a chosen level-0 bin, the bounds must hold every order key (over scores
in [-inf, m]) whose bin, as :func:`~rtpurbo.ops.triton.threshold_phases._logit_bin` computes it in fp32, is the
chosen one; and they must be tight: each end at most a few millionths of the gap (plus a few keys) past the bin's
exact end, which a binary search over keys finds here on the host with the same fp32 arithmetic. The key levels
leave out the keys of the bins beside the chosen one (``tests/test_ops_threshold_interpret.py``, the ``edge``
cases, fail without that test).
"""
from __future__ import annotations

import importlib.util
import json

import pytest

from tests.triton_interpreter import COMPILE_CHECK, problem as interpreter_problem, report_checks, run_script

pytestmark = pytest.mark.skipif(interpreter_problem() is not None, reason=str(interpreter_problem()))

# (row max, inverse bin width, chosen bin): wide and narrow bins, a row max of 0 and of both signs, a tiny
# spread (bins far narrower than a logit), the first, a middle and the last (catch-all) bin, bins with an end at 0
# or reaching across it, and maxima near the top of fp32 (whose middle bins hold no score at all)
CASES = [(5.0, 1.3, 3), (-3.25, 0.5, 0), (0.0, 2.0, 31), (1e4, 1e6, 7), (-40.0, 1e-3 + 0.5, 1), (2.5, 64.0, 30),
         (7.0, 0.75, 12), (1e-20, 3e9, 5), (3.0e38, 0.5, 0), (3.0e38, 1e-30 + 0.5, 31), (1e38, 0.5, 0),
         (10.0, 0.8, 5), (10.0, 0.8, 7), (10.0, 0.8, 8), (2.5, 0.8, 1), (2.5, 0.8, 2), (0.3, 4.0, 1), (3.0e38, 0.5, 9),
         (-1e-3, 1e4, 4)]
BOTTOM = 2147483648 - 1 - 0x7F800000  # the order key of -inf


if importlib.util.find_spec("triton") is not None:  # the kernel's globals must be module globals
    import triton
    import triton.language as tl

    from rtpurbo.ops.triton.threshold_phases import _logit_bin_bounds

    @triton.jit
    def _bounds_kernel(case_ptr, out_ptr, N_LOGIT: tl.constexpr):
        c = tl.program_id(0)
        row_max = tl.load(case_ptr + 3 * c)
        inv_width = tl.load(case_ptr + 3 * c + 1)
        chosen = tl.load(case_ptr + 3 * c + 2).to(tl.int32)
        lo, hi = _logit_bin_bounds(row_max, inv_width, chosen, N_LOGIT)
        tl.store(out_ptr + 2 * c, lo)
        tl.store(out_ptr + 2 * c + 1, hi)


def _score(key: int) -> float:
    """The fp32 score of an order key (as a Python float)."""
    import numpy as np

    bits = key - 2147483648 if key >= 2147483648 else -1 - key
    return float(np.array([bits], dtype=np.int64).astype(np.int32).view(np.float32)[0])


def _key(score: float) -> int:
    import numpy as np

    bits = int(np.array([score], dtype=np.float32).view(np.int32)[0])
    return -1 - bits if bits < 0 else bits + 2147483648


def _host_bin(key: int, row_max: float, inv_width: float, n_logit: int) -> int:
    """The level-0 bin of an order key, in fp32 as the kernel computes it."""
    import numpy as np

    with np.errstate(over="ignore", invalid="ignore"):
        gap = (np.float32(row_max) - np.float32(_score(key))) * np.float32(inv_width)
    return int(min(np.floor(gap), n_logit - 1)) if np.isfinite(gap) else n_logit - 1


def exact_ends(row_max: float, inv_width: float, chosen: int, n_logit: int) -> tuple[int, int]:
    """(first, last) order key whose bin is ``chosen`` (first > last: no key is), by binary search over keys."""
    top = _key(float(row_max))
    binned = lambda key: _host_bin(key, row_max, inv_width, n_logit)  # noqa: E731 - falls as the key rises
    lo, hi = BOTTOM, top + 1  # the first key with bin <= chosen
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if binned(mid) <= chosen else (mid + 1, hi)
    first = lo
    lo, hi = BOTTOM - 1, top  # the last key with bin >= chosen
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if binned(mid) >= chosen else (lo, mid - 1)
    return first, lo


def _check() -> list[str]:
    import numpy as np
    import torch

    from rtpurbo.ops.triton.threshold_phases import N_LOGIT

    cases = torch.tensor(CASES, dtype=torch.float32)
    out = torch.zeros(len(CASES), 2, dtype=torch.int64)
    _bounds_kernel[(len(CASES),)](cases, out, N_LOGIT=N_LOGIT)
    problems = []
    for (m, inv_width, chosen), (lo, hi) in zip(cases.tolist(), out.tolist()):
        chosen = int(chosen)
        first, last = exact_ends(m, inv_width, chosen, N_LOGIT)
        case = (m, inv_width, chosen)
        if not BOTTOM <= lo <= hi <= _key(m):
            problems.append(f"{case}: bounds [{lo}, {hi}] outside the keys of [-inf, m]")
        if first > last:
            continue  # no key is in this bin: any bounds do
        if lo > first or hi < last:
            problems.append(f"{case}: bounds [{lo}, {hi}] miss keys of the bin [{first}, {last}]")
        low_gap = (chosen + 1) / np.float32(inv_width)
        allowed = lambda s: 4e-6 * low_gap + 1e-29 + 8 * float(np.spacing(np.float32(abs(s))))  # noqa: E731
        if hi != _key(m) and _score(hi) - _score(last) > allowed(_score(last)):
            problems.append(f"{case}: key_hi {hi} ({_score(hi)!r}) is far above the bin's end ({_score(last)!r})")
        if lo != BOTTOM and _score(first) - _score(lo) > allowed(_score(first)):
            problems.append(f"{case}: key_lo {lo} ({_score(lo)!r}) is far below the bin's end ({_score(first)!r})")
    return problems


def _run_all() -> dict[str, list[str]]:
    return report_checks([("bounds", _check)])


@pytest.fixture(scope="module")
def report() -> dict[str, list[str]]:
    return run_script(__file__)


def test_every_launch_compiles_for_hopper(report):
    """Each kernel launch the checks above made, compiled for sm_90 by Triton's compiler (no GPU needed)."""
    assert report[COMPILE_CHECK] == [], "\n".join(report[COMPILE_CHECK])


def test_logit_bin_bounds_hold_the_bin_and_little_else_in_interpreter(report):
    assert report["bounds"] == [], "\n".join(report["bounds"])


if __name__ == "__main__":
    print(json.dumps(_run_all()))
