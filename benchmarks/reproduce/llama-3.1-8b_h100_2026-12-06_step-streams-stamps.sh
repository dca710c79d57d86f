#!/usr/bin/env bash
# Reproduces benchmarks/results/llama-3.1-8b_h100_2026-12-06_step-streams-stamps.md on one GPU (an H100 there), call by
# call (random inputs; every comparison within one process):
#   call1: launch shapes of the local heads' ring beside the selection and the fork before the index scores, per layer
#          of 8 (step), the ring and the chain each alone (ring, chain), ncu of the ring alone;
#   call2: per-program time stamps of one layer's step, of the ring alone and of the chain alone (128K, 256K);
#   call3: registers and shared memory of every kernel of the step; stamps and step of the ring in 2 warps x 2 waves,
#          of level 0 in 256-key steps, of the ring capped at 112 registers;
#   call4: stamps and step of the ring in 8 stages / 64-key steps in 4 stages, and of the list in 64-key steps, with
#          the bytes ceiling; the GPU tests of two of those trees;
#   call5: the same tree three times (what the harness reports between identical code);
#   call6: the ring in 2 warps x 2 waves a third time, 10 rounds, beside a placebo; its GPU tests.
#
#   bash benchmarks/reproduce/llama-3.1-8b_h100_2026-12-06_step-streams-stamps.sh OUT   # ~14 minutes
set -euo pipefail
here=$(git rev-parse --show-toplevel)
. "$here/benchmarks/reproduce/variant_trees.sh"  # start_run, archived, copy, edited, trees
start_run "${1:-}" llama-3.1-8b_h100_2026-12-06_step-streams-stamps 6  # $out, $raw, $tmp
archived head:d310b57
tools="$raw/tools"
beside='s/^BESIDE_LAUNCH = DecodeLaunch(block_n=32, waves=1, combine_chunk=256)/BESIDE_LAUNCH = DecodeLaunch('
beside_end=', combine_chunk=256)/'
ring() {  # NAME BASE FIELDS: BESIDE_LAUNCH with these fields
  edited "$1" "$2" decode.py "${beside}$3${beside_end}"
}
ring w2 head "block_n=32, waves=1, num_warps=2"
ring wv2 head "block_n=32, waves=2"
ring w2v2 head "block_n=32, waves=2, num_warps=2"
ring st4 head "block_n=32, waves=1, num_stages=4"
ring r8 head "block_n=32, waves=1, num_stages=8"
ring r64 head "block_n=64, waves=1, num_stages=4"
copy pre head && (cd "$tmp/pre" && patch -s -p1 < "$raw/patches/fork-before-index-scores.patch")
copy vmask head && (cd "$tmp/vmask" && patch -s -p1 < "$raw/patches/values-masked-load.patch")
level0_256='s/    return min(512 if one_wave else 256, block)/    return min(256, block)/'
edited l0s256 head threshold.py "$level0_256"
options='        return {"num_warps": self.num_warps, '
cap='**({} if self.block_n != 32 or self.waves != 1 else {"maxnreg": 112}), '  # the ring beside the selection only
stages='**({} if self.num_stages is None'
edited rmax head decode.py "s/${options}\\*\\*({} if self.num_stages is None/${options}${cap}${stages}/"
list64='s/^LIST_LAUNCH = DecodeLaunch(block_n=128, waves=1, combine_chunk=256)/'
list64+='LIST_LAUNCH = DecodeLaunch(block_n=64, waves=1, combine_chunk=256)/'
edited l64 head decode.py "$list64"
edited l0w2v2 w2v2 threshold.py "$level0_256"
edited r8l64 r8 decode.py "$list64"
edited r64l64 r64 decode.py "$list64"
for tree in r8l64 r64l64 w2v2; do cp -r "$tmp/head/tests" "$tmp/head/pyproject.toml" "$tmp/$tree/"; done
stamped() {  # NAME BASE: BASE with per-program time stamps
  copy "$1" "$2" && python3 "$tools/stamp_patch.py" "$tmp/$1" > /dev/null
}
stamped diag head; stamped dw2v2 w2v2; stamped dl0s256 l0s256; stamped drmax rmax; stamped dr8l64 r8l64
ab() { (cd "$tmp/head" && PYTHONPATH=. python3 benchmarks/decode_step_ab.py "$@"); }
ab_placebo() { (cd "$here" && git show 885e538:benchmarks/decode_step_ab.py > "$tmp/decode_step_ab_placebo.py" && \
  cd "$tmp/head" && PYTHONPATH=. python3 "$tmp/decode_step_ab_placebo.py" "$@"); }  # --placebo came after d310b57
