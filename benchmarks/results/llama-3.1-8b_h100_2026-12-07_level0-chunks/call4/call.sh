#!/usr/bin/env bash
# on an H200: decode end to end on the working tree (Llama, then Qwen3 at 1M as time allows); on an H100: the
# refined level0_chunks (working tree) against .device/head where the rule applies and around it
set -u
export PYTHONPATH=.
DEADLINE=${DEADLINE:-230}
{ date -u; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv
  python3 -c "import torch,triton,transformers,sys;print(torch.__version__,triton.__version__,transformers.__version__,sys.version.split()[0])"; } > $OUT/env.txt 2>&1
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
  t0=$SECONDS
  timeout $(( DEADLINE - SECONDS - 60 )) python3 -m rtpurbo.cli bench model --cuda-graph --lengths 8K --decode-lengths 32K 128K 256K 1M \
    --index-logit-std 2.56 --max-tokens 2048 --no-flash-ttft --repeats 2 --out $OUT/e2e_llama.jsonl > $OUT/e2e_llama.txt 2>&1
  echo "e2e llama rc $? $((SECONDS-t0)) s" >> $OUT/env.txt
  t0=$SECONDS
  timeout $(( DEADLINE - SECONDS - 3 )) python3 -m rtpurbo.cli bench model --geometry qwen3-30b-a3b --cuda-graph --lengths 8K --decode-lengths 1M \
    --index-logit-std 2.56 --no-flash-ttft --repeats 1 --out $OUT/e2e_qwen.jsonl > $OUT/e2e_qwen.txt 2>&1
  echo "e2e qwen rc $? $((SECONDS-t0)) s" >> $OUT/env.txt
else
  t0=$SECONDS
  timeout $(( DEADLINE - SECONDS - 3 )) python3 benchmarks/decode_step_ab.py --trees head=.device/head l0r=. --placebo \
    --cases step --layers 8 --ceiling --lengths 256K,320K,384K,448K,288K --rounds 5 --json $OUT/ab.json > $OUT/ab.txt 2>&1
  echo "ab rc $? $((SECONDS-t0)) s" >> $OUT/env.txt
fi
