#!/usr/bin/env bash
# ring launch shapes inside the chain (256K, 1M), with kernel timelines
set -u
export PYTHONPATH=.
{ date -u; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv; } > $OUT/env.txt 2>&1
t0=$SECONDS
timeout 300 python3 benchmarks/decode_step_ab.py --trees new=. --cases step,ring --layers 8 \
  --ceiling --lengths 256K,1M --rounds 5 --timeline --json $OUT/ab.json > $OUT/ab.txt 2>&1
echo "ab rc $? $((SECONDS-t0)) s" >> $OUT/env.txt
