#!/usr/bin/env bash
# Reproduces benchmarks/results/smollm2-135m_h200_2026-12-04_mass-scoring.md: sparse retrieval prefill with mass
# block scores on the GPU eval suite, and stage 2 with a mass-scored sparse student ("mass", shipped since as
# smollm2-135m-rtpurbo), paired against dense and against the adapter it replaced ("shipped": git 3e8b54f).
#
#   bash benchmarks/reproduce/smollm2-135m_h200_2026-12-04_mass-scoring.sh train OUT MIX                 # GPU, ~3 min
#   bash benchmarks/reproduce/smollm2-135m_h200_2026-12-04_mass-scoring.sh eval OUT EVAL100 E2K EV300    # GPU, ~12 min
#   bash benchmarks/reproduce/smollm2-135m_h200_2026-12-04_mass-scoring.sh analyse OUT RESULTS           # any machine
#   bash benchmarks/reproduce/smollm2-135m_h200_2026-12-04_mass-scoring.sh cpu-perplexity OUT EVAL100    # 2 cores, 10 min
#   bash benchmarks/reproduce/smollm2-135m_h200_2026-12-04_mass-scoring.sh cpu-code OUT                  # 2 cores, 5 min
#
# MIX: the long-range stage-2 shards of smollm2-135m_h200_2026-12-03_stage2-continue.sh (prepare, run mix).
# EVAL100 / E2K: the sample 0-99 files of smollm2-135m_h200_2026-12-03_sparse-student.sh; EV300: samples 100-299 of
# smollm2-135m_h200_2026-12-04_paired-300.sh prepare. The committed run ran train and the shipped adapter's rows at
# once (calls P and R on one H200), then the student's rows; its 8K rows on samples 100-199 only (--samples 100).
# RESULTS: the folder written beside this script's results file (merged rows, paired tables and plots).
set -euo pipefail
mode=${1:?usage: $0 train|eval|cpu-perplexity|cpu-code|analyse OUT ...}
out=${2:?OUT}
rt=(${RTPURBO:-python3 -m rtpurbo.cli})
here=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$out"
archive() {  # archive COMMIT DIR: the adapter shipped at COMMIT, in DIR
  mkdir -p "$2"; git -C "$here" archive "$1" rtpurbo/adapters/smollm2-135m-rtpurbo | tar -x -C "$2"
}
case "$mode" in
train)  # the recipe of the replaced adapter (200 steps from f82140e on the mix, sparse student), mass-scored student
  mix=${3:?MIX}
  archive f82140e "$out/start"
  "${rt[@]}" distill --model "$out/start/rtpurbo/adapters/smollm2-135m-rtpurbo" --data "$mix" --steps 200 --lr 1.2e-4 \
    --warmup 10 --no-gradient-checkpointing --checkpoint-every 100 --student-prefill sparse --student-scoring mass \
    --time-budget 420 --json --out "$out/mass" > "$out/mass.json"
  ;;
eval)
  eval100=${3:?EVAL100}; e2k=${4:?E2K}; ev300=${5:?EV300}
  archive 3e8b54f "$out/replaced"
  shipped=$out/replaced/rtpurbo/adapters/smollm2-135m-rtpurbo
  sp="retrieval_prefill=sparse,prefill_top_p=0.9,prefill_scoring=mass"
  ev() {  # ev NAME DATA SAMPLES PPL_WINDOWS LENGTH ROW
    "${rt[@]}" eval --model smollm2-135m --speed-repeats 0 --batch-size 16 --decode graph --data "$2" --samples "$3" \
      --ppl-windows "$4" --lengths "$5" --rows --artifacts "$6" --out "$out/$1"
  }
  ev sp-mass-4k "$eval100" 100 0 4096 "shipped-sp-mass=$shipped@$sp" &
  ev sp-mass-8k "$eval100" 100 12 8192 "shipped-sp-mass=$shipped@$sp" &
  ev mass-2k "$e2k" 100 0 2048 "mass=$out/mass" &
  ev mass-4k "$eval100" 100 0 4096 "mass=$out/mass" &
  ev mass-8k "$eval100" 100 12 8192 "mass=$out/mass" &
  wait
  ev mass-300-4k "$ev300" 200 0 4096 "mass=$out/mass" &
  ev mass-300-8k "$ev300" 100 0 8192 "mass=$out/mass" &
  ev mass-sp-4k "$eval100" 100 0 4096 "mass-sp-mass=$out/mass@$sp" &
  ev mass-sp-8k "$eval100" 100 0 8192 "mass-sp-mass=$out/mass@$sp" &
  wait
  ;;
