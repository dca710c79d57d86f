#!/usr/bin/env bash
# The Triton sparse-prefill kernels (rtpurbo.ops.triton.block_sparse) against compiled flex: their GPU tests, then kernel,
# layer and end-to-end timings with both kernels (flex is the baseline). One GPU, about 6-8 minutes on an H200.
#
#   bash dev/remote-gpu/check-sparse-prefill-kernels.sh OUT_DIR [PARTS]   (from the repository root; rtpurbo installed)
#
# PARTS (default "tests attention model kernels modeltests", the order they run in) picks which parts run, so the
# check can be split over shorter device calls: "tests" (the kernels' GPU tests), "attention" and "model" (layer and
# end-to-end timings), "kernels" (kernel-level timings) and "modeltests" (the cache and generation tests on a GPU).
# OUT_DIR gets tests_*.txt (pytest tails), attention_*.json (rtpurbo bench attention, per geometry), model_*.jsonl
# (rtpurbo bench model, per kernel), block_mass.json (the mass scores' kernels) and kernels.json
# (benchmarks/sparse_prefill_kernels.py), plus env.txt.
set -uo pipefail
out=${1:?usage: check-sparse-prefill-kernels.sh OUT_DIR [PARTS]}
parts=" ${2:-tests attention model kernels modeltests} "
mkdir -p "$out"
python -c "import torch, transformers, triton; print(torch.__version__, transformers.__version__, triton.__version__,
torch.cuda.get_device_name())" > "$out/env.txt" 2>&1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader >> "$out/env.txt" 2>&1
git rev-parse HEAD >> "$out/env.txt" 2>&1

if [[ $parts == *" tests "* ]]; then
python -m pytest -q tests/test_ops_gpu.py -k "triton_sparse_prefill or sparse_prefill_matches or block_mass" \
  > "$out/tests_ops.txt" 2>&1; echo "rc=$?" >> "$out/tests_ops.txt"
python -m pytest -q tests/test_sparse_prefill.py > "$out/tests_sparse_prefill.txt" 2>&1
echo "rc=$?" >> "$out/tests_sparse_prefill.txt"
fi
if [[ $parts == *" attention "* ]]; then
for geometry in llama-3.1-8b qwen3-30b-a3b; do
  rtpurbo bench attention --geometries "$geometry" --prefill 32K,128K --decode 32K --budgets top-p \
    --prefill-blocks 16 --sparse-prefill-kernels flex,triton --window-kernel cudnn \
    --json "$out/attention_$geometry.json" > "$out/attention_$geometry.txt" 2>&1
done
fi
if [[ $parts == *" model "* ]]; then
for kernel in flex triton; do
  rtpurbo bench model --geometry llama-3.1-8b --lengths 32K 128K --decode-steps 16 --repeats 2 --no-flash-ttft \
    --prefill-blocks 16 --prefill-scoring mass --sparse-prefill-kernel "$kernel" --window-kernel cudnn \
    --out "$out/model_$kernel.jsonl" > "$out/model_$kernel.txt" 2>&1
done
fi
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
