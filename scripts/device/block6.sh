#!/usr/bin/env bash
# Session-4 GPU call 2 (one H200, < 9.5 min, random weights only): the GPU tests, the decode-kernel
# sweep (list mode) + per-kernel profile of one sparse step, the attention bench's decode points
# (both geometries), then `rtpurbo bench model --cuda-graph` (dense eager, dense-graph, sparse graphed)
# at 32K / 128K + decode-only at 512K / 1M. Everything is packed into $OUT/results.tar.gz.
#   run: `bash scripts/device/block6.sh`
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
out=${OUT:-runs}
o=/tmp/block6
mkdir -p "$o"
started=$(date +%s)
stamp() { echo "[$(( $(date +%s) - started )) s] $*"; }
pack() { tar -czf "$out/results.tar.gz" -C /tmp block6; }
trap pack EXIT
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$o/gpu.txt"
python3 -c 'import torch, transformers, triton; print("torch", torch.__version__, "transformers", transformers.__version__, "triton", triton.__version__, "cudnn", torch.backends.cudnn.version())' | tee -a "$o/gpu.txt"
stamp "GPU tests"
timeout 200 python3 -m pytest -q -rs -p no:cacheprovider tests/test_ops_gpu.py tests/test_decode_static.py \
  tests/test_append_interpret.py > "$o/gpu_tests.txt" 2>&1
tail -n 3 "$o/gpu_tests.txt"
stamp "kernel sweep (list) + step profile"
timeout 90 python3 benchmarks/decode_kernel_sweep.py --parts list,profile --json "$o/sweep.json" > "$o/sweep.txt" 2>&1
grep -v '^{' "$o/sweep.txt" | tail -n 8
stamp "attention bench, decode"
timeout 120 python3 benchmarks/attention_bench.py --prefill= --decode 131072,524288,1048576 --budgets top-p,2048 \
  --json "$o/decode_bench.json" > "$o/decode_bench.txt" 2>&1
grep -v '^{' "$o/decode_bench.txt" | tail -n 25
stamp "bench model, graphed decode"
timeout $(( 555 - ($(date +%s) - started) )) python3 -m rtpurbo.cli bench model --lengths 32K 128K --max-tokens 2048 \
  --cuda-graph --decode-lengths 512K 1M --deadline $(( 520 - ($(date +%s) - started) )) --out "$o/graph.jsonl" > "$o/graph.txt" 2>&1
grep -v '^{' "$o/graph.txt" | tail -n 45
stamp done
