#!/usr/bin/env bash
# head (e729b58) against narrow (level 1's narrow walk, the working tree) and g4 (narrow + level 0 in 256-key steps,
# four to a round trip), per layer of 8 with the bytes ceiling; then the selection's GPU tests and decode end to end on
# g4 (its ops copied over this copy of the working tree)
set -u
export PYTHONPATH=.
DEADLINE=${DEADLINE:-575}  # seconds this script may run
{ date -u; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv
  python3 -c "import torch,triton,transformers,sys;print(torch.__version__,triton.__version__,transformers.__version__,sys.version.split()[0])"
  grep -c NARROW_KEYS rtpurbo/ops/triton/threshold_phases.py; } > $OUT/env.txt 2>&1
t0=$SECONDS
timeout 230 python3 benchmarks/decode_step_ab.py --trees head=.device/head narrow=.device/narrow g4=.device/g4 --placebo \
  --cases step --layers 8 --ceiling --lengths 256K,512K,1M,128K --rounds 5 --json $OUT/ab.json > $OUT/ab.txt 2>&1
echo "ab rc $? $((SECONDS-t0)) s" >> $OUT/env.txt
cp -r .device/g4/rtpurbo/ops/. rtpurbo/ops/
echo "tests on g4: $(grep -c 'four steps a round trip' rtpurbo/ops/triton/threshold_phases.py)" >> $OUT/env.txt
t0=$SECONDS
python3 -m pytest -q -p no:cacheprovider --co tests/test_ops_gpu.py -k "threshold or topp or waits_out or cut" \
  2>/dev/null | grep "::" > $OUT/ids.txt
for s in 0 1 2 3; do
  awk -v s=$s 'NR % 4 == s' $OUT/ids.txt > $OUT/shard$s.txt
  timeout $(( DEADLINE - SECONDS > 300 ? 170 : DEADLINE - SECONDS - 10 )) python3 -m pytest -q -p no:cacheprovider -rfE $(cat $OUT/shard$s.txt) > $OUT/t$s.txt 2>&1 &
done
wait
for s in 0 1 2 3; do echo "shard $s ($(wc -l < $OUT/shard$s.txt) tests): $(grep -E 'passed|failed' $OUT/t$s.txt | tail -1) dots: $(grep -oE '^[.FEsx]+' $OUT/t$s.txt | tr -d '\n' | wc -c) F: $(grep -oE '^[.FEsx]+' $OUT/t$s.txt | tr -cd 'F' | wc -c)" >> $OUT/env.txt; done
echo "tests $((SECONDS-t0)) s" >> $OUT/env.txt
left=$((DEADLINE - SECONDS))
if [ $left -gt 60 ]; then
  t0=$SECONDS
  timeout $left python3 -m rtpurbo.cli bench model --cuda-graph --lengths 8K --decode-lengths 32K 128K 256K 1M \
    --index-logit-std 2.56 --max-tokens 2048 --no-flash-ttft --repeats 3 --out $OUT/e2e_llama.jsonl > $OUT/e2e_llama.txt 2>&1
  echo "e2e llama rc $? $((SECONDS-t0)) s" >> $OUT/env.txt
fi
