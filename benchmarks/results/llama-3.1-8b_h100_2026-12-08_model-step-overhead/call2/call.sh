#!/usr/bin/env bash
# device call D: the masked-run cut attention (dense, dense64, denseall) against main's head (3d79ccd) with a placebo,
# step/chain/ring/every at 64K-1M with the bytes ceiling; then head's 8-layer Llama decode end to end
set -u
export PYTHONUNBUFFERED=1
T=$PWD/.device/trees
{ date -u; echo "commit ${COMMIT:-?}"; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader
  python3 -c "import torch,triton,transformers,numpy;print('torch',torch.__version__,'triton',triton.__version__,'transformers',transformers.__version__,'numpy',numpy.__version__)"; } > $OUT/env.txt 2>&1
t0=$(date +%s)
PYTHONPATH=. timeout -k 5 ${AB_LIMIT:-380} python3 benchmarks/decode_step_ab.py --trees head=$T/head dense=$T/dense dense64=$T/dense64 \
  denseall=$T/denseall dense_s2=$T/dense_s2 --placebo --cases step,chain,ring,every --layers 8 --ceiling \
  --lengths 128K,256K,1M,64K,192K,512K --rounds 5 --json $OUT/ab.json > $OUT/ab.txt 2>&1
echo "ab rc $? in $(( $(date +%s) - t0 )) s" >> $OUT/env.txt
left=$(( ${DEADLINE:-570} - ($(date +%s) - t0) ))
echo "e2e budget $left s" >> $OUT/env.txt
if [ "${E2E:-1}" = 1 ] && [ "$left" -gt 90 ]; then
  (cd $T/head && PYTHONPATH=. timeout -k 5 "$left" python3 -m rtpurbo.cli bench model --cuda-graph --lengths 8K \
    --decode-lengths 32K 128K 256K 1M --index-logit-std 2.56 --max-tokens 2048 --no-flash-ttft --repeats 3 \
    --deadline $(( left - 30 )) --out $OUT/e2e_llama.jsonl > $OUT/e2e_llama.txt 2>&1)
  echo "e2e rc $? at $(( $(date +%s) - t0 )) s" >> $OUT/env.txt
fi
