#!/usr/bin/env bash
# device call C: every GPU test file on the int32-positions branch (.device/i32.patch applied to this tree)
set -u
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $OUT/env.txt 2>&1
rm -rf /tmp/i32 && mkdir -p /tmp/i32 && cp -r rtpurbo tests benchmarks pyproject.toml /tmp/i32/ && (cd /tmp/i32 && patch -s -p1 < "$OLDPWD/.device/i32.patch") || { echo "patch failed" >> $OUT/env.txt; exit 1; }
cd /tmp/i32 && PYTHONPATH=. timeout -k 5 ${LIMIT:-450} python3 -m pytest -q -p no:cacheprovider -rs tests/test_ops_gpu.py tests/test_decode_static.py \
  tests/test_gpu_steady_state.py tests/test_cudnn_window_gpu.py tests/test_append_interpret.py tests/test_cache.py tests/test_windowed_retrieval_cache.py > $OUT/tests.txt 2>&1
echo "tests rc $?" >> $OUT/env.txt
