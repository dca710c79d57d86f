#!/usr/bin/env bash
# Reproduces benchmarks/results/llama-3.1-8b_h100_2026-12-06_tally-gather-fp32.md on one GPU (an H100 there), call
# by call (random inputs; every comparison within one process):
#   call1: where the selecting step's time goes on head (62b276d): one layer's step in a CUDA graph with and without
#          the local heads' ring (kernel timelines), and every kernel of one eager step under ncu (PDL off);
#   call2: the key levels' registers capped (ptxas maxnreg 88 / 80) against head, per layer of 8, with timelines;
#   call3: level 0's one-hot accumulator transposed (l0), and l0 with the fp32 tally and gather (new), against head;
#   call4: the fp32 tally and gather (new = 8d5feb3) and the same with 8-warp tally / gather launches (tg8) against
#          head, per layer of 8 with the bytes ceiling, one layer per graph with timelines, the selection alone; tests.
# The experiments that were not kept are patches on head in the results folder (patches/).
#
#   bash benchmarks/reproduce/llama-3.1-8b_h100_2026-12-06_tally-gather-fp32.sh OUT   # ~15 minutes
set -euo pipefail
out=$(realpath -m "${1:?usage: $0 OUT}")
here=$(git rev-parse --show-toplevel)
raw="$here/benchmarks/results/llama-3.1-8b_h100_2026-12-06_tally-gather-fp32"
for c in 1 2 3 4; do mkdir -p "$out/call$c"; done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for variant in head:62b276d new:8d5feb3; do
  mkdir -p "$tmp/${variant%%:*}" && git archive "${variant##*:}" rtpurbo benchmarks tests | tar -x -C "$tmp/${variant%%:*}"
done
tree() {  # NAME BASE [PATCH]: a copy of BASE's package, patched
  mkdir -p "$tmp/$1" && cp -r "$tmp/$2/rtpurbo" "$tmp/$1/"
  if [ -n "${3:-}" ]; then (cd "$tmp/$1" && patch -s -p1 < "$raw/patches/$3"); fi
}
tree cap88 head key-level-maxnreg.patch
tree cap80 head key-level-maxnreg.patch
sed -i 's/^KEY_LEVEL_REGISTERS = 88/KEY_LEVEL_REGISTERS = 80/' "$tmp/cap80/rtpurbo/ops/triton/threshold.py"
tree l0 head level0-layout.patch
tree l0tg new level0-layout.patch
tree tg8 new
sed -i 's/        warps = 4 if first >= TALLY else num_warps .*/        warps = num_warps/' "$tmp/tg8/rtpurbo/ops/triton/threshold.py"
ab() { (cd "$tmp/new" && PYTHONPATH=. python3 benchmarks/decode_step_ab.py "$@"); }
lengths=128K,256K,512K,1M

(cd "$tmp/head" && PYTHONPATH=. python3 "$raw/call1/prof.py" timeline 128K,1M | tee "$out/call1/timeline.txt"
 RTPURBO_PDL=0 ncu --clock-control none --profile-from-start off --section SpeedOfLight --section LaunchStats \
   --section Occupancy --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis --csv \
   --page details python3 "$raw/call1/prof.py" ncu 128K,1M > "$out/call1/ncu.csv")
ab --trees head="$tmp/head" new="$tmp/cap88" r80="$tmp/cap80" --cases step --layers 8 --ceiling --lengths $lengths \
  --rounds 8 --json "$out/call2/ab_layers8.json" | tee "$out/call2/ab_layers8.txt"
ab --trees head="$tmp/head" new="$tmp/cap88" --cases step --lengths 128K,1M --rounds 3 --timeline \
  --json "$out/call2/ab_step.json" | tee "$out/call2/ab_step.txt"
ab --trees head="$tmp/head" l0="$tmp/l0" new="$tmp/l0tg" --cases step --layers 8 --ceiling --lengths $lengths \
  --rounds 8 --json "$out/call3/ab_layers8.json" | tee "$out/call3/ab_layers8.txt"
ab --trees head="$tmp/head" new="$tmp/l0tg" --cases step,select --lengths 128K,1M --rounds 5 --timeline \
  --json "$out/call3/ab_step.json" | tee "$out/call3/ab_step.txt"
ab --trees head="$tmp/head" new="$tmp/new" tg8="$tmp/tg8" --cases step --layers 8 --ceiling --lengths $lengths \
  --rounds 10 --json "$out/call4/ab_layers8.json" | tee "$out/call4/ab_layers8.txt"
ab --trees head="$tmp/head" new="$tmp/new" --cases step,select --lengths 128K,1M --rounds 5 --timeline \
  --json "$out/call4/ab_step.json" | tee "$out/call4/ab_step.txt"
(cd "$tmp/new" && python3 -m pytest -q -p no:cacheprovider tests/test_ops_gpu.py \
  -k "topp_decode or always_list or decode_step_is or dependent_launch or capturable or two_role" \
  | tee "$out/call4/tests_rest.txt"
  timeout 190 python3 -m pytest -q -p no:cacheprovider tests/test_ops_gpu.py -k threshold_select_matches_reference \
  | tee "$out/call4/tests_select.txt") || true
