#!/usr/bin/env bash
# Reproduces benchmarks/results/llama-3.1-8b_h100_2026-12-06_launch-triggers-substamps.md on one GPU (an H100 there):
#   call1: the search's later launches let the next one start at once (trig: key levels 2-3; tg: and the tally and the
#          gather), level 1's loads issued without the branch on the mode (eager1, tge), key levels in 4-warp programs
#          (kw4), per layer of 8 against head beside a placebo; time stamps inside the search levels' programs of one
#          step at 256K keys (diag); the GPU tests of tge;
#   call2: on top of tg: the list attention's always part counted among its programs (tgl), and that with the search
#          in 1024-key chunks up to 256K keys (tgbl), with the bytes ceiling; GPU tests of tg, tgbl and tgl (in the
#          run, each stopped by a time limit after its first passes: the results file says how far each got).
#
#   bash benchmarks/reproduce/llama-3.1-8b_h100_2026-12-06_launch-triggers-substamps.sh OUT   # ~12 minutes
set -euo pipefail
here=$(git rev-parse --show-toplevel)
. "$here/benchmarks/reproduce/variant_trees.sh"  # start_run, archived, patched, copy, edited, trees
start_run "${1:-}" llama-3.1-8b_h100_2026-12-06_launch-triggers-substamps 2  # $out, $raw, $tmp
archived head:bfa136a
stamp_tools="$here/benchmarks/results/llama-3.1-8b_h100_2026-12-06_step-streams-stamps/tools"
for name in trig tg eager1 tge kw4 tgl tgbl; do patched "$name" head "$raw/patches/$name.patch"; done
copy diag head && python3 "$stamp_tools/stamp_patch.py" "$tmp/diag" && python3 "$raw/tools/substamp_patch.py" "$tmp/diag"
ab() { (cd "$tmp/head" && PYTHONPATH=. python3 benchmarks/decode_step_ab.py "$@"); }
gpu_tests() {  # NAME CALL
  (cd "$tmp/$1" && PYTHONPATH=. python3 -m pytest -q -p no:cacheprovider tests/test_ops_gpu.py \
    -k "topp_decode or always_list or decode_step_is or dependent_launch or threshold_select") | tail -2 \
    | tee "$out/$2/tests_$1.txt"
}
# call 1
ab --placebo --trees $(trees head trig tg eager1 tge kw4) --cases step --layers 8 --lengths 256K,512K,1M,128K \
  --rounds 6 --json "$out/call1/ab.json" | tee "$out/call1/ab.txt"
(cd "$tmp/head" && PYTHONPATH=. python3 "$raw/tools/substamps.py" 256K "diag=$tmp/diag") | tee "$out/call1/substamps.txt"
gpu_tests tge call1
# call 2
ab --placebo --trees $(trees head tg tgl tgbl) --cases step --layers 8 --ceiling \
  --lengths 256K,512K,1M,128K --rounds 5 --json "$out/call2/ab.json" | tee "$out/call2/ab.txt"
gpu_tests tg call2
gpu_tests tgbl call2
(cd "$tmp/tgl" && PYTHONPATH=. python3 -m pytest -q -p no:cacheprovider tests/test_ops_gpu.py \
  -k "topp_decode or always_list or decode_step_is or dependent_launch or threshold_select or capturable or two_role \
  or ring_beside") | tail -2 | tee "$out/call2/tests_tgl.txt"
