#!/usr/bin/env bash
# the local heads' ring inside the selecting step's chain (ring_in_chain), against it beside the chain; GPU tests after
set -u
export PYTHONPATH=.
{ date -u; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv
  python3 -c "import torch,triton,transformers,sys;print(torch.__version__,triton.__version__,transformers.__version__,sys.version.split()[0])"; } > $OUT/env.txt 2>&1
t0=$SECONDS
timeout 330 python3 benchmarks/decode_step_ab.py --trees new=. head=.device/head --cases step --layers 8 \
  --ceiling --lengths 256K,512K,1M,128K --rounds 6 --timeline --json $OUT/ab.json > $OUT/ab.txt 2>&1
echo "ab rc $? $((SECONDS-t0)) s" >> $OUT/env.txt
t0=$SECONDS
g=tests/test_ops_gpu.py
run() { timeout 200 python3 -m pytest -q -p no:cacheprovider -rfE "$@"; }
run $g -k "ring_in_chain" > $OUT/t1.txt 2>&1 &
run $g -k "topp_decode or always_list or dependent_launch or capturable or decode_step_is" > $OUT/t2.txt 2>&1 &
run tests/test_decode_static.py -k "dependent_launch or cuda_graph_replay or side_stream" > $OUT/t3.txt 2>&1 &
run $g -k "threshold_select_matches and (ties or zero or flat)" > $OUT/t4.txt 2>&1 &
wait
echo "tests $((SECONDS-t0)) s" >> $OUT/env.txt
for f in $OUT/t?.txt; do echo "$f: $(tail -1 $f)" >> $OUT/env.txt; done
