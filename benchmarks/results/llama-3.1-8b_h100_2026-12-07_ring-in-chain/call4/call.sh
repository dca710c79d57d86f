#!/usr/bin/env bash
# the cut attention's scan in 2,048 / 4,096-key steps (below 512K, or at every length), two programs per SM
set -u
export PYTHONPATH=.
{ date -u; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv; } > $OUT/env.txt 2>&1
t0=$SECONDS
timeout 280 python3 benchmarks/decode_step_ab.py --trees head=.device/head c2k=.device/c2k c2kall=.device/c2kall \
  c4kall=.device/c4kall cw2=.device/cw2 --placebo --cases step --layers 8 --ceiling --lengths 256K,512K,1M,128K \
  --rounds 6 --json $OUT/ab.json > $OUT/ab.txt 2>&1
echo "ab rc $? $((SECONDS-t0)) s" >> $OUT/env.txt
