#!/usr/bin/env bash
# Reproduces benchmarks/results/smollm2-135m_h200_2026-12-04_window-1536.md: the shipped adapter's trained weights with
# the local heads at W 1536 instead of 1024 (no retraining), on the suite's samples 0-299 at 4K and 8K, samples
# 100-199 at 2K and the 12 perplexity windows of 8K, paired per sample against dense and against the same weights at
# W 1024 (the committed rows of smollm2-135m_h200_2026-12-04_shipped-300.md); and perplexity at W 1024 / 1536 / 2048
# on a CPU.
#
#   bash benchmarks/reproduce/smollm2-135m_h200_2026-12-04_window-1536.sh eval OUT EVAL100 EV300 E200  # GPU, ~8 min
#   bash benchmarks/reproduce/smollm2-135m_h200_2026-12-04_window-1536.sh cpu-perplexity OUT EVAL100   # 2 cores, 17 min
#   bash benchmarks/reproduce/smollm2-135m_h200_2026-12-04_window-1536.sh cpu-sparse-prefill OUT EVAL100  # 2 cores, 9 min
#   bash benchmarks/reproduce/smollm2-135m_h200_2026-12-04_window-1536.sh analyse OUT RESULTS           # any machine
#
# EVAL100 / EV300 / E200: samples 0-99 (4K, 8K, with the perplexity windows), 100-299 (2K, 4K, 8K) and 200-299 (8K)
# of smollm2-135m_h200_2026-12-03_sparse-student.sh, smollm2-135m_h200_2026-12-04_paired-300.sh and
# smollm2-135m_h200_2026-12-04_shipped-300.sh prepare. The committed run ran the six evals at once on one H200
# (464 s), with the adapter of this commit's parent (W 1024 in its config; the row sets W 1536).
# RESULTS: the folder written beside this script's results file (merged row, paired tables and plots).
set -euo pipefail
mode=${1:?usage: $0 eval|cpu-perplexity|cpu-sparse-prefill|analyse OUT ...}
out=${2:?OUT}
rt=(${RTPURBO:-python3 -m rtpurbo.cli})
here=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$out"
case "$mode" in
eval)
  eval100=${3:?EVAL100}; ev300=${4:?EV300}; e200=${5:?E200}
  row="w1536=smollm2-135m-rtpurbo@window=1536"
  ev() {  # ev NAME DATA SAMPLES LENGTH PPL_WINDOWS
    "${rt[@]}" eval --model smollm2-135m --speed-repeats 0 --batch-size 16 --decode graph --data "$2" --samples "$3" \
      --lengths "$4" --ppl-windows "$5" --rows --artifacts "$row" --out "$out/$1"
  }
  ev w-100-4k "$eval100" 100 4096 12 &
  ev w-100-8k "$eval100" 100 8192 0 &
  ev w-300-4k "$ev300" 200 4096 0 &
  ev w-300-8k "$ev300" 100 8192 0 &
  ev w-200-8k "$e200" 100 8192 0 &
  ev w-300-2k "$ev300" 100 2048 0 &
  wait
  ;;
cpu-perplexity)
  eval100=${3:?EVAL100}
  python3 - "$eval100" "$out/cpu_perplexity_windows.json" <<'PY'
import json, math, sys
import torch
from rtpurbo import io
from rtpurbo.data.task_data import load_task_data
from rtpurbo.eval.paired import perplexity_ratio
from rtpurbo.eval.perplexity import perplexity
from rtpurbo.models import load_base

torch.set_num_threads(2)
rows = {}
def run(name, model, windows):
    per = []
    for w in windows:
        r = perplexity(model, [w], (0, len(w)), progress=False)
        per.append({"all": [r.nll_sum, r.tokens]})
    nll, tokens = sum(p["all"][0] for p in per), sum(p["all"][1] for p in per)
    rows[name] = {"row": name, "units": {"perplexity": {"digest": "windows", "windows": per}},
                  "perplexity": math.exp(nll / tokens)}
base, tokenizer = load_base("smollm2-135m")
windows = load_task_data(sys.argv[1], tokenizer).windows
run("dense", base, windows)
model, _ = io.load(io.artifact_path("smollm2-135m-rtpurbo"))
for width in (1024, 1536, 2048):
    model.rtpurbo_sparse.window = width
    run(f"W{width}", model, windows)
for name, row in rows.items():
    if name != "dense":
        row["vs_dense"] = perplexity_ratio(row, rows["dense"])
json.dump({"windows": len(windows), "device": "cpu", "dtype": "float32", "torch": torch.__version__, "rows": rows},
          open(sys.argv[2], "w"), indent=1)
PY
  ;;
cpu-sparse-prefill)  # the shipped adapter (W 1536) with mass-scored sparse retrieval prefill against its dense prefill
  eval100=${3:?EVAL100}
  python3 "$here/benchmarks/sparse_prefill_perplexity.py" --model smollm2-135m-rtpurbo --data "$eval100" --threads 2 \
    --variants dense mass@0.9 --out "$out/cpu_perplexity_sparse_prefill.json"
  ;;
analyse)
  results=${3:?RESULTS}
  python3 - "$out" "$results" "$here/benchmarks/results" <<'PY'
import gzip, sys
from pathlib import Path
from rtpurbo.config import dumps
from rtpurbo.eval.paired import paired_differences, perplexity_ratio
from rtpurbo.eval.paired_plot import write_comparisons
from rtpurbo.eval.report import merge_rows, stored_row as part

run, results, committed = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
sys.path.insert(0, str(committed.parent / "reproduce"))
from committed_rows import dense_samples_0_99  # noqa: E402

dense = merge_rows("dense", dense_samples_0_99(committed) + [part(committed / "smollm2-135m_h200_2026-12-04_paired-300",
                                                                     "dense")])
w1024 = part(committed / "smollm2-135m_h200_2026-12-04_shipped-300", "mass")[1]
w1536 = merge_rows("w1536", [part(run / d, "w1536") for d in
                             ("w-100-4k", "w-100-8k", "w-300-4k", "w-300-8k", "w-200-8k", "w-300-2k")])
(results / "rows").mkdir(parents=True, exist_ok=True)
(results / "rows" / "w1536.json.gz").write_bytes(gzip.compress(dumps(w1536).encode(), mtime=0))
comparisons = {"vs_dense": paired_differences([dense, w1536], "dense"),
               "vs_w1024": paired_differences([{**w1024, "row": "w1024"}, w1536], "w1024")}
lines = write_comparisons(comparisons, results)
print("\n".join(l for l in lines if l.startswith("| ") and ("±" in l or "%" in l)))
for name, row in (("w1536", w1536), ("w1024", w1024)):
    print(name, "perplexity vs dense", perplexity_ratio(row, dense), "KV bytes/token", row["kv_bytes_per_token"])
PY
  ;;
*)
  echo "mode must be eval, cpu-perplexity, cpu-sparse-prefill or analyse" >&2
  exit 2
  ;;
esac
