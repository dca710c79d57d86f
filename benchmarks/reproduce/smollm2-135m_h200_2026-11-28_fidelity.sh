#!/usr/bin/env bash
# Reproduces benchmarks/results/smollm2-135m_h200_2026-11-28_fidelity.md: training-free conversion of the
# embedded SmolLM2-135M, teacher-forced fidelity at 4K / 8K. Card: one NVIDIA H200 (about 4 minutes).
# `export` gathers the texts (installs the dev-pool sources, CPU); `run` needs only that bundle and the model.
set -euo pipefail
OUT=${OUT:-runs/fidelity}
mkdir -p "$OUT"
python3 benchmarks/fidelity.py export --out "$OUT/texts.json.gz"
python3 benchmarks/fidelity.py run --texts "$OUT/texts.json.gz" --out "$OUT" --bf16 --samples 102 --ppl-windows 8 --deadline 230 \
  | tee "$OUT/fidelity.txt"
