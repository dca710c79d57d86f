#!/usr/bin/env bash
# the shipped step apart (step, chain alone, ring alone, with the bytes ceiling) and decode end to end, Llama and
# Qwen3-30B-A3B geometries, on the working tree (main)
set -u
export PYTHONPATH=.
DEADLINE=${DEADLINE:-575}
{ date -u; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv
  python3 -c "import torch,triton,transformers,sys;print(torch.__version__,triton.__version__,transformers.__version__,sys.version.split()[0])"; } > $OUT/env.txt 2>&1
t0=$SECONDS
timeout 130 python3 benchmarks/decode_step_ab.py --trees head=. --placebo --cases step,chain,ring --layers 8 \
  --ceiling --lengths 256K,512K,1M,128K --rounds 5 --json $OUT/ab.json > $OUT/ab.txt 2>&1
echo "ab rc $? $((SECONDS-t0)) s" >> $OUT/env.txt
t0=$SECONDS
timeout $(( DEADLINE - SECONDS > 330 ? 200 : DEADLINE - SECONDS - 130 )) python3 -m rtpurbo.cli bench model --cuda-graph --lengths 8K --decode-lengths 32K 128K 256K 1M \
  --index-logit-std 2.56 --max-tokens 2048 --no-flash-ttft --repeats 3 --out $OUT/e2e_llama.jsonl > $OUT/e2e_llama.txt 2>&1
echo "e2e llama rc $? $((SECONDS-t0)) s" >> $OUT/env.txt
t0=$SECONDS
timeout $(( DEADLINE - SECONDS - 5 )) python3 -m rtpurbo.cli bench model --geometry qwen3-30b-a3b --cuda-graph --lengths 8K --decode-lengths 1M \
  --index-logit-std 2.56 --no-flash-ttft --repeats 1 --out $OUT/e2e_qwen.jsonl > $OUT/e2e_qwen.txt 2>&1
echo "e2e qwen rc $? $((SECONDS-t0)) s" >> $OUT/env.txt
