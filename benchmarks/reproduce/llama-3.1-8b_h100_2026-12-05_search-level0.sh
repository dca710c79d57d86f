#!/usr/bin/env bash
# Reproduces benchmarks/results/llama-3.1-8b_h100_2026-12-05_search-level0.md on one GPU (H100 there), in the order of
# its two calls (random indexer inputs; both variants in the same run):
#   call1: the decode-kernel sweep's whole selection, search launches (256 / 32 probes) and selecting-step profile for
#          the threshold search with one-hot level-0 accumulators (commit 21a2a12, the shipped design) and with
#          counting level-0 bins (commit b5c2419, tried and reverted), plus index_scores launches;
#   call2: the GPU tests of generation, the CLI, beams, static decode and the selection kernels, in one process;
#   call3: the whole selection and the selecting-step profile with one-hot level-0 counts and masses (commit 6486fa4)
#          and with counts by tl.histogram, masses one-hot (commit f433317, shipped); the selection's GPU tests.
#
#   bash benchmarks/reproduce/llama-3.1-8b_h100_2026-12-05_search-level0.sh OUT   # about 15 minutes, from a git clone
set -euo pipefail
out=${1:?usage: $0 OUT}
mkdir -p "$out"/call1 "$out"/call2 "$out"/call3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for variant in onehot:21a2a12 counts:b5c2419 onehot2:6486fa4 histogram:f433317; do
  name=${variant%%:*} commit=${variant##*:}
  mkdir -p "$tmp/$name" && git archive "$commit" rtpurbo benchmarks/decode_kernel_sweep.py | tar -x -C "$tmp/$name"
done
launches=2x8x2048x256,2x8x2048x32
PYTHONPATH="$tmp/onehot" python3 "$tmp/onehot/benchmarks/decode_kernel_sweep.py" --parts select,search_launch,profile \
  --search-launches $launches --json "$out/call1/onehot.json" | tee "$out/call1/onehot.txt"
PYTHONPATH="$tmp/counts" python3 "$tmp/counts/benchmarks/decode_kernel_sweep.py" \
  --parts select,search_launch,profile,scores --n-logits 32,128,256 --search-launches $launches \
  --json "$out/call1/counts.json" | tee "$out/call1/counts.txt"
PYTHONPATH="$tmp/onehot" python3 -m pytest -q -p no:cacheprovider --durations=15 tests/test_beam_search.py tests/test_cli.py \
  tests/test_generate_graphed.py tests/test_decode_static.py tests/test_causal_lm.py tests/test_ops_gpu.py \
  -k "gpu or cuda or graph or static or triton_sparse_prefill or sparse_prefill_matches or threshold or topp or two_role" \
  | tee "$out/call2/gpu_tests.txt"
for name in onehot2 histogram; do
  PYTHONPATH="$tmp/$name" python3 "$tmp/$name/benchmarks/decode_kernel_sweep.py" --parts select,profile --n-logits 32 \
    --json "$out/call3/${name/onehot2/onehot}.json" | tee "$out/call3/${name/onehot2/onehot}.txt"
done
PYTHONPATH="$tmp/histogram" python3 -m pytest -q -p no:cacheprovider tests/test_ops_gpu.py -k "threshold or topp" \
  | tee "$out/call3/tests.txt"
