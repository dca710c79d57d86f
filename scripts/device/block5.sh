#!/usr/bin/env bash
# Session-4 GPU call 1 (one H200, < 9.5 min, no model files needed: random weights only):
#   CUDA-graph replay tests (sparse static decode, dense StaticCache), the decode-kernel launch sweep
#   with a per-kernel profile of one sparse step, then `rtpurbo bench model` with every variant's
#   decode graphed (+ decode-only at 1M after random caches), then eager with --profile-decode.
#   run: `bash scripts/device/block5.sh` (writes to $OUT)
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
o=${OUT:-runs/block5}
mkdir -p "$o"
started=$(date +%s)
stamp() { echo "[$(( $(date +%s) - started )) s] $*"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$o/gpu.txt"
python3 -c 'import torch, transformers, triton; print("torch", torch.__version__, "transformers", transformers.__version__, "triton", triton.__version__, "cudnn", torch.backends.cudnn.version())' | tee -a "$o/gpu.txt"
stamp "graph replay tests"
timeout 150 python3 -m pytest -q -rs -p no:cacheprovider tests/test_decode_static.py tests/test_dense_graph.py > "$o/graph_tests.txt" 2>&1
tail -n 3 "$o/graph_tests.txt"
stamp "kernel sweep"
timeout 150 python3 benchmarks/decode_kernel_sweep.py --json "$o/sweep.json" > "$o/sweep.txt" 2>&1
grep -v '^{' "$o/sweep.txt" | tail -n 20
stamp "bench model, graphed decode"
bench=(python3 -m rtpurbo.cli bench model --lengths 32K 128K --max-tokens 2048)
timeout 170 "${bench[@]}" --cuda-graph --decode-lengths 1M --deadline 140 --out "$o/graph.jsonl" > "$o/graph.txt" 2>&1
grep -v '^{' "$o/graph.txt" | tail -n 40
stamp "bench model, eager decode + profile"
timeout $(( 560 - ($(date +%s) - started) )) "${bench[@]}" --lengths 32K --profile-decode 8 --deadline 60 \
  --out "$o/eager.jsonl" > "$o/eager.txt" 2>&1
grep -v '^{' "$o/eager.txt" | tail -n 40
stamp done
