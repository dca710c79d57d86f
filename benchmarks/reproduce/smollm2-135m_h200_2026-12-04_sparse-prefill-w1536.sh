#!/usr/bin/env bash
# Reproduces benchmarks/results/smollm2-135m_h200_2026-12-04_sparse-prefill-w1536.md: the shipped adapter (local heads at
# W 1536) with its retrieval heads on the `mass`-scored sparse prefill (top-p 0.9 over key blocks, its config), on the
# suite's samples 0-99 at 4K and 8K and the 12 perplexity windows, paired per sample against the same adapter with
# dense retrieval prefill (the committed rows of smollm2-135m_h200_2026-12-04_window-1536.md) and against dense.
#
#   bash benchmarks/reproduce/smollm2-135m_h200_2026-12-04_sparse-prefill-w1536.sh prepare OUT        # CPU, ~4 min
#   bash benchmarks/reproduce/smollm2-135m_h200_2026-12-04_sparse-prefill-w1536.sh eval OUT EVAL100   # GPU, ~4 min
#   bash benchmarks/reproduce/smollm2-135m_h200_2026-12-04_sparse-prefill-w1536.sh analyse OUT RESULTS
#
# EVAL100: OUT/eval100/eval_data.npz from prepare (the same samples and windows as the committed rows: the windows'
# digest is 5bd12d561cf2aa73). The committed run split each length's 19 tasks over two processes, four at once on
# one H200 (206-221 s each). RESULTS: the folder beside this script's results file.
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
  suite_quarters "$out" "${3:?EVAL100}" "sp=smollm2-135m-rtpurbo@retrieval_prefill=sparse" sp
  ;;
analyse)
  results=${3:?RESULTS}
  python3 - "$out" "$results" "$here/benchmarks/results" <<'PY'
import gzip, json, sys
from pathlib import Path
from rtpurbo.config import dumps
from rtpurbo.eval.paired import markdown, paired_differences, perplexity_ratio
from rtpurbo.eval.paired_plot import write_comparisons
from rtpurbo.eval.report import merge_rows

run, results, committed = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
sys.path.insert(0, str(committed.parent / "reproduce"))
from committed_rows import dense_samples_0_99, suite_quarters, w1536_dense_prefill  # noqa: E402

dense = merge_rows("dense", dense_samples_0_99(committed))
dense_prefill = w1536_dense_prefill(committed)
sp = suite_quarters(run, "sp")
(results / "rows").mkdir(parents=True, exist_ok=True)
(results / "rows" / "sp.json.gz").write_bytes(gzip.compress(dumps(sp).encode(), mtime=0))
comparisons = {"vs_dense_prefill": paired_differences([dense_prefill, sp], "dense_prefill"),
               "vs_dense": paired_differences([dense, sp], "dense")}
lines = write_comparisons(comparisons, results)
print("\n".join(l for l in lines if l.startswith("| ") and ("±" in l or "%" in l)))
print("perplexity vs dense prefill", perplexity_ratio(sp, dense_prefill), "vs dense", perplexity_ratio(sp, dense))
PY
  ;;
*)
  echo "mode must be prepare, eval or analyse" >&2
  exit 2
  ;;
esac