cpu-perplexity)  # the mass adapter (shipped as smollm2-135m-rtpurbo) with sparse prefill, against its dense prefill
  eval100=${3:?EVAL100}
  python3 "$here/benchmarks/sparse_prefill_perplexity.py" --model "$out/mass" --data "$eval100" --threads 2 \
    --variants dense mass@0.9 --out "$out/cpu_perplexity_mass_adapter.json"
  ;;
cpu-code)  # perplexity on Python code (the windows of smollm2-135m_cpu_2026-12-03_user-domain.md): dense, both adapters
  archive 3e8b54f "$out/replaced"
  stdlib=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['stdlib'])")
  "${rt[@]}" data prepare --pool dev --files "$stdlib/*.py" --seq-len 8192 --sequences 16 --out "$out/code-dev"
  "${rt[@]}" eval --model smollm2-135m --rows dense --artifacts "shipped=$out/mass" \
    "replaced=$out/replaced/rtpurbo/adapters/smollm2-135m-rtpurbo" --ppl-data "$out/code-dev" --ppl-windows 4 \
    --reference shipped --out "$out/cpu-code-domain"
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

sys.path.insert(0, str(committed.parent / "reproduce"))
from committed_rows import dense_samples_0_99  # noqa: E402

new = {name: merge_rows(name, [part(run / d, name) for d in dirs]) for name, dirs in {
    "mass": ["mass-2k", "mass-4k", "mass-8k", "mass-300-4k", "mass-300-8k"],
    "shipped-sp-mass": ["sp-mass-4k", "sp-mass-8k"],
    "mass-sp-mass": ["mass-sp-4k", "mass-sp-8k"]}.items()}
(results / "rows").mkdir(parents=True, exist_ok=True)
for name, row in new.items():
    (results / "rows" / f"{name}.json.gz").write_bytes(gzip.compress(dumps(row).encode(), mtime=0))

student = committed / "smollm2-135m_h200_2026-12-03_sparse-student"
p300 = committed / "smollm2-135m_h200_2026-12-04_paired-300"
dense = merge_rows("dense", dense_samples_0_99(committed) + [part(p300, "dense")])
shipped = merge_rows("shipped", [part(student / "eval-mix-sp", "mix-sp"), part(p300, "shipped")])
pooled = {**part(student / "eval-mix-sp-sparse-prefill", "mix-sp-sparse-prefill")[1], "row": "shipped-sp-pooled"}
comparisons = {
    "vs_dense": paired_differences([dense, shipped, new["mass"]], "dense"),
    "vs_shipped": paired_differences([shipped, new["mass"], new["shipped-sp-mass"], pooled], "shipped"),
    "mass_sparse_prefill": paired_differences([new["mass"], new["mass-sp-mass"]], "mass"),
    "adapting_to_mass_prefill": paired_differences([new["shipped-sp-mass"], new["mass-sp-mass"]], "shipped-sp-mass"),
}
lines = write_comparisons(comparisons, results)
print("\n".join(l for l in lines if l.startswith("| ") and ("±" in l or "%" in l)))
PY
  ;;
*)
  echo "mode must be train, eval, cpu-perplexity, cpu-code or analyse" >&2
  exit 2
  ;;
esac
