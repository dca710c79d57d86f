#!/usr/bin/env bash
# level 0 in its own chunks: l0c (whole 256-key steps, ~2 programs per SM) and l0h (half-block, 1,024-key, steps)
# against the shipped search (head = the working tree), per layer of 8 with the bytes ceiling, at 256K and 128K;
# then, on an H200, decode end to end on the working tree (main), Llama and Qwen3 geometries
set -u
export PYTHONPATH=.
DEADLINE=${DEADLINE:-500}
{ date -u; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv
  python3 -c "import torch,triton,transformers,sys;print(torch.__version__,triton.__version__,transformers.__version__,sys.version.split()[0])"; } > $OUT/env.txt 2>&1
t0=$SECONDS
timeout 150 python3 benchmarks/decode_step_ab.py --trees head=. l0c=.device/l0c l0h=.device/l0h --placebo \
  --cases step --layers 8 --ceiling --lengths 256K,128K --rounds 8 --json $OUT/ab.json > $OUT/ab.txt 2>&1
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
  timeout 100 python3 benchmarks/decode_step_ab.py --trees head=. --cases step,every --layers 8 --ceiling --lengths 256K \
    --rounds 3 --json $OUT/every.json > $OUT/every.txt 2>&1
  echo "every rc $? $((SECONDS-t0)) s" >> $OUT/env.txt
fi
