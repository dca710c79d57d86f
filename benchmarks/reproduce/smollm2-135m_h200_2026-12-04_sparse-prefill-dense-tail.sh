#!/usr/bin/env bash
# Reproduces benchmarks/results/smollm2-135m_h200_2026-12-04_sparse-prefill-dense-tail.md: the shipped adapter (local heads at
# W 1536) with its retrieval heads on the `mass`-scored sparse prefill and a dense tail of 256 queries (prefill_dense_tail), on the
# suite's samples 0-99 at 4K and 8K and the 12 perplexity windows, paired per sample against the same adapter with
# dense retrieval prefill (the committed rows of smollm2-135m_h200_2026-12-04_window-1536.md), against its sparse
# prefill without the tail (smollm2-135m_h200_2026-12-04_sparse-prefill-w1536.md) and against dense.
#
#   bash benchmarks/reproduce/smollm2-135m_h200_2026-12-04_sparse-prefill-dense-tail.sh prepare OUT        # CPU, ~4 min
#   bash benchmarks/reproduce/smollm2-135m_h200_2026-12-04_sparse-prefill-dense-tail.sh eval OUT EVAL100   # GPU, ~4 min
#   bash benchmarks/reproduce/smollm2-135m_h200_2026-12-04_sparse-prefill-dense-tail.sh analyse OUT RESULTS
#
# EVAL100: OUT/eval100/eval_data.npz from prepare (the same samples and windows as the committed rows: the windows'
# digest is 5bd12d561cf2aa73). The committed run split each length's 19 tasks over two processes, four at once on
# one H200 (206-221 s each). RESULTS: the folder beside this script's results file.
set -euo pipefail
# shellcheck source=suite_quarters.sh
source "$(dirname "$0")/suite_quarters.sh"
suite_script "${1:?usage: $0 prepare|eval|analyse OUT ...}" "${2:?OUT}" "${3:-}" \
  "spt=smollm2-135m-rtpurbo@retrieval_prefill=sparse,prefill_dense_tail=256" spt dense_prefill sp dense
