#!/usr/bin/env bash
# the shipped search (.device/head) and level0_chunks (the working tree, cda5eec), each loaded twice, at 256K and 288K
export PYTHONPATH=.; nvidia-smi --query-gpu=name --format=csv,noheader > $OUT/env.txt; timeout 110 python3 benchmarks/decode_step_ab.py --trees head=.device/head l0r=. head2=.device/head l0r2=. --cases step --layers 8 --ceiling --lengths 256K,288K --rounds 8 --json $OUT/ab.json > $OUT/ab.txt 2>&1; echo "rc $?" >> $OUT/env.txt
