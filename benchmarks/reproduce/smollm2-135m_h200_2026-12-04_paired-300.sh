#!/usr/bin/env bash
# Reproduces benchmarks/results/smollm2-135m_h200_2026-12-04_paired-300.md: the shipped adapter against dense on
# 300 samples per task at 2K, 4K and 8K (samples 100-299 added to the committed 0-99), and two stage-2 variants:
# "more" (the shipped adapter continued on the long-range mix) and "seed1" (the shipped recipe with another seed).
#
#   bash benchmarks/reproduce/smollm2-135m_h200_2026-12-04_paired-300.sh prepare OUT          # CPU, ~3 min
#   bash benchmarks/reproduce/smollm2-135m_h200_2026-12-04_paired-300.sh train OUT MIX        # GPU, ~6 min (2 at once)
#   bash benchmarks/reproduce/smollm2-135m_h200_2026-12-04_paired-300.sh eval OUT EVAL100 E2K # GPU, ~15 min
#   bash benchmarks/reproduce/smollm2-135m_h200_2026-12-04_paired-300.sh analyse OUT RESULTS  # any machine, seconds
#
# MIX: the long-range stage-2 shards of smollm2-135m_h200_2026-12-03_stage2-continue.sh (prepare, run mix).
# EVAL100 / E2K: the 0-99 sample files of smollm2-135m_h200_2026-12-03_sparse-student.sh. The committed run ran the
# evals as several background jobs in consecutive calls on one H200 (rows resume where a call stopped); "more" was
# stopped there before finishing samples 100-299 at 4K and 8K (the report says which units it holds).
# RESULTS: the folder written beside this script's results file (rows of the runs, paired tables and plots).
set -euo pipefail
mode=${1:?usage: $0 prepare|train|eval|analyse OUT ...}
out=${2:?OUT}
rt=(${RTPURBO:-python3 -m rtpurbo.cli})
here=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$out"
case "$mode" in
prepare)  # samples 100-299 of every task at 2K, 4K and 8K (the eval split; no perplexity windows)
  "${rt[@]}" eval --prepare-only --lengths 2048 4096 8192 --samples 200 --first-sample 100 --ppl-windows 0 \
    --workers 2 --out "$out/ev300"
  ;;
train)
  mix=${3:?MIX}
  mkdir -p "$out/start"  # the adapter the shipped one was trained from (its stage 2 before the sparse student)
  git -C "$here" archive f82140e rtpurbo/adapters/smollm2-135m-rtpurbo | tar -x -C "$out/start"
  common=(--lr 1.2e-4 --warmup 10 --no-gradient-checkpointing --checkpoint-every 100 --keep-checkpoints --json)
  "${rt[@]}" distill --model smollm2-135m-rtpurbo --data "$mix" --steps 300 --time-budget 330 "${common[@]}" \
    --out "$out/more" > "$out/more.json" &
  "${rt[@]}" distill --model "$out/start/rtpurbo/adapters/smollm2-135m-rtpurbo" --data "$mix" --steps 200 --seed 1 \
    --time-budget 300 "${common[@]}" --out "$out/seed1" > "$out/seed1.json" &
  wait
  ;;
eval)
  eval100=${3:?EVAL100}; e2k=${4:?E2K}; ev300=$out/ev300/eval_data.npz
  common=(--model smollm2-135m --speed-repeats 0 --batch-size 16 --decode graph)
  ev() { "${rt[@]}" eval "${common[@]}" "$@"; }
  ev --data "$ev300" --samples 200 --ppl-windows 0 --lengths 2048 4096 --rows dense --out "$out/dense-300-a" &
  ev --data "$ev300" --samples 200 --ppl-windows 0 --lengths 8192 --rows dense --out "$out/dense-300-b" &
  ev --data "$ev300" --samples 200 --ppl-windows 0 --lengths 2048 4096 --rows --artifacts shipped=smollm2-135m-rtpurbo \
    --out "$out/shipped-300-a" &
  ev --data "$ev300" --samples 200 --ppl-windows 0 --lengths 8192 --rows --artifacts shipped=smollm2-135m-rtpurbo \
    --out "$out/shipped-300-b" &
  ev --data "$e2k" --samples 100 --ppl-windows 0 --lengths 2048 --rows --artifacts shipped=smollm2-135m-rtpurbo \
    --out "$out/shipped-2k" &
  wait
  for n in more seed1; do
    for length in 4096 8192; do
      ev --data "$eval100" --samples 100 --ppl-windows 12 --lengths $length --rows --artifacts "$n=$out/$n" \
        --out "$out/eval-$n-$length" &
    done
  done
  wait
  ev --data "$ev300" --samples 200 --ppl-windows 0 --lengths 2048 4096 --rows --artifacts "more=$out/more" \
    --out "$out/more-300-a" &
  ev --data "$ev300" --samples 200 --ppl-windows 0 --lengths 8192 --rows --artifacts "more=$out/more" \
    --out "$out/more-300-b" &
  ev --data "$e2k" --samples 100 --ppl-windows 0 --lengths 2048 --rows --artifacts "more=$out/more" --out "$out/more-2k" &
  wait
  ;;
analyse)
  results=${3:?RESULTS}
  python3 - "$out" "$results" "$here/benchmarks/results" <<'PY'
import gzip, sys
from pathlib import Path
from rtpurbo.eval.paired import paired_differences
from rtpurbo.eval.paired_plot import write_comparisons
from rtpurbo.config import dumps
from rtpurbo.eval.report import merge_rows, stored_row as part

run, results, committed = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
sys.path.insert(0, str(committed.parent / "reproduce"))
from committed_rows import dense_samples_0_99  # noqa: E402

# the new runs' rows, one merged row per name, kept beside the results file
new = {name: merge_rows(name, [part(run / d, name) for d in dirs]) for name, dirs in {
    "dense": ["dense-300-a", "dense-300-b"],
    "shipped": ["shipped-2k", "shipped-300-a", "shipped-300-b"],
    "more": ["eval-more-4096", "eval-more-8192", "more-2k", "more-300-a", "more-300-b"],
    "seed1": ["eval-seed1-4096", "eval-seed1-8192"]}.items()}
(results / "rows").mkdir(parents=True, exist_ok=True)
for name, row in new.items():
    (results / "rows" / f"{name}.json.gz").write_bytes(gzip.compress(dumps(row).encode(), mtime=0))

student = committed / "smollm2-135m_h200_2026-12-03_sparse-student"
dense = merge_rows("dense", dense_samples_0_99(committed) + [("new", new["dense"])])
mix_sp = part(student / "eval-mix-sp", "mix-sp")  # the shipped adapter under its run name, samples 0-99
shipped = merge_rows("shipped", [mix_sp, ("new", new["shipped"])])
comparisons = {
    "vs_dense": paired_differences([dense, shipped, new["more"], new["seed1"]], "dense"),
    "vs_shipped": paired_differences([shipped, new["more"], new["seed1"]], "shipped"),
    "vs_dense_samples_100_299": paired_differences([new["dense"], new["shipped"]], "dense"),
}
lines = write_comparisons(comparisons, results)
print("\n".join(l for l in lines if l.startswith("| ") and ("±" in l or "%" in l)))
PY
  ;;
*)
  echo "mode must be prepare, train, eval or analyse" >&2
  exit 2
  ;;
esac
