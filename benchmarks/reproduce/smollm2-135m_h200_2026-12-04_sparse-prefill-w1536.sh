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
rt=(${RTPURBO:-python3 -m rtpurbo.cli})
here=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$out"
case "$mode" in
prepare)
  "${rt[@]}" eval --prepare-only --lengths 4096 8192 --samples 100 --ppl-windows 12 --workers 2 --out "$out/eval100"
  ;;
eval)
  # shellcheck source=suite_quarters.sh
  source "$(dirname "$0")/suite_quarters.sh"
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
from rtpurbo.eval.report import merge_rows, stored_row as part

run, results, committed = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
sys.path.insert(0, str(committed.parent / "reproduce"))
from committed_rows import dense_samples_0_99  # noqa: E402

dense = merge_rows("dense", dense_samples_0_99(committed))
w1536 = part(committed / "smollm2-135m_h200_2026-12-04_window-1536", "w1536")[1]
sp = merge_rows("sp", [part(run / d, "sp") for d in ("sp-4k-a", "sp-4k-b", "sp-8k-a", "sp-8k-b")])
(results / "rows").mkdir(parents=True, exist_ok=True)
(results / "rows" / "sp.json.gz").write_bytes(gzip.compress(dumps(sp).encode(), mtime=0))
comparisons = {"vs_dense_prefill": paired_differences([{**w1536, "row": "dense_prefill"}, sp], "dense_prefill"),
               "vs_dense": paired_differences([dense, sp], "dense")}
lines = write_comparisons(comparisons, results)
print("\n".join(l for l in lines if l.startswith("| ") and ("±" in l or "%" in l)))
print("perplexity vs dense prefill", perplexity_ratio(sp, w1536), "vs dense", perplexity_ratio(sp, dense))
print("prefill blocks kept:", json.dumps({k: v for k, v in sp.items() if "prefill" in k or "block" in k})[:600])
PY
  ;;
*)
  echo "mode must be prepare, eval or analyse" >&2
  exit 2
  ;;
esac
