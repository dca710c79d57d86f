#!/usr/bin/env bash
# l0c (level 0 alone in chunks of about n_keys / (2 SMs) keys rounded to 256, 256-key steps) against the shipped search
# (head = the working tree's kernels), per layer of 8 with the bytes ceiling; then, on an H200, decode end to end on
# the working tree (main); on an H100, the selection's GPU tests on l0c
set -u
export PYTHONPATH=.
DEADLINE=${DEADLINE:-480}
{ date -u; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv
  python3 -c "import torch,triton,transformers,sys;print(torch.__version__,triton.__version__,transformers.__version__,sys.version.split()[0])"; } > $OUT/env.txt 2>&1
t0=$SECONDS
timeout 120 python3 benchmarks/decode_step_ab.py --trees head=. l0c=.device/l0c --placebo \
  --cases step --layers 8 --ceiling --lengths 256K,512K,1M,128K --rounds 6 --json $OUT/ab.json > $OUT/ab.txt 2>&1
echo "ab rc $? $((SECONDS-t0)) s" >> $OUT/env.txt
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
  t0=$SECONDS
  timeout $(( DEADLINE - SECONDS - 110 )) python3 -m rtpurbo.cli bench model --cuda-graph --lengths 8K --decode-lengths 32K 128K 256K 1M \
    --index-logit-std 2.56 --max-tokens 2048 --no-flash-ttft --repeats 3 --out $OUT/e2e_llama.jsonl > $OUT/e2e_llama.txt 2>&1
  echo "e2e llama rc $? $((SECONDS-t0)) s" >> $OUT/env.txt
  t0=$SECONDS
  timeout $(( DEADLINE - SECONDS - 5 )) python3 -m rtpurbo.cli bench model --geometry qwen3-30b-a3b --cuda-graph --lengths 8K --decode-lengths 1M \
    --index-logit-std 2.56 --no-flash-ttft --repeats 1 --out $OUT/e2e_qwen.jsonl > $OUT/e2e_qwen.txt 2>&1
  echo "e2e qwen rc $? $((SECONDS-t0)) s" >> $OUT/env.txt
else
  cp -r .device/l0c/rtpurbo/ops/. rtpurbo/ops/
  echo "tests on l0c: $(grep -c 'level0 = _chunks' rtpurbo/ops/triton/threshold.py)" >> $OUT/env.txt
  t0=$SECONDS
  python3 -m pytest -q -p no:cacheprovider --co tests/test_ops_gpu.py -k "threshold or topp or waits_out or cut" \
    2>/dev/null | grep "::" > $OUT/ids.txt
  for s in 0 1 2 3; do
    awk -v s=$s 'NR % 4 == s' $OUT/ids.txt > $OUT/shard$s.txt
    timeout $(( DEADLINE - SECONDS - 10 )) python3 -m pytest -q -p no:cacheprovider -rfE $(cat $OUT/shard$s.txt) > $OUT/t$s.txt 2>&1 &
  done
  wait
  for s in 0 1 2 3; do echo "shard $s ($(wc -l < $OUT/shard$s.txt) tests): $(grep -E 'passed|failed' $OUT/t$s.txt | tail -1) dots: $(grep -oE '^[.FEsx]+' $OUT/t$s.txt | tr -d '\n' | wc -c) F: $(grep -oE '^[.FEsx]+' $OUT/t$s.txt | tr -cd 'F' | wc -c)" >> $OUT/env.txt; done
  grep -h -A3 "^FAILED\|Error" $OUT/t?.txt | head -20 > $OUT/failures.txt
  echo "tests $((SECONDS-t0)) s" >> $OUT/env.txt
  for s in 0 1 2 3; do { echo "== shard $s"; tail -4 $OUT/t$s.txt; } >> $OUT/tests.txt; done
  rm -f $OUT/shard?.txt $OUT/ids.txt $OUT/t?.txt
fi
