#!/usr/bin/env bash
# level0_chunks (the working tree) against the shipped search (.device/head = main's kernels), per layer of 8 with the
# bytes ceiling, where the rule applies (256K-448K) and where it keeps the block chunks (128K); then on an H200 decode
# end to end on the working tree, on an H100 the selection's GPU tests on the working tree
set -u
export PYTHONPATH=.
DEADLINE=${DEADLINE:-480}
{ date -u; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv
  python3 -c "import torch,triton,transformers,sys;print(torch.__version__,triton.__version__,transformers.__version__,sys.version.split()[0])"
  git log --oneline -1 2>/dev/null; } > $OUT/env.txt 2>&1
t0=$SECONDS
timeout 170 python3 benchmarks/decode_step_ab.py --trees head=.device/head l0r=. --placebo \
  --cases step --layers 8 --ceiling --lengths 256K,320K,384K,448K,128K --rounds 6 --json $OUT/ab.json > $OUT/ab.txt 2>&1
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
  t0=$SECONDS
  python3 -m pytest -q -p no:cacheprovider --co tests/test_ops_gpu.py -k "threshold_select" 2>/dev/null | grep "::" > $OUT/ids.txt
  for s in 0 1 2 3; do
    awk -v s=$s 'NR % 4 == s' $OUT/ids.txt > $OUT/shard$s.txt
    timeout $(( DEADLINE - SECONDS - 10 )) python3 -m pytest -q -p no:cacheprovider -rfE $(cat $OUT/shard$s.txt) > $OUT/t$s.txt 2>&1 &
  done
  wait
  for s in 0 1 2 3; do echo "shard $s ($(wc -l < $OUT/shard$s.txt) tests): $(grep -E 'passed|failed' $OUT/t$s.txt | tail -1) dots: $(grep -oE '^[.FEsx]+' $OUT/t$s.txt | tr -d '\n' | wc -c) F: $(grep -oE '^[.FEsx]+' $OUT/t$s.txt | tr -cd 'F' | wc -c)" >> $OUT/env.txt; done
  { cat $OUT/ids.txt; for s in 0 1 2 3; do echo "== shard $s"; grep -A3 "^FAILED\|Error" $OUT/t$s.txt | head -20; tail -3 $OUT/t$s.txt; done; } > $OUT/tests.txt
  echo "tests $((SECONDS-t0)) s" >> $OUT/env.txt
  rm -f $OUT/shard?.txt $OUT/ids.txt $OUT/t?.txt
fi
