#!/usr/bin/env bash
# Reproduces benchmarks/results/smollm2-135m_h200_2026-12-04_dense-tail-1024.md: the shipped adapter (local heads at W 1536)
# with its retrieval heads on the `mass`-scored sparse prefill and a dense tail of 1024 queries (prefill_dense_tail), on the
# suite's samples 0-99 at 4K and 8K and the 12 perplexity windows, paired per sample against the same adapter with dense
# retrieval prefill, its sparse prefill without a tail and with a 256-query tail (the committed rows), and dense.
#
#   bash benchmarks/reproduce/smollm2-135m_h200_2026-12-04_dense-tail-1024.sh prepare OUT        # CPU, ~4 min
#   bash benchmarks/reproduce/smollm2-135m_h200_2026-12-04_dense-tail-1024.sh eval OUT EVAL100   # GPU, ~4 min
#   bash benchmarks/reproduce/smollm2-135m_h200_2026-12-04_dense-tail-1024.sh analyse OUT RESULTS
#
# EVAL100: OUT/eval100/eval_data.npz from prepare (the committed rows' samples; the windows' digest is
# 5bd12d561cf2aa73). The committed run ran the four evals at once on one H200 (263 s in all). RESULTS: the folder
# beside this script's results file.
set -euo pipefail
mode=${1:?usage: $0 prepare|eval|analyse OUT ...}
out=${2:?OUT}
here=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$out"
# shellcheck source=suite_quarters.sh
source "$(dirname "$0")/suite_quarters.sh"
case "$mode" in
prepare)
  suite_prepare "$out"
  ;;
eval)
  suite_quarters "$out" "${3:?EVAL100}" "spt1k=smollm2-135m-rtpurbo@retrieval_prefill=sparse,prefill_dense_tail=1024" spt1k
  ;;
analyse)
  results=${3:?RESULTS}
  python3 - "$out" "$results" "$here/benchmarks/results" <<'PY'
import gzip, json, sys
from pathlib import Path
from rtpurbo.config import dumps
from rtpurbo.eval.paired import paired_differences, perplexity_ratio
from rtpurbo.eval.paired_plot import write_comparisons
from rtpurbo.eval.report import merge_rows

run, results, committed = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
sys.path.insert(0, str(committed.parent / "reproduce"))
from committed_rows import dense_samples_0_99, suite_quarters, w1536_dense_prefill  # noqa: E402


def committed_row(folder: str, name: str) -> dict:
    return json.loads(gzip.decompress((committed / folder / "rows" / f"{name}.json.gz").read_bytes()))


dense = merge_rows("dense", dense_samples_0_99(committed))
dense_prefill = w1536_dense_prefill(committed)
sp = {**committed_row("smollm2-135m_h200_2026-12-04_sparse-prefill-w1536", "sp"), "row": "sp"}
spt = {**committed_row("smollm2-135m_h200_2026-12-04_sparse-prefill-dense-tail", "spt"), "row": "spt"}
spt1k = suite_quarters(run, "spt1k")
(results / "rows").mkdir(parents=True, exist_ok=True)
(results / "rows" / "spt1k.json.gz").write_bytes(gzip.compress(dumps(spt1k).encode(), mtime=0))
comparisons = {"vs_dense_prefill": paired_differences([dense_prefill, spt1k], "dense_prefill"),
               "vs_tail_256": paired_differences([spt, spt1k], "spt"),
               "vs_sparse_prefill": paired_differences([sp, spt1k], "sp"),
               "vs_dense": paired_differences([dense, spt1k], "dense")}
lines = write_comparisons(comparisons, results)
print("\n".join(l for l in lines if l.startswith("| ") and ("±" in l or "%" in l)))
print("perplexity vs dense prefill", perplexity_ratio(spt1k, dense_prefill), "vs tail 256", perplexity_ratio(spt1k, spt),
      "vs sp", perplexity_ratio(spt1k, sp), "vs dense", perplexity_ratio(spt1k, dense))
PY
  ;;
*)
  echo "mode must be prepare, eval or analyse" >&2
  exit 2
  ;;
esac
