#!/usr/bin/env bash
# Reproduces benchmarks/results/llama-3.1-8b_h100_2026-12-07_ring-in-chain.md on one GPU (an H100 there):
#   call1: the selecting step per layer of 8 at 128K-1M keys with the local heads' ring inside the chain (after level
#          1, after level 0, in the beside launch shape), paired against the ring beside the chain (the same tree)
#          and ab8edb4; then the GPU tests of the patched tree;
#   call2: more launch shapes of the ring inside the chain at 256K and 1M, with the ring alone;
#   call3: the shipped step, its chain alone and its ring alone (ab8edb4 loaded twice), and the 8-layer decode end to
#          end;
#   call4: the cut attention's scan in 2,048 / 4,096-key steps (below 512K keys, or at every length), two programs per
#          SM, each against ab8edb4;
#   call5: call 3 again (the machine of call 4), and the Qwen3-30B-A3B geometry's decode at 1M;
#   call6: the local heads' ring through SDPA (cuDNN, flash; GQA) beside the chain, against ab8edb4.
#
#   bash benchmarks/reproduce/llama-3.1-8b_h100_2026-12-07_ring-in-chain.sh OUT   # about 15 minutes
set -euo pipefail
here=$(git rev-parse --show-toplevel)
. "$here/benchmarks/reproduce/variant_trees.sh"  # start_run, archived, patched, edited, trees, llama_decode_e2e
start_run "${1:-}" llama-3.1-8b_h100_2026-12-07_ring-in-chain 6  # $out, $raw, $tmp
archived head:ab8edb4 new:ab8edb4
(cd "$tmp/new" && patch -s -p1 < "$raw/patches/ring-in-chain.patch")  # the package, its tests and the benchmark
ab() {  # CALL TREE ARGS...: decode_step_ab.py of TREE's checkout
  local call=$1 tree=$2; shift 2
  (cd "$tmp/$tree" && PYTHONPATH=. python3 benchmarks/decode_step_ab.py --layers 8 --ceiling "$@" \
    --json "$out/$call/ab.json") | tee "$out/$call/ab.txt"
}
ab call1 new --trees $(trees new head) --cases step --lengths 256K,512K,1M,128K --rounds 6 --timeline
(cd "$tmp/new" && PYTHONPATH=. python3 -m pytest -q -p no:cacheprovider tests/test_ops_gpu.py \
  -k "ring_in_chain or topp_decode or always_list or dependent_launch or capturable or decode_step_is") \
  | tail -3 | tee "$out/call1/tests_ops.txt"
(cd "$tmp/new" && PYTHONPATH=. python3 -m pytest -q -p no:cacheprovider tests/test_decode_static.py \
  -k "dependent_launch or cuda_graph_replay or side_stream") | tail -3 | tee "$out/call1/tests_static.txt"
(cd "$tmp/new" && patch -s -p1 < "$raw/patches/ring-shapes.patch")
ab call2 new --trees $(trees new) --cases step,ring --lengths 256K,1M --rounds 5 --timeline
shipped_apart() {  # CALL: the shipped step, its chain and its ring alone, then the Llama decode end to end
  ab "$1" head --trees $(trees head) --placebo --cases step,chain,ring --lengths 256K,512K,1M,128K --rounds 5
  llama_decode_e2e head "$1"
}
shipped_apart call3
edited c2k head cut_attend.py 's/^SCAN = 1024 /SCAN = 2048 /'
edited c2kall c2k topp.py 's/^CUT_ATTEND_MAX_KEYS = 1 << 19/CUT_ATTEND_MAX_KEYS = 1 << 40/'
edited c4ks head cut_attend.py 's/^SCAN = 1024 /SCAN = 4096 /'
edited c4kall c4ks topp.py 's/^CUT_ATTEND_MAX_KEYS = 1 << 19/CUT_ATTEND_MAX_KEYS = 1 << 40/'
edited cw2 head cut_attend.py 's/^CUT_LAUNCH = LIST_LAUNCH /CUT_LAUNCH = DecodeLaunch(block_n=128, waves=2, combine_chunk=256) /'
ab call4 head --trees $(trees head c2k c2kall c4kall cw2) --placebo --cases step --lengths 256K,512K,1M,128K --rounds 6
shipped_apart call5
(cd "$tmp/head" && PYTHONPATH=. python3 -m rtpurbo.cli bench model --geometry qwen3-30b-a3b --cuda-graph --lengths 8K \
  --decode-lengths 1M --index-logit-std 2.56 --no-flash-ttft --repeats 1 --out "$out/call5/e2e_qwen.jsonl") \
  | tee "$out/call5/e2e_qwen.txt"
for backend in flash cudnn; do patched "sdpa$backend" head "$raw/patches/ring-sdpa$backend.patch"; done
ab call6 head --trees $(trees head sdpaflash sdpacudnn) --placebo --cases step,ring --lengths 256K,512K,1M --rounds 6