in_head() { (cd "$tmp/head" && PYTHONPATH=. python3 "$@"); }

# call 1
ab --trees $(trees head pre w2 w2v2 wv2 vmask st4) --cases step --layers 8 --lengths 256K,128K,1M --rounds 6 \
  --json "$out/call1/ab.json" | tee "$out/call1/ab.txt"
ab --trees $(trees head w2 w2v2 wv2 vmask st4) --cases ring,chain --layers 8 --lengths 256K,128K --rounds 5 \
  --json "$out/call1/streams.json" | tee "$out/call1/streams.txt"
(cd "$tmp/head" && PYTHONPATH=. ncu --clock-control none -k regex:_decode_attention_kernel --launch-skip 2 \
  --launch-count 1 --section SpeedOfLight --section WarpStateStats --section Occupancy --section LaunchStats \
  --section SchedulerStats --section MemoryWorkloadAnalysis python3 "$tools/ring_alone.py") > "$out/call1/ncu_ring.txt"
# call 2
in_head "$tools/stamps.py" "$tmp/diag" 128K,256K | tee "$out/call2/stamps.txt"
# call 3
in_head "$tools/regs.py" $(trees head w2v2 l0s256 rmax) > "$out/call3/regs.txt"
in_head "$tools/stamps2.py" 256K $(trees diag dw2v2 dl0s256 drmax) | tee "$out/call3/stamps.txt"
ab --trees $(trees head w2v2 l0s256 l0w2v2 rmax) --cases step --layers 8 --lengths 256K,512K,1M,128K --rounds 6 \
  --json "$out/call3/ab.json" | tee "$out/call3/ab.txt"
ab --trees $(trees head w2v2 rmax) --cases ring --layers 8 --lengths 256K --rounds 4 | tee "$out/call3/ring.txt"
# call 4
in_head "$tools/stamps2.py" 256K $(trees diag dr8l64) | tee "$out/call4/stamps.txt"
ab --trees $(trees head r8 l64 r8l64 r64 r64l64) --cases step --layers 8 --ceiling --lengths 256K,512K,1M,128K \
  --rounds 6 --json "$out/call4/ab.json" | tee "$out/call4/ab.txt"
for tree in r8l64 r64l64; do
  (cd "$tmp/$tree" && PYTHONPATH=. python3 -m pytest -q -p no:cacheprovider tests/test_ops_gpu.py \
    -k "ring_beside or topp_decode or always_list") | tail -2 | tee -a "$out/call4/gpu_tests.txt"
done
# call 5
cp -r "$tmp/head" "$tmp/same1" && cp -r "$tmp/head" "$tmp/same2"
ab --trees $(trees head same1 same2) --cases step --layers 8 --lengths 256K,512K,1M,128K --rounds 8 \
  --json "$out/call5/placebo.json" | tee "$out/call5/placebo.txt"
# call 6
ab_placebo --placebo --trees $(trees head w2v2) --cases step --layers 8 --lengths 256K,512K,1M,128K --rounds 10 \
  --json "$out/call6/ab.json" | tee "$out/call6/ab.txt"
(cd "$tmp/w2v2" && PYTHONPATH=. python3 -m pytest -q -p no:cacheprovider tests/test_ops_gpu.py \
  -k "ring_beside or decode_step_is or two_role or capturable or topp_decode or always_list") | tail -2 \
  | tee "$out/call6/tests.txt"
