#!/usr/bin/env bash
# The rest of the Triton sparse-prefill kernels' GPU checks (rtpurbo.ops.triton.block_sparse). Their GPU tests, layer
# and end-to-end timings against flex are benchmarks/reproduce/llama-3.1-8b_h200_2026-12-05_sparse-prefill-kernels.sh
# (run on 2026-12-05: they made the kernels the default); this runs what that call did not. One GPU, a few minutes.
#
#   bash dev/remote-gpu/check-sparse-prefill-kernels.sh OUT_DIR [PARTS]   (from the repository root; rtpurbo installed)
#
# PARTS (default "kernels modeltests", the order they run in): "kernels" (kernel-level timings: OUT_DIR/block_mass.json
# from benchmarks/block_mass_speed.py, OUT_DIR/kernels.json from benchmarks/sparse_prefill_kernels.py) and
# "modeltests" (the cache and generation tests on a GPU: OUT_DIR/tests_model.txt); plus env.txt.
set -uo pipefail
out=${1:?usage: check-sparse-prefill-kernels.sh OUT_DIR [PARTS]}
parts=" ${2:-kernels modeltests} "
mkdir -p "$out"
python -c "import torch, transformers, triton; print(torch.__version__, transformers.__version__, triton.__version__,
torch.cuda.get_device_name())" > "$out/env.txt" 2>&1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader >> "$out/env.txt" 2>&1
git rev-parse HEAD >> "$out/env.txt" 2>&1

if [[ $parts == *" kernels "* ]]; then
python benchmarks/block_mass_speed.py --lengths 32768,131072,1048576 --json "$out/block_mass.json" \
  > "$out/block_mass.txt" 2>&1
python benchmarks/sparse_prefill_kernels.py --scorings pooled,mass --tails 0,1024 --json "$out/kernels.json" \
  > "$out/kernels.txt" 2>&1
fi
if [[ $parts == *" modeltests "* ]]; then
python -m pytest -q tests/test_windowed_retrieval_cache.py tests/test_decode_static.py tests/test_causal_lm.py \
  tests/test_save_pretrained.py tests/test_beam_search.py > "$out/tests_model.txt" 2>&1
echo "rc=$?" >> "$out/tests_model.txt"
fi
tail -n 3 "$out"/tests_*.txt 2>/dev/null
