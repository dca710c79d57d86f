"""Level 0's key-interval search of the top-p threshold (``threshold_phases._logit_bin_keys``), on CPU through
the Triton interpreter.

For a row maximum ``m``, a bin width and a chosen level-0 bin, the search must return the exact interval of
order keys (over scores in [-inf, m]) whose bin is the chosen one: ``bin(key_hi) >= chosen`` with the next key
already in a better bin (or ``key_hi`` the key of ``m``), and ``bin(key_lo) <= chosen`` with the previous key in a
worse bin (or ``key_lo`` the key of -inf). :func:`~rtpurbo.ops.triton.threshold_phases.probe_rounds` steps must
close it for the shipped probe count and for 32 probes; two steps fewer must leave some interval open (the check
catches an interval that is not closed).
"""
from __future__ import annotations

import importlib.util
import json

import pytest

from tests.triton_interpreter import COMPILE_CHECK, problem as interpreter_problem, report_checks, run_script

pytestmark = pytest.mark.skipif(interpreter_problem() is not None, reason=str(interpreter_problem()))

# (row max, inverse bin width, chosen bin): wide and narrow bins, a row max of 0 and of both signs, a tiny
# spread (bins far narrower than a logit), the first, a middle and the last (catch-all) bin; and maxima near the
# top of fp32, whose key range [key(-inf), key(m)] exceeds what 4 steps of 256 probes close (about 4.245e9 keys)
CASES = [(5.0, 1.3, 3), (-3.25, 0.5, 0), (0.0, 2.0, 31), (1e4, 1e6, 7), (-40.0, 1e-3 + 0.5, 1), (2.5, 64.0, 30),
         (7.0, 0.75, 12), (1e-20, 3e9, 5), (3.0e38, 0.5, 0), (3.0e38, 1e-30 + 0.5, 31), (1e38, 0.5, 0)]


if importlib.util.find_spec("triton") is not None:  # the kernel's globals must be module globals
    import triton
    import triton.language as tl

    from rtpurbo.ops.triton.threshold_phases import _key_score, _logit_bin, _logit_bin_keys, _order_key

    @triton.jit
    def _interval_kernel(case_ptr, out_ptr, PROBES: tl.constexpr, ROUNDS: tl.constexpr, N_LOGIT: tl.constexpr):
        c = tl.program_id(0)
        row_max = tl.load(case_ptr + 3 * c)
        inv_width = tl.load(case_ptr + 3 * c + 1)
        chosen = tl.load(case_ptr + 3 * c + 2).to(tl.int32)
        lo, hi = _logit_bin_keys(row_max, inv_width, chosen, N_LOGIT, PROBES, ROUNDS)
        idx = tl.arange(0, 4)
        keys = tl.where(idx == 0, lo - 1, tl.where(idx == 1, lo, tl.where(idx == 2, hi, _order_key(row_max))))
        bins = _logit_bin(_key_score(tl.maximum(keys, 0)), row_max, inv_width, N_LOGIT)
        tl.store(out_ptr + 8 * c + idx, keys)  # key_lo - 1, key_lo, key_hi, the key of m
        tl.store(out_ptr + 8 * c + 4 + idx, bins.to(tl.int64))



def _intervals(probes: int, rounds: int) -> list[dict]:
    import torch

    from rtpurbo.ops.triton.threshold_phases import N_LOGIT

    cases = torch.tensor(CASES, dtype=torch.float32)
    out = torch.zeros(len(CASES), 8, dtype=torch.int64)
    _interval_kernel[(len(CASES),)](cases, out, PROBES=probes, ROUNDS=rounds, N_LOGIT=N_LOGIT)
    rows = []
    for (m, inv_width, chosen), row in zip(CASES, out.tolist()):
        _, lo, hi, top = row[:4]
        bin_below_lo, bin_lo, bin_hi = row[4:7]
        rows.append(dict(case=(m, inv_width, chosen), lo=lo, hi=hi, bin_below_lo=bin_below_lo, bin_lo=bin_lo,
                         bin_hi=bin_hi, top=top, bin_above_hi=_host_bin(hi + 1, m, inv_width, N_LOGIT)))
    return rows


def _host_bin(key: int, row_max: float, inv_width: float, n_logit: int) -> int:
    """The level-0 bin of an order key, in fp32 as the kernel computes it."""
    import numpy as np

    bits = key - 2147483648 if key >= 2147483648 else -1 - key
    score = np.array([bits], dtype=np.int64).astype(np.int32).view(np.float32)[0]
    gap = (np.float32(row_max) - score) * np.float32(inv_width)
    return int(min(np.floor(gap), n_logit - 1)) if np.isfinite(gap) else n_logit - 1


def _open_ends(rows: list[dict]) -> list[str]:
    """Intervals that are not exactly the chosen bin's keys."""
    bottom = 2147483648 - 1 - 0x7F800000  # the order key of -inf
    problems = []
    for r in rows:
        chosen = r["case"][2]
        if r["bin_hi"] < chosen or (r["hi"] != r["top"] and r["bin_above_hi"] >= chosen):
            problems.append(f"{r['case']}: key_hi {r['hi']} (bin {r['bin_hi']}, next {r['bin_above_hi']})")
        if r["bin_lo"] > chosen or (r["lo"] != bottom and r["bin_below_lo"] <= chosen):
            problems.append(f"{r['case']}: key_lo {r['lo']} (bin {r['bin_lo']}, previous {r['bin_below_lo']})")
    return problems


def _check(probes: int, fewer: int) -> list[str]:
    from rtpurbo.ops.triton.threshold_phases import probe_rounds

    rounds = probe_rounds(probes) - fewer
    problems = _open_ends(_intervals(probes, rounds))
    if not fewer:
        return problems
    return [] if problems else [f"{rounds} steps of {probes} probes closed every interval"]


CHECKS = {"shipped-probes": (256, 0), "32-probes": (32, 0), "shipped-probes-two-steps-fewer": (256, 2),
          "32-probes-two-steps-fewer": (32, 2)}


def _run_all() -> dict[str, list[str]]:
    return report_checks([(name, lambda a=args: _check(*a)) for name, args in CHECKS.items()])


@pytest.fixture(scope="module")
def report() -> dict[str, list[str]]:
    return run_script(__file__)


def test_every_launch_compiles_for_hopper(report):
    """Each kernel launch the checks above made, compiled for sm_90 by Triton's compiler (no GPU needed)."""
    assert report[COMPILE_CHECK] == [], "\n".join(report[COMPILE_CHECK])


@pytest.mark.parametrize("name", list(CHECKS))
def test_logit_bin_key_interval_in_interpreter(report, name):
    assert report[name] == [], f"{name}: " + "; ".join(report[name])


def test_probe_rounds_counts_the_steps_that_close_the_key_range():
    from rtpurbo.ops.triton.threshold_phases import probe_rounds

    assert probe_rounds(256) == 5
    assert [probe_rounds(p) for p in (3, 32, 64, 257)] == [32, 7, 6, 4]
    # 4 steps of 256 probes close at most 255 * 16646656 + 1 keys; a 2^32 range needs the fifth
    assert probe_rounds(256, keys=255 * 16646656 + 1) == 4 and probe_rounds(256, keys=255 * 16646656 + 2) == 5
    with pytest.raises(ValueError, match="at least 3 probes"):
        probe_rounds(2)


if __name__ == "__main__":
    print(json.dumps(_run_all()))
