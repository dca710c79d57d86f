#!/usr/bin/env bash
# Reproduces benchmarks/results/llama-3.1-8b_h100_2026-12-06_column-level0-early-tail.md on one GPU (an H100 there):
#   call1: level 0 in a column layout (l0c), a row's tally and gather in the launches right after the level that
#          resolved it (et), and both (l0cet), per selecting layer step of 8 against head (94ebac5) beside a placebo,
#          with the bytes ceiling; the GPU tests of l0cet and et (stopped by a 120 s limit in the run);
#   call2: the 8-layer decode of the Llama-3.1-8B geometry at 32K-1M on head, one run;
#   call3: the same with a 2048-key budget and 3 runs, and the Qwen3-30B-A3B geometry at 1M, one run;
#   call4: tests/test_ops_gpu.py on head (stopped by a 235 s limit in the run).
#
#   bash benchmarks/reproduce/llama-3.1-8b_h100_2026-12-06_column-level0-early-tail.sh OUT   # ~25 minutes
set -euo pipefail
here=$(git rev-parse --show-toplevel)
. "$here/benchmarks/reproduce/variant_trees.sh"  # start_run, archived, patched, copy, edited, trees
start_run "${1:-}" llama-3.1-8b_h100_2026-12-06_column-level0-early-tail 4  # $out, $raw, $tmp
archived head:94ebac5
column="$here/benchmarks/results/llama-3.1-8b_h100_2026-12-06_launch-triggers-substamps/patches/level0-column-layout.patch"
patched l0c head "$column"
patched et head "$raw/patches/early-tail.patch"
patched l0cet et "$column"
gpu_tests() {  # NAME CALL
  (cd "$tmp/$1" && PYTHONPATH=. python3 -m pytest -q -p no:cacheprovider tests/test_ops_gpu.py \
    -k "topp or threshold or always_list or decode_step or dependent_launch or capturable or two_role or ring_beside") \
    | tail -2 | tee "$out/$2/tests_$1.txt"
}
rt() { (cd "$tmp/head" && PYTHONPATH=. python3 -m rtpurbo.cli "$@"); }
# call 1
(cd "$tmp/head" && PYTHONPATH=. python3 benchmarks/decode_step_ab.py --placebo --trees $(trees head l0c et l0cet) \
  --cases step --layers 8 --ceiling --lengths 256K,512K,1M,128K --rounds 5 --json "$out/call1/ab.json") \
  | tee "$out/call1/ab.txt"
gpu_tests l0cet call1
gpu_tests et call1
# call 2
rt bench model --cuda-graph --lengths 8K --decode-lengths 32K 128K 256K 1M --index-logit-std 2.56 --no-flash-ttft \
  --repeats 1 --out "$out/call2/e2e.jsonl" | tee "$out/call2/e2e.txt"
# call 3
rt bench model --cuda-graph --lengths 8K --decode-lengths 32K 128K 256K 1M --index-logit-std 2.56 --max-tokens 2048 \
  --no-flash-ttft --repeats 3 --out "$out/call3/e2e_llama.jsonl" | tee "$out/call3/e2e_llama.txt"
rt bench model --geometry qwen3-30b-a3b --cuda-graph --lengths 8K --decode-lengths 1M --index-logit-std 2.56 \
  --no-flash-ttft --repeats 1 --out "$out/call3/e2e_qwen.jsonl" | tee "$out/call3/e2e_qwen.txt"
# call 4
(cd "$tmp/head" && PYTHONPATH=. python3 -m pytest -q -p no:cacheprovider -rfE tests/test_ops_gpu.py) \
  | tail -5 | tee "$out/call4/tests_head.txt"
