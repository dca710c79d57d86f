#!/usr/bin/env bash
# Reproduces benchmarks/results/smollm2-135m_h200_2026-12-03_stage2-mix.md: stage 2 continued from the shipped
# adapter for 200 steps on natural text, on the long-range mix, and on the mix with sparse student prefill;
# then a paired eval of each against the dense row of smollm2-135m_h200_2026-12-03_fidelity.
#
#   bash benchmarks/reproduce/smollm2-135m_h200_2026-12-03_stage2-continue.sh prepare OUT   # CPU, ~1 min
#   bash benchmarks/reproduce/smollm2-135m_h200_2026-12-03_stage2-continue.sh train OUT     # GPU, ~5 min (3 at once)
#   bash benchmarks/reproduce/smollm2-135m_h200_2026-12-03_stage2-continue.sh eval OUT      # GPU, ~10 min (5 at once)
#   bash benchmarks/reproduce/smollm2-135m_h200_2026-12-03_stage2-continue.sh analyse OUT   # any machine
#
# START: the adapter to continue (default: the one shipped before this run, taken from git at f82140e);
# RTPURBO, MODEL and EVAL_DATA as in smollm2-135m_h200_2026-12-03_fidelity.sh (EVAL_DATA: its eval100 data).
# The committed run ran train and eval as three background jobs, then five, on one H200 (calls G and H of
# 2026-12-03); eval under a 535 s limit, so 4-6 of the 19 tasks at 8192 were not reached (the rows resume).
set -euo pipefail
mode=${1:?usage: $0 prepare|train|eval|analyse OUT}
out=${2:?usage: $0 prepare|train|eval|analyse OUT}
rt=(${RTPURBO:-python3 -m rtpurbo.cli})
here=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$out"
if [ -z "${START:-}" ] && [ "$mode" != analyse ] && [ "$mode" != prepare ]; then
  mkdir -p "$out/start"
  git -C "$here" archive f82140e rtpurbo/adapters/smollm2-135m-rtpurbo | tar -x -C "$out/start"
  START=$out/start/rtpurbo/adapters/smollm2-135m-rtpurbo
fi

case "$mode" in
prepare)  # 288 x 8K training sequences each: natural text (+10 % passkey / kv / multi-hop) and the long-range mix
  "${rt[@]}" data prepare --out "$out/natural" --sequences 288
  "${rt[@]}" data prepare --out "$out/mix" --sequences 288 --synthetic-ratio 0.3 --synthetic-kinds passkey kv multihop \
    niah_multikey niah_multivalue niah_multiquery multikey_lines variable_tracking_chains common_words frequent_words \
    common_words_close
  ;;
train)
  common=(--model "$START" --steps 200 --lr 1.2e-4 --warmup 10 --no-gradient-checkpointing --checkpoint-every 50
          --keep-checkpoints --time-budget 300 --json)
  "${rt[@]}" distill "${common[@]}" --data "$out/natural" --out "$out/natural" > "$out/natural.json" &
  "${rt[@]}" distill "${common[@]}" --data "$out/mix" --out "$out/mix" > "$out/mix.json" &
  "${rt[@]}" distill "${common[@]}" --data "$out/mix" --student-prefill sparse --out "$out/mix-sp" > "$out/mix-sp.json" &
  wait
  ;;
eval)
  common=(--model "${MODEL:-smollm2-135m}" --data "${EVAL_DATA:?}" --lengths 4096 8192 --samples 100 --ppl-windows 12
          --speed-repeats 0 --batch-size 16 --decode graph --rows)
  sparse=retrieval_prefill=sparse,prefill_top_p=0.9
  "${rt[@]}" eval "${common[@]}" --artifacts "shipped=$START" --out "$out/eval-shipped" &
  "${rt[@]}" eval "${common[@]}" --artifacts "natural=$out/natural" --out "$out/eval-natural" &
  "${rt[@]}" eval "${common[@]}" --artifacts "mix=$out/mix" --out "$out/eval-mix" &
  "${rt[@]}" eval "${common[@]}" --artifacts "mix-sparse-prefill=$out/mix@$sparse" --out "$out/eval-mix-sparse-prefill" &
  "${rt[@]}" eval "${common[@]}" --artifacts "mix-sp-sparse-prefill=$out/mix-sp@$sparse" \
    --out "$out/eval-mix-sp-sparse-prefill" &
  wait
  ;;
analyse)  # the merged report (with the committed dense row) and the paired comparisons between adapters, as JSON
  dense=$here/benchmarks/results/smollm2-135m_h200_2026-12-03_fidelity/fid-dense
  "${rt[@]}" eval --report-only --out "$out/report" --merge "$dense" "$out"/eval-* > /dev/null
  python3 - "$out/report" <<'EOF'
import json, sys
from pathlib import Path
from rtpurbo.eval.paired import paired_differences
from rtpurbo.eval.report import stored_rows

rows = stored_rows(Path(sys.argv[1]))
def compare(reference, names):
    found = paired_differences([rows[reference]] + [rows[n] for n in names], reference=reference)["rows"]
    return {name: {"lengths": {length: {score: {k: d[k] for k in ("mean", "lo", "hi", "tasks_averaged")}
                                        for score, d in scores.items()}
                               for length, scores in row["lengths"].items()},
                   "perplexity": row["perplexity"]} for name, row in found.items()}
print(json.dumps({"vs_shipped": compare("shipped", ["natural", "mix"]),
                  "vs_mix": compare("mix", ["mix-sparse-prefill", "mix-sp-sparse-prefill"]),
                  "adapted_vs_not": compare("mix-sparse-prefill", ["mix-sp-sparse-prefill"])}, indent=1))
EOF
  python3 - "$out" <<'EOF'  # stage-2 KL per step of the three runs (OUT/NAME.report.json or OUT/training/*.json.gz)
import gzip, json, sys
from pathlib import Path
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

out = Path(sys.argv[1])
fig, ax = plt.subplots(figsize=(6, 3.4), dpi=110)
for name in ("natural", "mix", "mix-sp"):
    path = out / f"{name}.report.json"
    text = path.read_text() if path.is_file() else gzip.decompress((out / "training" / f"{name}.report.json.gz").read_bytes())
    history = json.loads(text)[0]["history"]
    kl = np.array([h["kl"] for h in history])
    ax.plot([h["step"] for h in history][19:], np.convolve(kl, np.ones(20) / 20, "valid"), label=name)
ax.set_xlabel("step (continued from the shipped adapter)")
ax.set_ylabel("KL(teacher || student), mean of 20")
ax.set_title("stage 2, 200 steps, batch 1 x 8K: each run on its own data", fontsize=9)
ax.grid(alpha=0.3)
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(out / "training_kl.png")
EOF
  ;;
*)
  echo "mode must be prepare, train, eval or analyse" >&2
  exit 2
  ;;
esac
