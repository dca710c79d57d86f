#!/usr/bin/env bash
# Reproduces benchmarks/results/smollm2-135m_h200_2026-12-03_fidelity.md: on the embedded SmolLM2-135M-Instruct
# (Q4_1 GGUF), paired fidelity at 4K / 8K (19 tasks x 100 samples, 12 perplexity windows of 8K) of
#   dense                   the base model;
#   shipped                 the shipped adapter smollm2-135m-rtpurbo (retrieval heads: dense prefill);
#   shipped-sparse-prefill  the same adapter with retrieval_prefill=sparse, prefill_top_p=0.9;
# and the knockout-vs-copy head ranking with the knockout-ranked plan search (smollm2-135m_plan-search.sh).
# Card: one NVIDIA H200, bf16 (torch 2.11.0+cu130, transformers 5.17.0, triton 3.6.0).
#
#   bash benchmarks/reproduce/smollm2-135m_h200_2026-12-03_fidelity.sh              # GPU runs, then the analysis
#   bash benchmarks/reproduce/smollm2-135m_h200_2026-12-03_fidelity.sh analyse DIR  # the analysis only (any machine),
#        e.g. DIR=benchmarks/results/smollm2-135m_h200_2026-12-03_fidelity: prints the paired numbers as JSON
#
# Inputs (environment):
#   MODEL      base model (default smollm2-135m, the embedded GGUF; on the device: the assembled GGUF path)
#   EVAL_DATA  eval-split task data (about 21 MB), made on a CPU machine with the dev corpora:
#                rtpurbo eval --prepare-only --lengths 4096 8192 --samples 100 --ppl-windows 12 --workers 2 --out eval100
#              (unset: this script runs that command itself, into OUT/eval100)
#   TUNE_DATA  tune-split data for the plan search (unset: smollm2-135m_plan-search.sh makes it):
#                rtpurbo eval --prepare-only --split tune --lengths 4096 8192 --samples 4 --ppl-windows 8 --out prep/tune
#   OUT        results directory (default runs/fidelity-2026-12-03)
#
# How the file's raw outputs were made: two GPU calls ran these commands concurrently on one H200 under
# `timeout` (call 1: 560 s for the dense eval and the plan search, all four jobs at once; call 2: 330 s for the
# two adapter rows). Dense finished (~7 min of tasks); the shipped row stopped after 14 of 19 tasks at 4096,
# the sparse-prefill row after 10; the plan search after its knockout-ranked search. Without a limit each
# adapter row takes roughly 15-25 min (6 and 5 samples/s at 4K, extrapolated). `rtpurbo eval` stores every
# finished unit, so running the same command again into the same OUT resumes where it stopped (copy the
# committed fid-*/rows/*.json.gz (gunzip them) into OUT/fid-*/rows/ to continue the committed rows; the row identity - plan,
# settings, adapter file hashes, dtype, device, batch size - must match).
set -euo pipefail

