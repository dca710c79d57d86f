#!/usr/bin/env bash
# Reproduces benchmarks/results/llama-3.1-8b_h200_2026-12-04_cudnn-window.md on one GPU (H200 there), in the order of
# its calls (random weights; every baseline in the same run). Needs nvidia-cudnn-frontend (pip install -e '.[cudnn]').
#   call1: the window kernel with part of its exponentials on the FMA units (exp2_split.patch on a copy of the kernel)
#          and 64-row tiles, against the shipped kernel;
#   call2: the serial tail of a search level as one program (walks, level 0's probe rounds);
#   call3: the GPU tests of both window kernels; the window kernels in three interleaved rounds; one layer and the
#          8-layer model at 128K under each window kernel;
#   call4: the first and second call of each window kernel at new prompt lengths (cuDNN plan builds).
#
#   bash benchmarks/reproduce/llama-3.1-8b_h200_2026-12-04_cudnn-window.sh OUT   # about 9 minutes
set -euo pipefail
out=${1:?usage: $0 OUT}
out=$(realpath -m "$out")
mkdir -p "$out"/call1 "$out"/call2 "$out"/call3 "$out"/call4
export PYTHONPATH=${PYTHONPATH:-$PWD}
res=benchmarks/results/llama-3.1-8b_h200_2026-12-04_cudnn-window
patched=$(mktemp -d)/window_exp.py
cp rtpurbo/ops/triton/window.py "$patched"
patch -s "$patched" < "$res/call1/exp2_split.patch"
python3 "$res/call1/wexp.py" "$out/call1/wexp.jsonl" "$patched"
python3 benchmarks/decode_kernel_sweep.py --parts walk --json "$out/call2/walk.json"
python3 -m pytest -q -p no:cacheprovider tests/test_cudnn_window_gpu.py tests/test_ops_gpu.py -k window \
  | tee "$out/call3/gpu_tests.txt"
python3 benchmarks/window_kernels.py --lengths 32768,131072,1048576 --kernels triton,rtpurbo-plain,cudnn \
  --launches m128-n128-w8-s3 --rounds 3 --json "$out/call3/window.json"
for wk in triton cudnn; do
  python3 benchmarks/attention_bench.py --geometries llama-3.1-8b --prefill 32768,131072 --decode "" \
    --prefill-blocks 16 --window-kernel $wk --json "$out/call3/attention_$wk.json"
  python3 -m rtpurbo.cli bench model --lengths 128K --prefill-blocks 16 --prefill-scoring mass --repeats 3 \
    --decode-steps 8 --no-flash-ttft --window-kernel $wk --out "$out/call3/model_$wk.jsonl"
done
python3 - <<'PY' | tee "$out/call4/plan_build.txt"
import time, torch
from rtpurbo.bench.attention import _model_layout
from rtpurbo.ops import cudnn_window
from rtpurbo.ops.triton import window as triton_window
for L in (8192, 8320, 9000, 16384, 20000, 32768, 32769):
    q, k, v = _model_layout(L, 28, 128), _model_layout(L, 7, 128), _model_layout(L, 7, 128)
    times = {}
    for name, fn in (("cudnn", lambda: cudnn_window.window_attention(q, k, v, window=8192, sinks=4, scale=128**-0.5)),
                     ("triton", lambda: triton_window.window_attention(q, k, v, window=8192, sinks=4, scale=128**-0.5))):
        torch.cuda.synchronize(); t = time.perf_counter(); fn(); torch.cuda.synchronize(); first = time.perf_counter() - t
        t = time.perf_counter(); fn(); torch.cuda.synchronize(); second = time.perf_counter() - t
        times[name] = (round(first * 1e3, 1), round(second * 1e3, 2))
    print(f"L={L} first / second call ms: cudnn {times['cudnn']} triton {times['triton']}", flush=True)
PY
