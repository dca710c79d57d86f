#!/usr/bin/env bash
# device call A: main's head on the corrected harness (int32 positions paired), then the Llama decode end to end
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=.
{ date -u; echo "commit ${COMMIT:-?}"; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader
  python3 -c "import torch,triton,transformers,numpy;print('torch',torch.__version__,'triton',triton.__version__,'transformers',transformers.__version__,'numpy',numpy.__version__)"; } > $OUT/env.txt 2>&1
t0=$(date +%s)
timeout -k 5 ${AB_LIMIT:-300} python3 benchmarks/decode_step_ab.py --trees head=. --placebo --cases step,chain,ring,every \
  --layers 8 --ceiling --lengths 256K,1M,128K,512K --rounds 5 --positions int32 --json $OUT/ab.json > $OUT/ab.txt 2>&1
echo "ab rc $? in $(( $(date +%s) - t0 )) s" >> $OUT/env.txt
left=$(( ${DEADLINE:-570} - ($(date +%s) - t0) ))
echo "e2e budget $left s" >> $OUT/env.txt
if [ "$left" -gt 90 ]; then
  timeout -k 5 "$left" python3 -m rtpurbo.cli bench model --cuda-graph --lengths 8K --decode-lengths 32K 128K 256K 1M \
    --index-logit-std 2.56 --max-tokens 2048 --no-flash-ttft --repeats 3 --deadline $(( left - 30 )) \
    --out $OUT/e2e_llama.jsonl > $OUT/e2e_llama.txt 2>&1
  echo "e2e rc $? at $(( $(date +%s) - t0 )) s" >> $OUT/env.txt
fi
