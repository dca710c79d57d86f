#!/usr/bin/env bash
# Reproduces benchmarks/results/smollm2-135m_h200_2026-12-04_shipped-300.md: the shipped adapter (smollm2-135m-rtpurbo
# as of git 9659634, trained with a mass-scored sparse student) on 300 samples per task at 2K, 4K and 8K, with dense
# retrieval prefill against dense, and with sparse retrieval prefill (top-p 0.9, mass block scores) against its
# own dense retrieval prefill. Samples 0-99 (and 4K 100-299, 8K 100-199 of the dense-prefill row) are the rows of
# smollm2-135m_h200_2026-12-04_mass-scoring.sh; this run adds the rest.
#
#   bash benchmarks/reproduce/smollm2-135m_h200_2026-12-04_shipped-300.sh prepare OUT            # CPU, ~1 min
#   bash benchmarks/reproduce/smollm2-135m_h200_2026-12-04_shipped-300.sh eval OUT EV300         # GPU, ~7 min
#   bash benchmarks/reproduce/smollm2-135m_h200_2026-12-04_shipped-300.sh analyse OUT RESULTS    # any machine
#
# EV300: samples 100-299 of smollm2-135m_h200_2026-12-04_paired-300.sh prepare. prepare writes samples 200-299 at 8K
# alone (the same prompts as EV300's, by seed), so that 8K samples 200-299 run without repeating 100-199. The
# committed run ran the five evals at once on one H200 (435 s).
# RESULTS: the folder written beside this script's results file (merged rows, paired tables and plots).
set -euo pipefail
mode=${1:?usage: $0 prepare|eval|analyse OUT ...}
out=${2:?OUT}
rt=(${RTPURBO:-python3 -m rtpurbo.cli})
here=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$out"
case "$mode" in
prepare)
  "${rt[@]}" eval --prepare-only --lengths 8192 --samples 100 --first-sample 200 --ppl-windows 0 --workers 2 \
    --out "$out/e200"
  ;;
eval)
  ev300=${3:?EV300}
  mkdir -p "$out/adapter"
  git -C "$here" archive 9659634 rtpurbo/adapters/smollm2-135m-rtpurbo | tar -x -C "$out/adapter"
  shipped=$out/adapter/rtpurbo/adapters/smollm2-135m-rtpurbo
  sp="mass-sp-mass=$shipped@retrieval_prefill=sparse,prefill_top_p=0.9,prefill_scoring=mass"
  ev() {  # ev NAME DATA SAMPLES LENGTH ROW
    "${rt[@]}" eval --model smollm2-135m --speed-repeats 0 --batch-size 16 --decode graph --ppl-windows 0 \
      --data "$2" --samples "$3" --lengths "$4" --rows --artifacts "$5" --out "$out/$1"
  }
  ev sp-300-4k "$ev300" 200 4096 "$sp" &
  ev sp-300-8k "$ev300" 100 8192 "$sp" &
  ev sp-200-8k "$out/e200/eval_data.npz" 100 8192 "$sp" &
  ev mass-200-8k "$out/e200/eval_data.npz" 100 8192 "mass=$shipped" &
  ev mass-300-2k "$ev300" 200 2048 "mass=$shipped" &
  wait
  ;;
analyse)
  results=${3:?RESULTS}
  python3 - "$out" "$results" "$here/benchmarks/results" <<'PY'
import gzip, sys
from pathlib import Path
from rtpurbo.config import dumps
from rtpurbo.eval.paired import paired_differences
from rtpurbo.eval.paired_plot import write_comparisons
from rtpurbo.eval.report import merge_rows, stored_row as part

run, results, committed = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
mass_scoring = committed / "smollm2-135m_h200_2026-12-04_mass-scoring"
p300 = committed / "smollm2-135m_h200_2026-12-04_paired-300"

sys.path.insert(0, str(committed.parent / "reproduce"))
from committed_rows import dense_samples_0_99  # noqa: E402

rows = {
    "dense": merge_rows("dense", dense_samples_0_99(committed) + [part(p300, "dense")]),
    "mass": merge_rows("mass", [part(mass_scoring, "mass"), part(run / "mass-300-2k", "mass"),
                                part(run / "mass-200-8k", "mass")]),
    "mass-sp-mass": merge_rows("mass-sp-mass", [part(mass_scoring, "mass-sp-mass")] + [
        part(run / d, "mass-sp-mass") for d in ("sp-300-4k", "sp-300-8k", "sp-200-8k")]),
}
(results / "rows").mkdir(parents=True, exist_ok=True)
for name in ("mass", "mass-sp-mass"):
    (results / "rows" / f"{name}.json.gz").write_bytes(gzip.compress(dumps(rows[name]).encode(), mtime=0))
comparisons = {
    "vs_dense": paired_differences([rows["dense"], rows["mass"]], "dense"),
    "sparse_prefill": paired_differences([rows["mass"], rows["mass-sp-mass"]], "mass"),
}
lines = write_comparisons(comparisons, results)
print("\n".join(l for l in lines if l.startswith("| ") and ("±" in l or "%" in l)))
PY
  ;;
*)
  echo "mode must be prepare, eval or analyse" >&2
  exit 2
  ;;
esac
