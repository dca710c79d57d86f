"""The walk over one search level's bins (``threshold_phases._walk``), on CPU through the Triton interpreter.

The walk picks the bin that holds the key being searched for, by mass or (when the token clamps decide) by rank,
and returns what the next level needs. It runs as one scan and a few reductions over several values per bin at
once; each case here checks its seven outputs against the rule written out in NumPy: random bins with empty runs,
targets reached early, late or never, both clamps (min_tokens above max_tokens, and max_tokens reached before the
bins, among them), a search that arrives by rank, and all-empty bins, for 32 and 2048 bins.
"""
from __future__ import annotations

import importlib.util
import json

import pytest

from tests.triton_interpreter import COMPILE_CHECK, problem as interpreter_problem, report_checks, run_script

pytestmark = pytest.mark.skipif(interpreter_problem() is not None, reason=str(interpreter_problem()))

BY_MASS, BY_RANK = 0, 1

if importlib.util.find_spec("triton") is not None:  # the kernel's globals must be module globals
    import triton
    import triton.language as tl

    from rtpurbo.ops.triton.threshold_phases import _walk

    @triton.jit
    def _walk_kernel(counts_ptr, masses_ptr, args_ptr, out_ptr, NB: tl.constexpr):
        c = tl.program_id(0)
        bins = tl.arange(0, NB)
        args = args_ptr + 7 * c
        chosen, mode, rank, before, mass_before, n_in, mass_in = _walk(
            tl.load(counts_ptr + c * NB + bins), tl.load(masses_ptr + c * NB + bins), tl.load(args),
            tl.load(args + 1), tl.load(args + 2), tl.load(args + 3), tl.load(args + 4), tl.load(args + 5),
            tl.load(args + 6), NB)
        out = out_ptr + 7 * c
        tl.store(out, chosen.to(tl.int64))
        tl.store(out + 1, mode.to(tl.int64))
        tl.store(out + 2, rank.to(tl.int64))
        tl.store(out + 3, before.to(tl.int64))
        tl.store(out + 4, mass_before.to(tl.int64))
        tl.store(out + 5, n_in.to(tl.int64))
        tl.store(out + 6, mass_in.to(tl.int64))


def walk_reference(counts, masses, above, mass_above, mode, rank, target, lower, upper) -> list[int]:
    """The walk's rule (``_walk``'s docstring) in NumPy: (bin, mode, rank, keys before, their mass, keys in, mass)."""
    import numpy as np

    n_bins = len(counts)
    cum_count = above + np.cumsum(counts)
    cum_mass = mass_above + np.cumsum(masses)
    reach = (cum_mass >= target) | (cum_count == cum_count[-1])
    by_mass = int(np.argmax(reach))
    through = int(cum_count[by_mass])
    before = through - int(counts[by_mass])
    too_few = through < lower
    if mode == BY_MASS and (too_few or before >= upper):
        mode, rank = BY_RANK, (min(lower, upper) if too_few else upper)
    holds = np.nonzero(cum_count >= rank)[0]
    chosen = (int(holds[0]) if len(holds) else n_bins) if mode == BY_RANK else by_mass
    if chosen == n_bins:
        return [chosen, mode, rank, 0, 0, 0, 0]
    return [chosen, mode, rank, int(cum_count[chosen] - counts[chosen]), int(cum_mass[chosen] - masses[chosen]),
            int(counts[chosen]), int(masses[chosen])]


def _cases(n_bins: int, seed: int) -> list[tuple]:
    """(counts, masses, above, mass_above, mode, rank, target, lower, upper) cases for ``n_bins`` bins."""
    import numpy as np

    rng = np.random.default_rng(seed)
    cases = []
    for i in range(36):
        counts = rng.integers(0, 50, n_bins) * (rng.random(n_bins) < 0.3)  # mostly empty bins
        if i % 8 == 7:
            counts[:] = 0
        masses = counts * rng.integers(1, 1 << 30, n_bins)
        above = int(rng.integers(0, 100))
        mass_above = int(rng.integers(0, 1 << 40))
        total_mass = mass_above + int(masses.sum())
        target = [int(total_mass * rng.random()), total_mass + 1, mass_above // 2][i % 3]  # early or late, never, at 0
        n_total = above + int(counts.sum())
        # the clamps: none, min_tokens late, max_tokens anywhere, both past every key, min_tokens above max_tokens,
        # max_tokens reached by the keys above the bins
        lower, upper = [(0, n_total), (int(n_total * 0.8) + 1, n_total), (0, int(rng.integers(0, n_total + 1))),
                        (n_total + 5, n_total + 7), (int(n_total * 0.9) + 1, n_total // 4), (0, above // 2)][i // 3 % 6]
        mode, rank = BY_MASS, 0
        if i % 5 == 4:  # arriving by rank, searching for one of the two clamps
            mode, rank = BY_RANK, [min(lower, upper), upper][i % 2]
        cases.append((counts, masses, above, mass_above, mode, rank, target, lower, upper))
    # min_tokens above max_tokens, the mass's bin (5: keys 51-60) holding rank max_tokens (55) with fewer keys through
    # it than min_tokens (100): too few, so the search goes on by rank, for max_tokens
    counts = np.zeros(n_bins, dtype=np.int64)
    counts[:10] = 10
    cases.append((counts, counts * 1000, 0, 0, BY_MASS, 0, 55000, 100, 55))
    return cases


def _check(n_bins: int) -> list[str]:
    import torch

    cases = _cases(n_bins, seed=n_bins)
    counts = torch.tensor([c[0] for c in cases], dtype=torch.int64)
    masses = torch.tensor([c[1] for c in cases], dtype=torch.int64)
    args = torch.tensor([c[2:] for c in cases], dtype=torch.int64)
    out = torch.zeros(len(cases), 7, dtype=torch.int64)
    _walk_kernel[(len(cases),)](counts, masses, args, out, NB=n_bins)
    problems = []
    for i, (case, got) in enumerate(zip(cases, out.tolist())):
        want = walk_reference(*case)
        if got != want:
            problems.append(f"case {i}: walk gave {got}, the rule {want}")
    return problems


def _run_all() -> dict[str, list[str]]:
    return report_checks([(f"{n}-bins", lambda n=n: _check(n)) for n in (32, 2048)])


@pytest.fixture(scope="module")
def report() -> dict[str, list[str]]:
    return run_script(__file__)


def test_every_launch_compiles_for_hopper(report):
    """Each kernel launch the checks above made, compiled for sm_90 by Triton's compiler (no GPU needed)."""
    assert report[COMPILE_CHECK] == [], "\n".join(report[COMPILE_CHECK])


@pytest.mark.parametrize("name", ["32-bins", "2048-bins"])
def test_walk_matches_its_rule_in_interpreter(report, name):
    assert report[name] == [], f"{name}: " + "; ".join(report[name])


if __name__ == "__main__":
    print(json.dumps(_run_all()))
