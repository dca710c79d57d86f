#!/usr/bin/env bash
# Reproduces benchmarks/results/llama-3.1-8b_h100_2026-12-05_ring-beside-selection.md on one GPU (H100 there, H200 for
# call 7), in the order of its calls (random inputs; every comparison within one process):
#   call1: where the local heads' ring runs in a selecting step (fork points, launch shapes, kernel timelines), on the
#          tree before these changes (c664c27);
#   call2: the scored step (5ccdca6, reverted since): its GPU tests, paired A/B against the side-stream step, the
#          attention bench's decode rows;
#   call3: launch shapes of the scored step's first launch (5ccdca6);
#   call4: the ring's launch shapes beside the selection (paired), list mode's time against the list's locality;
#   call5: GPU tests of this tree, paired A/B of the layer step against c664c27, the attention bench's decode rows;
#   call6: where selection starts to pay (now `beside_selection.py --parts breakeven`);
#   call7: benchmarks/beside_selection.py (shapes, breakeven) and decode_kernel_sweep.py --parts list_locality.
#
#   bash benchmarks/reproduce/llama-3.1-8b_h100_2026-12-05_ring-beside-selection.sh OUT   # about 12 minutes, from a git clone
set -euo pipefail
out=$(realpath -m "${1:?usage: $0 OUT}")
res=benchmarks/results/llama-3.1-8b_h100_2026-12-05_ring-beside-selection
for n in 1 2 3 4 5 6 7; do mkdir -p "$out/call$n"; done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for variant in base:c664c27 scored:5ccdca6; do
  name=${variant%%:*} commit=${variant##*:}
  mkdir -p "$tmp/$name" && git archive "$commit" rtpurbo benchmarks | tar -x -C "$tmp/$name"
done
# the scripts of calls 1, 3 and 4 import the package of the tree they ran on (PYTHONPATH)
PYTHONPATH="$tmp/base" python3 "$res/call1/overlap.py" "$out/call1/overlap.json" | tee "$out/call1/stdout.txt"
git archive 5ccdca6 tests pyproject.toml | tar -x -C "$tmp/scored"
(cd "$tmp/scored" && python3 -m pytest -q -p no:cacheprovider tests/test_ops_gpu.py -k two_role \
  && python3 -m pytest -q -p no:cacheprovider tests/test_decode_static.py) | tee "$out/call2/tests.txt"
PYTHONPATH="$tmp/scored" python3 "$tmp/scored/benchmarks/decode_step_ab.py" --trees new="$tmp/scored" --cases paths \
  --lengths 1M,128K --rounds 8 --json "$out/call2/ab.json" | tee "$out/call2/ab.txt"
PYTHONPATH="$tmp/scored" python3 "$tmp/scored/benchmarks/attention_bench.py" --geometries llama-3.1-8b --prefill "" \
  --decode 32768,131072,1048576 --budgets top-p --json "$out/call2/attention_decode.json" > "$out/call2/attention_decode.txt"
PYTHONPATH="$tmp/scored" python3 "$res/call3/fused_sweep.py" | tee "$out/call3/stdout.txt"
{ PYTHONPATH="$tmp/base" python3 "$res/call4/overlap2.py"; PYTHONPATH="$tmp/base" python3 "$res/call4/list_sweep.py"; } \
  | tee "$out/call4/stdout.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_ops_gpu.py -k "ring_beside or two_role or flex_decode" \
  | tee "$out/call5/tests.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_decode_static.py tests/test_seqlen_threshold.py \
  tests/test_generate_graphed.py | tee -a "$out/call5/tests.txt"
python3 benchmarks/decode_step_ab.py --trees base="$tmp/base" new=. --cases step --lengths 1M,128K --rounds 10 \
  --json "$out/call5/ab.json" | tee "$out/call5/ab.txt"
python3 benchmarks/attention_bench.py --geometries llama-3.1-8b --prefill "" --decode 32768,131072,1048576 \
  --budgets top-p --json "$out/call5/attention_decode.json" > "$out/call5/attention_decode.txt"
python3 benchmarks/beside_selection.py --parts breakeven --trees base="$tmp/base" new=. --json "$out/call6/breakeven.json" \
  | tee "$out/call6/stdout.txt"
python3 benchmarks/beside_selection.py --trees base="$tmp/base" new=. --json "$out/call7/beside.json" \
  | tee "$out/call7/stdout.txt"
python3 benchmarks/decode_kernel_sweep.py --parts list_locality --json "$out/call7/list_locality.json" \
  > "$out/call7/list_locality.txt"
