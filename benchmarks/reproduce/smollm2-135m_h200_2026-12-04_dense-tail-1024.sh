#!/usr/bin/env bash
# Reproduces benchmarks/results/smollm2-135m_h200_2026-12-04_dense-tail-1024.md: the shipped adapter (local heads at W 1536)
# with its retrieval heads on the `mass`-scored sparse prefill and a dense tail of 1024 queries (prefill_dense_tail), on the
# suite's samples 0-99 at 4K and 8K and the 12 perplexity windows, paired per sample against the same adapter with dense
# retrieval prefill, its sparse prefill without a tail and with a 256-query tail (the committed rows), and dense.
#
#   bash benchmarks/reproduce/smollm2-135m_h200_2026-12-04_dense-tail-1024.sh prepare OUT        # CPU, ~4 min
#   bash benchmarks/reproduce/smollm2-135m_h200_2026-12-04_dense-tail-1024.sh eval OUT EVAL100   # GPU, ~4 min
#   bash benchmarks/reproduce/smollm2-135m_h200_2026-12-04_dense-tail-1024.sh analyse OUT RESULTS
#
# EVAL100: OUT/eval100/eval_data.npz from prepare (the committed rows' samples; the windows' digest is
# 5bd12d561cf2aa73). The committed run ran the four evals at once on one H200 (263 s in all). RESULTS: the folder
# beside this script's results file.
set -euo pipefail
# shellcheck source=suite_quarters.sh
source "$(dirname "$0")/suite_quarters.sh"
suite_script "${1:?usage: $0 prepare|eval|analyse OUT ...}" "${2:?OUT}" "${3:-}" \
  "spt1k=smollm2-135m-rtpurbo@retrieval_prefill=sparse,prefill_dense_tail=1024" spt1k dense_prefill spt sp dense
