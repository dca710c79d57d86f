#!/usr/bin/env bash
# Reproduces benchmarks/results/llama-3.1-8b_2026-12-05_search-walk-bounds.md on one GPU, in the order of its calls
# (random inputs; every variant in the same process or the same call):
#   call1: paired A/B of the selecting decode step and of the whole selection (128K, 1M; peaked, trained-like and flat
#          scores) across four versions of the threshold search: the one before these changes (commit 333b58e), the
#          walk as one scan and three reductions (6861def), level 0's bin bounds instead of its key search (605d02a),
#          and every phase loading its next scores ahead (48401b7); the selection's GPU tests; the walk alone; the
#          selecting step's kernels and search phases;
#   call2: end to end decode at 1M (8 layers, trained-like indexer scores) with 333b58e and 48401b7, twice each; the
#          attention bench's decode rows at 128K-1M; the GPU tests of the model's decode paths.
#
#   bash benchmarks/reproduce/llama-3.1-8b_2026-12-05_search-walk-bounds.sh OUT   # about 18 minutes, from a git clone
set -euo pipefail
out=${1:?usage: $0 OUT}
mkdir -p "$out"/call1 "$out"/call2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for variant in base:333b58e walk:6861def bounds:605d02a prefetch:48401b7; do
  name=${variant%%:*} commit=${variant##*:}
  mkdir -p "$tmp/$name" && git archive "$commit" rtpurbo benchmarks | tar -x -C "$tmp/$name"
done
python3 benchmarks/decode_step_ab.py --trees base="$tmp/base" walk="$tmp/walk" bounds="$tmp/bounds" \
  prefetch="$tmp/prefetch" --rounds 8 --json "$out/call1/ab.json" | tee "$out/call1/ab.txt"
PYTHONPATH="$tmp/prefetch" python3 -m pytest -q -p no:cacheprovider tests/test_ops_gpu.py -k "threshold or topp" \
  | tee "$out/call1/tests.txt"
for name in prefetch base; do
  PYTHONPATH="$tmp/$name" python3 "$tmp/$name/benchmarks/decode_kernel_sweep.py" --parts walk --json "$out/call1/walk_$name.json"
done
PYTHONPATH="$tmp/prefetch" python3 "$tmp/prefetch/benchmarks/decode_kernel_sweep.py" --parts profile \
  --json "$out/call1/profile.json"
for run in 1 2; do
  for name in prefetch base; do
    PYTHONPATH="$tmp/$name" python3 -m rtpurbo.cli bench model --cuda-graph --lengths 8K --decode-lengths 1M \
      --index-logit-std 2.56 --no-flash-ttft --repeats 1 --out "$out/call2/e2e_${name}_$run.jsonl"
  done
done
PYTHONPATH="$tmp/prefetch" python3 "$tmp/prefetch/benchmarks/attention_bench.py" --geometries llama-3.1-8b --prefill "" \
  --decode 131072,393216,524288,1048576 --budgets top-p --json "$out/call2/attention_decode.json"
PYTHONPATH="$tmp/prefetch" python3 -m pytest -q -p no:cacheprovider tests/test_decode_static.py \
  tests/test_seqlen_threshold.py tests/test_generate_graphed.py tests/test_gpu_steady_state.py | tee "$out/call2/tests.txt"
