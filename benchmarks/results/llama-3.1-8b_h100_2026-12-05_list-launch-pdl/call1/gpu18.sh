#!/usr/bin/env bash
set -u
pip install -q --no-index --no-deps --find-links .device/whl nvidia-cudnn-frontend 2>&1 | tail -1
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . 2>&1 | tail -2
nvidia-smi --query-gpu=name --format=csv,noheader
python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)"
o=$OUT/c1; mkdir -p $o
timeout 200 python3 -m pytest -q -p no:cacheprovider -x tests/test_ops_gpu.py -k "ring_beside or two_role or flex_decode or threshold or topp" 2>&1 | tail -3
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_decode_static.py tests/test_seqlen_threshold.py tests/test_generate_graphed.py 2>&1 | tail -3
OUT=$o timeout 230 python3 .device/list_stages.py 2>&1 | grep -v Warning | tail -40
left=$((580 - SECONDS)); echo "left for e2e: $left s"
timeout $left python3 -m rtpurbo.cli bench model --cuda-graph --lengths 8K --decode-lengths 256K 512K --index-logit-std 2.56 \
  --no-flash-ttft --repeats 1 --out $o/e2e.jsonl > $o/e2e.txt 2>&1; echo "e2e rc=$?"; grep -v Warning $o/e2e.txt | tail -25
