#!/usr/bin/env bash
# Reproduces benchmarks/results/llama-3.1-8b_h100_2026-12-07_level0-chunks.md on one GPU (an H100 there):
#   call1: the selecting step per layer of 8 at 128K-1M keys, 0d75c3e (loaded twice: the placebo) and `l0c` (level 0
#          in chunks of whole 256-key steps at every length: patches/level0-own-chunks.patch); its selection tests;
#   call2: 0d75c3e, l0c and `l0h` (l0c with chunks of half a block) at 256K and 128K; 0d75c3e's step beside its
#          step over every key (the seqlen threshold's other side) at 256K;
#   call3: 0d75c3e and `l0r` = 9f1bc94 (own chunks wherever they hold half a block) at 128K-448K; its selection tests;
#   call4: 0d75c3e and `l0r` = cda5eec (own chunks also only where the block chunks fill the SMs about once) at
#          256K-448K;
#   call5: 0d75c3e and cda5eec, each loaded twice, at 256K and 288K.
# The harness is cda5eec's decode_step_ab.py (the indexer query drawn at random, as these results ran).
#
#   bash benchmarks/reproduce/llama-3.1-8b_h100_2026-12-07_level0-chunks.sh OUT   # about 25 minutes
set -euo pipefail
here=$(git rev-parse --show-toplevel)
. "$here/benchmarks/reproduce/variant_trees.sh"  # start_run, archived, patched, edited, trees
start_run "${1:-}" llama-3.1-8b_h100_2026-12-07_level0-chunks 5  # $out, $raw, $tmp
archived head:0d75c3e l0r1:9f1bc94 l0r:cda5eec
patched l0c head "$raw/patches/level0-own-chunks.patch"
edited l0h l0c threshold.py 's/min(block, LEVEL0_ALIGN), schedule, programs_per_sm)/max(1, block \/\/ 2), schedule, programs_per_sm)/'
ab() {  # CALL ARGS...: cda5eec's decode_step_ab.py, one layer's step per layer of 8 with the bytes ceiling
  local call=$1; shift
  (cd "$tmp/l0r" && PYTHONPATH=. python3 benchmarks/decode_step_ab.py --layers 8 --ceiling "$@" \
    --json "$out/$call/ab.json") | tee "$out/$call/ab.txt"
}
selection_tests() {  # TREE CALL -k: the selection's GPU tests of TREE
  (cd "$tmp/$1" && PYTHONPATH=. python3 -m pytest -q -p no:cacheprovider tests/test_ops_gpu.py -k "$3") | tail -3 \
    | tee "$out/$2/tests.txt"
}
ab call1 --trees $(trees head l0c) --placebo --cases step --lengths 256K,512K,1M,128K --rounds 6
selection_tests l0c call1 "threshold or topp or waits_out or cut"
ab call2 --trees $(trees head l0c l0h) --placebo --cases step --lengths 256K,128K --rounds 8
(cd "$tmp/l0r" && PYTHONPATH=. python3 benchmarks/decode_step_ab.py --trees head="$tmp/head" --cases step,every \
  --layers 8 --ceiling --lengths 256K --rounds 3 --json "$out/call2/every.json") | tee "$out/call2/every.txt"
ab call3 --trees head="$tmp/head" l0r="$tmp/l0r1" --placebo --cases step --lengths 256K,320K,384K,448K,128K --rounds 6
selection_tests l0r1 call3 "threshold_select"
ab call4 --trees $(trees head l0r) --placebo --cases step --lengths 256K,320K,384K,448K,288K --rounds 5
ab call5 --trees $(trees head l0r) head2="$tmp/head" l0r2="$tmp/l0r" --cases step --lengths 256K,288K --rounds 8
