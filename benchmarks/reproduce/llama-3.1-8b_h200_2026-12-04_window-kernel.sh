#!/usr/bin/env bash
# Reproduces benchmarks/results/llama-3.1-8b_h200_2026-12-04_window-kernel.md on one GPU (H200 there), in the order of
# its three calls (random weights; every baseline in the same run):
#   call1: GPU tests of the Triton window kernel; the launch sweep (32K, 128K); the decode GPU tests;
#   call2: prefill GPU tests; a few launches; the attention bench's prefill rows; end to end (8 layers, Llama);
#   call3: the same after the in-place layer output, and the kernel and layer at 1M.
#
#   bash benchmarks/reproduce/llama-3.1-8b_h200_2026-12-04_window-kernel.sh OUT   # about 18 minutes
set -euo pipefail
out=${1:?usage: $0 OUT}
mkdir -p "$out"/call1 "$out"/call2 "$out"/call3
rt=(${RTPURBO:-python3 -m rtpurbo.cli})
export PYTHONPATH=${PYTHONPATH:-$PWD}
python3 -m pytest -q -p no:cacheprovider tests/test_ops_gpu.py -k window | tee "$out/call1/tests_window.txt"
python3 benchmarks/window_kernels.py --lengths 32768,131072 --kernels triton,cudnn --json "$out/call1/window.json"
python3 -m pytest -q -p no:cacheprovider tests/test_decode_static.py tests/test_ops_gpu.py \
  -k "two_role or decode or topp or static" | tee "$out/call1/tests_decode.txt"
for call in call2 call3; do
  python3 -m pytest -q -p no:cacheprovider tests/test_ops_gpu.py -k "window or prefill" tests/test_gpu_steady_state.py \
    tests/test_generate_graphed.py | tee "$out/$call/gpu_tests.txt"
  python3 benchmarks/window_kernels.py --lengths 32768,131072 \
    --kernels rtpurbo-plain,triton-tma-m128-n128-w8-s3,triton-tma-ws-m128-n128-w8-s3,triton-tma-m128-n64-w8-s3,cudnn \
    --json "$out/$call/window.json"
  python3 benchmarks/attention_bench.py --geometries llama-3.1-8b,qwen3-30b-a3b --prefill 32768,131072 --decode "" \
    --prefill-blocks 16 --profile-prefill 32768 --json "$out/$call/attention.json" | tee "$out/$call/attention.log"
  "${rt[@]}" bench model --lengths 32K 128K --prefill-blocks 16 --repeats 3 --decode-steps 8 --out "$out/$call/llama.jsonl"
done
python3 benchmarks/window_kernels.py --lengths 1048576 --kernels rtpurbo-plain --json "$out/call3/window_1m.json"
python3 benchmarks/attention_bench.py --geometries llama-3.1-8b --prefill 1048576 --decode "" --prefill-blocks 16 \
  --json "$out/call3/attention_1m.json" | tee "$out/call3/attention_1m.log"
