#!/usr/bin/env bash
# Session-4 GPU call 3 (one H200, < 9.5 min, random weights only): GPU tests (side-stream overlap,
# graph replay), the local-prefill path diagnostic, the attention bench's decode points (overlapped
# step), then `rtpurbo bench model --cuda-graph` at 32K / 128K + decode-only at 512K / 1M.
# Everything is packed into $OUT/results.tar.gz.   run: `bash scripts/device/block7.sh`
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
out=${OUT:-runs}
o=/tmp/block7
mkdir -p "$o"
started=$(date +%s)
stamp() { echo "[$(( $(date +%s) - started )) s] $*"; }
pack() { tar -czf "$out/results.tar.gz" -C /tmp block7; }
trap pack EXIT
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$o/gpu.txt"
python3 -c 'import torch, transformers, triton; print("torch", torch.__version__, "transformers", transformers.__version__, "triton", triton.__version__, "cudnn", torch.backends.cudnn.version())' | tee -a "$o/gpu.txt"
stamp "GPU tests"
timeout 120 python3 -m pytest -q -rs -p no:cacheprovider tests/test_decode_static.py tests/test_append_interpret.py \
  tests/test_ops_gpu.py -k "static or append or graph or decode or topp" > "$o/gpu_tests.txt" 2>&1
tail -n 3 "$o/gpu_tests.txt"
stamp "local prefill paths"
timeout 60 python3 benchmarks/local_prefill_paths.py 131072 > "$o/local_prefill.txt" 2>&1; tail -n 2 "$o/local_prefill.txt"
stamp "attention bench, decode"
timeout 120 python3 benchmarks/attention_bench.py --prefill= --decode 131072,524288,1048576 --budgets top-p,2048 \
  --json "$o/decode_bench.json" > "$o/decode_bench.txt" 2>&1
grep -v '^{' "$o/decode_bench.txt" | tail -n 20
stamp "bench model, graphed decode"
timeout $(( 555 - ($(date +%s) - started) )) python3 -m rtpurbo.cli bench model --lengths 32K 128K --max-tokens 2048 \
  --cuda-graph --decode-lengths 512K 1M --deadline $(( 520 - ($(date +%s) - started) )) --out "$o/graph.jsonl" > "$o/graph.txt" 2>&1
grep -v '^{' "$o/graph.txt" | tail -n 30
stamp done
