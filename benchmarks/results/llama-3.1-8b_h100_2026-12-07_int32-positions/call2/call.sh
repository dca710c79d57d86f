#!/usr/bin/env bash
# device call B: the int32-positions branch (.device/i32.patch on this tree) through its GPU tests, then the decode
# end to end of both trees (Llama 256K / 1M, paired by alternating), then Qwen3-30B-A3B at 1M on main
set -u
export PYTHONUNBUFFERED=1
{ date -u; echo "commit ${COMMIT:-?}"; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader
  python3 -c "import torch,triton,transformers,numpy;print('torch',torch.__version__,'triton',triton.__version__,'transformers',transformers.__version__,'numpy',numpy.__version__)"; } > $OUT/env.txt 2>&1
t0=$(date +%s)
rm -rf /tmp/i32 && mkdir -p /tmp/i32 && cp -r rtpurbo tests benchmarks pyproject.toml /tmp/i32/ && (cd /tmp/i32 && patch -s -p1 < "$OLDPWD/.device/i32.patch") || { echo "patch failed" >> $OUT/env.txt; exit 1; }
(cd /tmp/i32 && PYTHONPATH=. timeout -k 5 240 python3 -m pytest -q -p no:cacheprovider tests/test_decode_static.py tests/test_gpu_steady_state.py \
  tests/test_ops_gpu.py -k "static or graph or side_stream or dependent_launch or one_launch or two_role or topp_decode or ring_beside or always_list or capturable or batched or steady" ) > $OUT/tests.txt 2>&1
echo "tests rc $? at $(( $(date +%s) - t0 )) s" >> $OUT/env.txt
e2e() {  # TREE NAME ARGS
  local tree=$1 name=$2; shift 2
  (cd "$tree" && PYTHONPATH=. timeout -k 5 150 python3 -m rtpurbo.cli bench model --cuda-graph --lengths 8K --index-logit-std 2.56 \
    --no-flash-ttft "$@" --out $OUT/e2e_$name.jsonl) >> $OUT/e2e.txt 2>&1
  echo "e2e $name rc $? at $(( $(date +%s) - t0 )) s" >> $OUT/env.txt
}
e2e . main1 --decode-lengths 256K 1M --repeats 3
e2e /tmp/i32 i32a --decode-lengths 256K 1M --repeats 3
left=$(( ${DEADLINE:-560} - ($(date +%s) - t0) ))
[ "$left" -gt 150 ] && e2e . qwen --geometry qwen3-30b-a3b --decode-lengths 1M --repeats 1
