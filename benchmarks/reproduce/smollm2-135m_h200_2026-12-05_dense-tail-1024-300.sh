#!/usr/bin/env bash
# Reproduces benchmarks/results/smollm2-135m_h200_2026-12-05_dense-tail-1024-300.md: the shipped adapter (local heads at
# W 1536) with its retrieval heads on the `mass`-scored sparse prefill and a 1024-query dense tail, on the suite's 8K
# samples 100-299 (19 tasks), paired per sample against the same adapter with dense retrieval prefill (the committed
# w1536 row of smollm2-135m_h200_2026-12-04_window-1536.md, samples 0-299), and pooled with the committed samples 0-99
# (smollm2-135m_h200_2026-12-04_dense-tail-1024.md).
#
#   bash benchmarks/reproduce/smollm2-135m_h200_2026-12-05_dense-tail-1024-300.sh prepare OUT   # CPU, ~2 min
#   bash benchmarks/reproduce/smollm2-135m_h200_2026-12-05_dense-tail-1024-300.sh eval OUT      # GPU, ~6 min
#   bash benchmarks/reproduce/smollm2-135m_h200_2026-12-05_dense-tail-1024-300.sh analyse OUT RESULTS
#
# The committed run split each block's 19 tasks over four evals instead of two (the same samples and batches per task),
# four at once on one H200, one block after the other (199 s and 161 s). RESULTS: the
# folder beside this script's results file. RTPURBO: the command (default python3 -m rtpurbo.cli); MODEL: the base
# model (default the embedded smollm2-135m).
set -euo pipefail
mode=${1:?usage: $0 prepare|eval|analyse OUT ...}
out=${2:?OUT}
rt=(${RTPURBO:-python3 -m rtpurbo.cli})
row="spt1k=smollm2-135m-rtpurbo@retrieval_prefill=sparse,prefill_dense_tail=1024"
mkdir -p "$out"
case "$mode" in
prepare)
  for first in 100 200; do
    "${rt[@]}" eval --prepare-only --lengths 8192 --samples 100 --first-sample "$first" --ppl-windows 0 --workers 2 \
      --out "$out/e$first"
  done
  ;;
eval)
  # shellcheck source=suite_quarters.sh
  source "$(dirname "$0")/suite_quarters.sh"
  ev() {  # ev BLOCK PART TASKS
    # shellcheck disable=SC2086
    "${rt[@]}" eval --model "${MODEL:-smollm2-135m}" --speed-repeats 0 --batch-size 16 --decode graph \
      --data "$out/$1/eval_data.npz" --samples 100 --lengths 8192 --ppl-windows 0 --tasks $3 --rows \
      --artifacts "$row" --out "$out/$1-$2"
  }
  ev e100 a "$SUITE_TASKS_A" &
  ev e100 b "$SUITE_TASKS_B" &
  ev e200 a "$SUITE_TASKS_A" &
  ev e200 b "$SUITE_TASKS_B" &
  wait
  ;;
analyse)
  results=${3:?analyse needs RESULTS}
  PYTHONPATH="$(dirname "$0")${PYTHONPATH:+:$PYTHONPATH}" python3 - "$out" "$results" "$(cd "$(dirname "$0")/../results" && pwd)" <<'PY'
import gzip
import sys
from pathlib import Path

from committed_rows import committed_row, w1536_dense_prefill
from rtpurbo.config import dumps
from rtpurbo.eval.paired import paired_differences
from rtpurbo.eval.paired_plot import write_comparisons
from rtpurbo.eval.report import merge_rows, stored_row

run, results, committed = (Path(arg) for arg in sys.argv[1:4])
new = merge_rows("spt1k", [stored_row(part, "spt1k") for block in ("e100", "e200")
                          for part in sorted(run.glob(f"{block}-*")) if part.is_dir()])
(results / "rows").mkdir(parents=True, exist_ok=True)
(results / "rows" / "spt1k_8k_100_299.json.gz").write_bytes(gzip.compress(dumps(new).encode(), mtime=0))
reference = w1536_dense_prefill(committed)
# samples 0-99 (committed, 2026-12-04) were evaluated before the base-model fingerprint joined a row's identity
earlier = committed_row(committed, "smollm2-135m_h200_2026-12-04_dense-tail-1024", "spt1k")
identity = {key: value for key, value in new["identity"].items() if key != "base_model"}
pooled = merge_rows("spt1k", [("samples 0-99", earlier), ("samples 100-299", {**new, "identity": identity})])
lines = write_comparisons({"vs_dense_prefill_100_299": paired_differences([reference, new], "dense_prefill"),
                           "vs_dense_prefill_0_299": paired_differences([reference, pooled], "dense_prefill")},
                          results)
print("\n".join(line for line in lines if line.startswith("| spt1k")))
PY
  ;;
*)
  echo "mode must be prepare, eval or analyse" >&2
  exit 2
  ;;
esac
