#!/usr/bin/env bash
# the local heads' ring through SDPA (flash / cuDNN, GQA) beside the chain, against the shipped Triton ring
set -u
export PYTHONPATH=.
{ date -u; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv; } > $OUT/env.txt 2>&1
python3 - >> $OUT/env.txt 2>&1 <<'PY'
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
q = torch.randn(1, 28, 1, 128, device="cuda", dtype=torch.bfloat16)
k = torch.randn(1, 7, 8196, 128, device="cuda", dtype=torch.bfloat16)
ref = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), k.float(), enable_gqa=True)
for b in ("FLASH_ATTENTION", "CUDNN_ATTENTION"):
    try:
        with sdpa_kernel([getattr(SDPBackend, b)]):
            out = torch.nn.functional.scaled_dot_product_attention(q, k, k, enable_gqa=True)
        print(b, "ok, max err", (out.float() - ref).abs().max().item())
    except RuntimeError as e:
        print(b, "fails:", str(e).splitlines()[0][:200])
PY
trees="head=.device/head sdpaflash=.device/sdpaflash"
grep -q "CUDNN_ATTENTION ok" $OUT/env.txt && trees="$trees sdpacudnn=.device/sdpacudnn"
t0=$SECONDS
timeout 200 python3 benchmarks/decode_step_ab.py --trees $trees --placebo --cases step,ring --layers 8 --ceiling \
  --lengths 256K,512K,1M --rounds 6 --json $OUT/ab.json > $OUT/ab.txt 2>&1
echo "ab rc $? $((SECONDS-t0)) s" >> $OUT/env.txt