analyse() {  # analyse DIR: paired differences and perplexity ratios from DIR/fid-*/rows/*.json[.gz], as JSON
  python3 - "$1" <<'EOF'
import json, math, sys
from pathlib import Path
import numpy as np
from rtpurbo.eval.paired import paired_differences, perplexity_ratio
from rtpurbo.eval.report import stored_rows  # a run's rows/NAME.json, or the committed rows/NAME.json.gz
from rtpurbo.stats import task_average

d = Path(sys.argv[1])
dense = stored_rows(d / "fid-dense")["dense"]
shipped = stored_rows(d / "fid-shipped")["shipped"]
sparse = stored_rows(d / "fid-sparse")["shipped-sparse-prefill"]
for row in (shipped, sparse):  # same samples and windows as dense, or the pairing is void
    for key, unit in row["units"].items():
        assert unit["digest"] == dense["units"][key]["digest"], (row["row"], key)

def tasks(row):
    return sorted(k[5:] for k in row["units"] if k.startswith("task:"))

def pooled_ppl(row):
    w = row["units"]["perplexity"]["windows"]
    return math.exp(sum(x["all"][0] for x in w) / sum(x["all"][1] for x in w))

def bucket_ratio(row, ref):  # percent, pooled over windows, per position bucket
    a, b = row["units"]["perplexity"]["windows"], ref["units"]["perplexity"]["windows"]
    return {k: 100 * math.expm1((sum(x["buckets"][k][0] for x in a) - sum(x["buckets"][k][0] for x in b))
                                / sum(x["buckets"][k][1] for x in b)) for k in b[0]["buckets"]}

def absolute(row, keys):  # task average of the raw scores (points) with the stratified bootstrap CI
    out = {}
    for score in ("exact", "partial", "tf_accuracy"):
        t = task_average({k: np.array([100 * s[score] for s in row["units"][k]["samples"]]) for k in keys})
        out[score] = {"mean": t["mean"], "lo": t["lo"], "hi": t["hi"], "tasks": len(keys)}
    return out

result = {
    "units": {r["row"]: tasks(r) for r in (dense, shipped, sparse)},
    "perplexity_digest": {r["row"]: r["units"]["perplexity"]["digest"] for r in (dense, shipped, sparse)},
    "perplexity": {r["row"]: pooled_ppl(r) for r in (dense, shipped, sparse)},
    "sparse_vs_shipped": paired_differences([shipped, sparse], reference="shipped"),
    "shipped_vs_dense": paired_differences([dense, shipped], reference="dense"),
    "sparse_vs_dense": paired_differences([dense, sparse], reference="dense"),
    "perplexity_by_bucket_percent": {"sparse_vs_shipped": bucket_ratio(sparse, shipped),
                                     "shipped_vs_dense": bucket_ratio(shipped, dense)},
    "dense_task_average": {str(n): absolute(dense, [f"task:{t}" for t in tasks(dense) if t.endswith(f"@{n}")])
                           for n in (4096, 8192)},
    "task_average_on_common_tasks": {
        "14 tasks of shipped @4096": {r["row"]: absolute(r, [f"task:{t}" for t in tasks(shipped)]) for r in (dense, shipped)},
        "10 tasks of sparse @4096": {r["row"]: absolute(r, [f"task:{t}" for t in tasks(sparse)])
                                     for r in (dense, shipped, sparse)}},
    "prefill_block_fraction": {k[5:]: u["prefill_block_fraction"] for k, u in sparse["units"].items()
                               if k.startswith("task:")},
    "prefill_block_fraction_8k_windows": "not recorded (the perplexity forward keeps no selection statistics)",
    "decode_selection_mean_fraction": {r["row"]: {k[5:]: u["selection_mean_fraction"] for k, u in r["units"].items()
                                                  if k.startswith("task:")} for r in (shipped, sparse)},
}
fractions = list(result["prefill_block_fraction"].values())
result["prefill_block_fraction_mean_of_tasks"] = float(np.mean(fractions)) if fractions else None
print(json.dumps(result, indent=1, default=float))
EOF
}

if [ "${1:-}" = analyse ]; then
  analyse "${2:?usage: $0 analyse DIR}"
  exit 0
fi

OUT=${OUT:-runs/fidelity-2026-12-03}
MODEL=${MODEL:-smollm2-135m}
rt=(${RTPURBO:-python3 -m rtpurbo.cli})
here=$(cd "$(dirname "$0")" && pwd)
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
mkdir -p "$OUT"
if [ -z "${EVAL_DATA:-}" ]; then
  "${rt[@]}" eval --prepare-only --lengths 4096 8192 --samples 100 --ppl-windows 12 --workers 2 --out "$OUT/eval100"
  EVAL_DATA=$OUT/eval100/eval_data.npz
fi
common=(--model "$MODEL" --data "$EVAL_DATA" --lengths 4096 8192 --samples 100 --ppl-windows 12
        --speed-repeats 0 --batch-size 16)

"${rt[@]}" eval "${common[@]}" --rows dense --out "$OUT/fid-dense"
"${rt[@]}" eval "${common[@]}" --rows --artifacts shipped=smollm2-135m-rtpurbo --out "$OUT/fid-shipped"
"${rt[@]}" eval "${common[@]}" --rows \
  --artifacts "shipped-sparse-prefill=smollm2-135m-rtpurbo@retrieval_prefill=sparse,prefill_top_p=0.9" --out "$OUT/fid-sparse"
# knockout profile, knockout vs copy, plan searches (knockout, answer-KL, copy) and their eval; 20 samples per task
EVAL_DATA=$EVAL_DATA SAMPLES=20 MODEL=$MODEL bash "$here/smollm2-135m_plan-search.sh" "$OUT/plan-search"

analyse "$OUT" | tee "$OUT/paired.json"
