#!/usr/bin/env bash
# Reproduces benchmarks/results/llama-3.1-8b_h100_2026-12-05_search-walk-bounds.md on one GPU (H100 there), in the
# order of its calls (random inputs; every version compared in the same process or the same call):
#   call1: paired A/B (benchmarks/decode_step_ab.py) of the selecting decode step and of the whole selection at 128K
#          and 1M across five versions of the threshold search: before these changes (333b58e), the walk as one scan
#          and three reductions (6861def), level 0's bin bounds (605d02a), every phase loading its next scores ahead
#          (48401b7: the shipped kernels), and tally + gather in one launch with a look-back (29a69b8); the
#          selection's GPU tests, the walk timed alone, and the step's kernels (on 29a69b8);
#   call2: the A/B of 333b58e, the shipped tree and the look-back polling with volatile loads (293eb75); the
#          selection's GPU tests, end-to-end decode at 1M, the GPU tests of the model's decode paths (shipped tree);
#   call3: the selection GPU tests call 2's time limit cut off; end-to-end decode at 1M (8 layers, trained-like
#          indexer scores), 333b58e and the shipped tree alternating, each run from its own folder;
#   call4: the attention bench's decode rows at 128K and 1M (shipped tree);
#   call5: A/B of the shipped kernels and the key levels' state loaded in one round trip (f5171bf).
#
#   bash benchmarks/reproduce/llama-3.1-8b_h100_2026-12-05_search-walk-bounds.sh OUT   # about 16 minutes, from a git clone
set -euo pipefail
out=$(realpath -m "${1:?usage: $0 OUT}")
mkdir -p "$out"/call1 "$out"/call2 "$out"/call3 "$out"/call4 "$out"/call5
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for variant in base:333b58e walk:6861def bounds:605d02a final:48401b7 lookback:29a69b8 lookback2:293eb75 \
  hoist:f5171bf; do
  name=${variant%%:*} commit=${variant##*:}
  mkdir -p "$tmp/$name" && git archive "$commit" rtpurbo benchmarks | tar -x -C "$tmp/$name"
done
python3 benchmarks/decode_step_ab.py --trees base="$tmp/base" walk="$tmp/walk" bounds="$tmp/bounds" \
  prefetch="$tmp/final" lookback="$tmp/lookback" --rounds 8 --json "$out/call1/ab.json" | tee "$out/call1/ab.txt"
# the GPU tests run on the checked-out tree (call 1 ran them on 29a69b8, calls 2-3 on the shipped kernels)
python3 -m pytest -q -p no:cacheprovider tests/test_ops_gpu.py -k "threshold or topp" | tee "$out/call1/tests.txt"
for name in lookback base; do
  PYTHONPATH="$tmp/$name" python3 "$tmp/$name/benchmarks/decode_kernel_sweep.py" --parts walk --json "$out/call1/walk_$name.json"
done
PYTHONPATH="$tmp/lookback" python3 "$tmp/lookback/benchmarks/decode_kernel_sweep.py" --parts profile \
  --json "$out/call1/profile.json"
python3 benchmarks/decode_step_ab.py --trees base="$tmp/base" final="$tmp/final" lookback="$tmp/lookback2" --rounds 8 \
  --json "$out/call2/ab.json" | tee "$out/call2/ab.txt"
python3 -m pytest -q -p no:cacheprovider -x tests/test_decode_static.py tests/test_seqlen_threshold.py \
  tests/test_generate_graphed.py | tee "$out/call2/model_tests.txt"
for run in 1 2; do
  for name in final base; do  # run from the version's own folder: python -m puts the working folder first on the path
    (cd "$tmp/$name" && python3 -m rtpurbo.cli bench model --cuda-graph --lengths 8K --decode-lengths 1M \
      --index-logit-std 2.56 --no-flash-ttft --repeats 1 --out "$out/call3/e2e_$name$run.jsonl")
  done
done
(cd "$tmp/final" && python3 benchmarks/attention_bench.py --geometries llama-3.1-8b --prefill 8192 \
  --decode 131072,1048576 --budgets top-p --json "$out/call4/attention_decode.json")
python3 benchmarks/decode_step_ab.py --trees shipped="$tmp/final" hoist="$tmp/hoist" --lengths 1M,128K --rounds 8 \
  --json "$out/call5/ab.json" | tee "$out/call5/ab.txt"
