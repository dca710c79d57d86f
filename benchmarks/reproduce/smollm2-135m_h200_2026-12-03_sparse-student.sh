#!/usr/bin/env bash
# Reproduces benchmarks/results/smollm2-135m_h200_2026-12-03_sparse-student.md: paired eval rows of the stage-2
# adapters continued on the long-range mix (with and without sparse student prefill) against dense, at 2K, 4K, 8K.
#
#   bash benchmarks/reproduce/smollm2-135m_h200_2026-12-03_sparse-student.sh eval RUN EVAL100 E2K MIX_SP   # GPU, ~6 min
#   bash benchmarks/reproduce/smollm2-135m_h200_2026-12-03_sparse-student.sh analyse RESULTS_DIR          # CPU, seconds
#
# EVAL100: `rtpurbo eval --prepare-only --lengths 4096 8192 --samples 100 --ppl-windows 12` data; E2K: the same with
# `--lengths 2048 --ppl-windows 0`; MIX_SP: the artifact of
# `benchmarks/reproduce/smollm2-135m_h200_2026-12-03_stage2-continue.sh train` run mix-sp (now shipped as
# smollm2-135m-rtpurbo). The `mix` rows are the adapter shipped before it (stage2-continue's run mix): check out the
# commit before this file's to evaluate it under its name. Rows resume: seed RUN/NAME/rows with committed rows to run
# only the missing units (that is how the 8K tasks of `mix` were completed).
set -euo pipefail
mode=${1:?usage: $0 eval RUN EVAL100 E2K MIX_SP | analyse RESULTS_DIR}
rt=(${RTPURBO:-python3 -m rtpurbo.cli})
case "$mode" in
eval)
  run=${2:?RUN}; eval100=${3:?EVAL100}; e2k=${4:?E2K}; mixsp=${5:?MIX_SP}
  common=(--model smollm2-135m --samples 100 --speed-repeats 0 --batch-size 16 --decode graph)
  ev=(--data "$eval100" --ppl-windows 12)
  "${rt[@]}" eval "${common[@]}" "${ev[@]}" --lengths 8192 --rows --artifacts mix=smollm2-135m-rtpurbo --out "$run/mix" &
  "${rt[@]}" eval "${common[@]}" --data "$e2k" --ppl-windows 0 --lengths 2048 --rows dense \
    --artifacts mix=smollm2-135m-rtpurbo --out "$run/e2k" &
  "${rt[@]}" eval "${common[@]}" "${ev[@]}" --lengths 4096 8192 --rows --artifacts "mix-sp=$mixsp" --out "$run/mix-sp" &
  "${rt[@]}" eval "${common[@]}" "${ev[@]}" --lengths 8192 --rows \
    --artifacts "mix-sp-sparse-prefill=$mixsp@retrieval_prefill=sparse,prefill_top_p=0.9" --out "$run/mix-sp-sparse-prefill" &
  wait
  ;;
analyse)
  out=${2:?RESULTS_DIR}
  python3 - "$out" <<'PY'
import sys
from pathlib import Path
from rtpurbo.eval.paired import paired_differences
from rtpurbo.eval.paired_plot import write_comparisons
from rtpurbo.eval.report import stored_rows
out = Path(sys.argv[1])
results = out.parent
def merged(name, *rows):  # one row's units from several runs (lengths add up)
    units = {}
    for row in rows:
        units.update(row["units"])
    return {"row": name, "units": units}
dense = merged("dense", stored_rows(results / "smollm2-135m_h200_2026-12-03_fidelity/fid-dense")["dense"],
               stored_rows(out / "eval-2k")["dense"])
mix = merged("mix", stored_rows(out / "eval-mix")["mix"], stored_rows(out / "eval-2k")["mix"])
mix_sp = stored_rows(out / "eval-mix-sp")["mix-sp"]
mix_sp_sparse = stored_rows(out / "eval-mix-sp-sparse-prefill")["mix-sp-sparse-prefill"]
comparisons = {
    "vs_dense": paired_differences([dense, mix, mix_sp, mix_sp_sparse], "dense"),
    "mix_sp_vs_mix": paired_differences([mix, mix_sp], "mix"),
    "sparse_vs_dense_prefill": paired_differences([mix_sp, mix_sp_sparse], "mix-sp"),
}
lines = write_comparisons(comparisons, out)
print("\n".join(l for l in lines if l.startswith("| ") and "±" in l))
PY
  ;;
*)
  echo "mode must be eval or analyse" >&2
  exit 2
  ;;
esac
