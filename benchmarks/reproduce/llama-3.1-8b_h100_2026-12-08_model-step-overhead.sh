#!/usr/bin/env bash
# Reproduces benchmarks/results/llama-3.1-8b_h100_2026-12-08_model-step-overhead.md on one GPU (an H100 there):
#   call1: the 8-layer Llama decode end to end of 3d79ccd;
#   call2: the cut attention attending its run of slots under the selection mask (patches/masked-run.patch: dense,
#          and the same in 64-key steps, at every length below 2M keys, in 2 stages) against 3d79ccd with a placebo,
#          the step, chain, ring and every cases at 64K-1M keys with the bytes ceiling;
#   call3: 3d79ccd's decode end to end at 64K-192K with the seqlen threshold at 256K (every key) and at 0 (selecting);
#   call4: the end to end decode at 256K / 1M of 24f7b00 (the merged output, one launch of selection stats) and
#          3d79ccd one after the other, 24f7b00's GPU tests of static decode and the decode kernels, and 24f7b00
#          selecting at 64K-192K.
#
#   bash benchmarks/reproduce/llama-3.1-8b_h100_2026-12-08_model-step-overhead.sh OUT   # about 17 minutes
set -euo pipefail
here=$(git rev-parse --show-toplevel)
. "$here/benchmarks/reproduce/variant_trees.sh"  # start_run, archived, patched, edited, trees, llama_decode_e2e
start_run "${1:-}" llama-3.1-8b_h100_2026-12-08_model-step-overhead 4  # $out, $raw, $tmp
archived head:3d79ccd new:24f7b00
patched dense head "$raw/patches/masked-run.patch"
edited dense64 dense cut_attend.py 's/^CUT_LAUNCH = LIST_LAUNCH/CUT_LAUNCH = DecodeLaunch(block_n=64, waves=1, combine_chunk=256)/'
edited dense_s2 dense cut_attend.py \
  's/^CUT_LAUNCH = LIST_LAUNCH/CUT_LAUNCH = DecodeLaunch(block_n=128, waves=1, num_stages=2, combine_chunk=256)/'
edited denseall dense topp.py 's/^CUT_ATTEND_MAX_KEYS = 1 << 19/CUT_ATTEND_MAX_KEYS = 1 << 21/'
export PYTHONUNBUFFERED=1
llama_decode_e2e head call1
(cd "$tmp/head" && PYTHONPATH=. python3 benchmarks/decode_step_ab.py --trees $(trees head dense dense64 denseall dense_s2) \
  --placebo --cases step,chain,ring,every --layers 8 --ceiling --lengths 128K,256K,1M,64K,192K,512K --rounds 5 \
  --json "$out/call2/ab.json") | tee "$out/call2/ab.txt"
e2e() {  # TREE CALL NAME ARGS...: `bench model` of TREE, 8 of Llama-3.1-8B's layers
  local tree=$1 call=$2 name=$3; shift 3
  (cd "$tmp/$tree" && PYTHONPATH=. python3 -m rtpurbo.cli bench model --cuda-graph --lengths 8K --index-logit-std 2.56 \
    --no-flash-ttft --repeats 3 "$@" --out "$out/$call/$name.jsonl") | tee "$out/$call/$name.txt"
}
for th in 256K 0; do e2e head call3 "e2e_th$th" --decode-lengths 64K 128K 192K --seqlen-threshold "$th"; done
e2e new call4 e2e_new --decode-lengths 256K 1M --max-tokens 2048
e2e head call4 e2e_head --decode-lengths 256K 1M --max-tokens 2048
(cd "$tmp/new" && PYTHONPATH=. python3 -m pytest -q -p no:cacheprovider -rs tests/test_decode_static.py tests/test_ops_gpu.py \
  -k "static or graph or side_stream or dependent_launch or topp_decode or ring_beside or always_list or capturable or \
  cut or stats") | tail -3 | tee "$out/call4/tests.txt"
e2e new call4 e2e_new_th0 --decode-lengths 64K 128K 192K --seqlen-threshold 0
