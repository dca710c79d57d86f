"""Committed SmolLM2 eval rows that the analyse steps of several reproduce scripts pair against.

    sys.path.insert(0, "benchmarks/reproduce"); from committed_rows import dense_samples_0_99
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rtpurbo.eval.report import stored_row


def dense_samples_0_99(committed: Path) -> list[tuple[str, dict[str, Any]]]:
    """The dense row's samples 0-99 as :func:`rtpurbo.eval.report.merge_rows` parts, from ``committed``
    (``benchmarks/results``): 4K / 8K from the 2026-12-03 fidelity run, 2K from the sparse-student run.

    The 4K / 8K rows predate the ``decode`` identity key: they decoded answers eagerly, every later row with CUDA
    graphs (the same greedy computation through a static cache), so they are marked graph-decoded to join them.
    ``smollm2-135m_h200_2026-12-04_paired-300.md`` also pairs the graph-decoded samples 100-299 alone."""
    where, row = stored_row(committed / "smollm2-135m_h200_2026-12-03_fidelity/fid-dense", "dense")
    assert "decode" not in row["identity"], where
    return [(where, {**row, "identity": {**row["identity"], "decode": "graph"}}),
            stored_row(committed / "smollm2-135m_h200_2026-12-03_sparse-student/eval-2k", "dense")]


def w1536_dense_prefill(committed: Path) -> dict[str, Any]:
    """The shipped adapter at W 1536 with dense retrieval prefill (``smollm2-135m_h200_2026-12-04_window-1536``),
    samples 0-99, named ``dense_prefill``: the reference of the sparse-prefill rows."""
    row = stored_row(committed / "smollm2-135m_h200_2026-12-04_window-1536", "w1536")[1]
    return {**row, "row": "dense_prefill"}


def suite_quarters(run: Path, name: str) -> dict[str, Any]:
    """Row ``name`` merged from the four evals of ``suite_quarters.sh`` (``run/NAME-4k-a`` ... ``-8k-b``)."""
    from rtpurbo.eval.report import merge_rows

    return merge_rows(name, [stored_row(run / f"{name}-{part}", name) for part in ("4k-a", "4k-b", "8k-a", "8k-b")])
