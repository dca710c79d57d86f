#!/usr/bin/env bash
# GPU call: tests (PDL, relay, anchored level 0), then the paired A/B of the selecting step against c7f3a8d (.device/v6).
set -u
pip install -q --no-index --no-deps --find-links .device/whl nvidia-cudnn-frontend 2>&1 | tail -1
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . 2>&1 | tail -2
nvidia-smi --query-gpu=name --format=csv,noheader
o=$OUT/c1; mkdir -p $o
timeout 170 python3 -m pytest -q -p no:cacheprovider -x tests/test_ops_gpu.py -k "dependent_launch or ring_beside or two_role or threshold or topp" > $o/tests1.txt 2>&1; echo "tests1 rc=$?"; tail -4 $o/tests1.txt | cut -c1-600
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_decode_static.py -k "anchor or dependent or graph_replay or side_stream" > $o/tests2.txt 2>&1; echo "tests2 rc=$?"; tail -4 $o/tests2.txt | cut -c1-600
echo "tests done at $SECONDS s"
timeout $((560 - SECONDS)) python3 benchmarks/decode_step_ab.py --trees base=.device/v6 new=. --pdl --schedules relay --anchor \
  --cases step,select --lengths 128K,1M --timeline --rounds 6 --rep 30 --json $o/ab.json > $o/ab.txt 2>&1; echo "ab rc=$?"
grep -v "Warn\|timeline" $o/ab.txt | cut -c1-900
grep "timeline" $o/ab.txt | grep -E "step|new\+relay\+anchor\+pdl|base:|new\+relay\+pdl" | cut -c1-400 | head -30
echo "end at $SECONDS s"
