#!/usr/bin/env bash
# Short GPU call (tree: search-latency = main + first scores loaded before the PDL wait + one-round-trip state loads;
# .device/v7 = 8c4527d (kernels as main), v10 = search-latency + grouped walk): GPU kernel tests, then the paired A/B.
set -u
pip install -q --no-index --no-deps --find-links .device/whl nvidia-cudnn-frontend 2>&1 | tail -1
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . 2>&1 | tail -2
nvidia-smi --query-gpu=name --format=csv,noheader
o=$OUT/c1; mkdir -p $o
RTPURBO_PDL=0 timeout 150 python3 benchmarks/decode_step_ab.py --trees main=.device/v7 prefetch=. both=.device/v10 --pdl --cases step,select \
  --lengths 128K,1M --timeline --rounds 5 --rep 25 --json $o/ab.json > $o/ab.txt 2>&1; echo "ab rc=$? at $SECONDS s"
grep -v "Warn\|timeline\|warn" $o/ab.txt | sed 's/| same keys.*(/| (/' | cut -c1-400
python3 -c "import json;d=json.load(open('$o/ab.json'));print('same keys everywhere:', all(all(r['same_selection'].values()) for r in d['rows']))"
grep "timeline main+pdl\|timeline prefetch+pdl\|timeline both+pdl" $o/ab.txt | cut -c1-600 | head -6
timeout $(( ${LIMIT:-330} - 60 - SECONDS )) python3 -m pytest -q -p no:cacheprovider tests/test_ops_gpu.py > $o/tests1.txt 2>&1; echo "tests1 rc=$? at $SECONDS s"; grep -E "passed|failed|FAILED" $o/tests1.txt | tail -8 | cut -c1-300
timeout 55 python3 -m pytest -q -p no:cacheprovider tests/test_decode_static.py -k "dependent or graph_replay" > $o/tests2.txt 2>&1; echo "tests2 rc=$? at $SECONDS s"; grep -E "passed|failed|FAILED" $o/tests2.txt | tail -3 | cut -c1-300
echo "end at $SECONDS s"
