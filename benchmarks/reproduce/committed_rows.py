"""Committed SmolLM2 eval rows that the analyse steps of several reproduce scripts pair against.

    sys.path.insert(0, "benchmarks/reproduce"); from committed_rows import dense_samples_0_99
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rtpurbo.eval.report import merge_rows, stored_row


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
    return merge_rows(name, [stored_row(run / f"{name}-{part}", name) for part in ("4k-a", "4k-b", "8k-a", "8k-b")])


def committed_row(committed: Path, folder: str, name: str) -> dict[str, Any]:
    """Row ``name`` as committed in ``committed/FOLDER/rows/NAME.json.gz`` (a results folder's merged row)."""
    import gzip
    import json

    row = json.loads(gzip.decompress((committed / folder / "rows" / f"{name}.json.gz").read_bytes()))
    return {**row, "row": name}


# reference rows of the sparse-prefill analyses: name -> (comparison key, loader from ``benchmarks/results``)
REFERENCES = {
    "dense_prefill": ("vs_dense_prefill", w1536_dense_prefill),
    "spt": ("vs_tail_256", lambda c: committed_row(c, "smollm2-135m_h200_2026-12-04_sparse-prefill-dense-tail", "spt")),
    "sp": ("vs_sparse_prefill", lambda c: committed_row(c, "smollm2-135m_h200_2026-12-04_sparse-prefill-w1536", "sp")),
    "dense": ("vs_dense", lambda c: merge_rows("dense", dense_samples_0_99(c))),
}


def analyse_suite_row(run: Path, results: Path, committed: Path, name: str, references: list[str]) -> None:
    """Row ``name`` of ``suite_quarters.sh``'s four evals in ``run``, paired sample by sample against committed
    ``references`` (names of :data:`REFERENCES`, in order): writes ``results/rows/NAME.json.gz`` and the paired
    tables and plots, prints their summary lines and the perplexity ratios."""
    import gzip

    from rtpurbo.config import dumps
    from rtpurbo.eval.paired import paired_differences, perplexity_ratio
    from rtpurbo.eval.paired_plot import write_comparisons

    row = suite_quarters(run, name)
    (results / "rows").mkdir(parents=True, exist_ok=True)
    (results / "rows" / f"{name}.json.gz").write_bytes(gzip.compress(dumps(row).encode(), mtime=0))
    loaded = {ref: REFERENCES[ref][1](committed) for ref in references}
    comparisons = {REFERENCES[ref][0]: paired_differences([loaded[ref], row], loaded[ref]["row"])
                   for ref in references}
    lines = write_comparisons(comparisons, results)
    print("\n".join(line for line in lines if line.startswith("| ") and ("±" in line or "%" in line)))
    for ref in references:
        print(f"perplexity vs {ref}", perplexity_ratio(row, loaded[ref]))


if __name__ == "__main__":  # python3 committed_rows.py RUN RESULTS NAME REFERENCE...
    import sys

    analyse_suite_row(Path(sys.argv[1]), Path(sys.argv[2]), Path(__file__).resolve().parents[1] / "results",
                      sys.argv[3], sys.argv[4:])
