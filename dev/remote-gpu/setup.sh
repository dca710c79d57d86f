#!/usr/bin/env bash
# On a lent GPU machine without network: assemble the SmolLM2 GGUF from its two carried halves and
# install the carried wheels (gguf). Idempotent. See README.md beside this file.
#   call 1 (carry .device/part_aa .device/train [.device/artifacts]):  dev/remote-gpu/setup.sh stash
#   call 2 (carry .device/part_ab .device/whl ...): source dev/remote-gpu/setup.sh assemble
M=${M:-$HOME/m}
MODEL=${MODEL:-$M/SmolLM2-135M-Instruct.Q4_1.gguf}  # the embedded file's name: same base fingerprint
mkdir -p "$M/logs" "$M/out"
case "${1:-assemble}" in
  stash)
    cp .device/part_aa "$M/" && { [ ! -d .device/train ] || cp -r .device/train "$M/"; }
    [ ! -d .device/artifacts ] || cp -r .device/artifacts "$M/"  # e.g. a stage-1 artifact to train from
    nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
    python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__, "gpus", torch.cuda.device_count())'
    ;;
  assemble)
    [ -s "$MODEL" ] || cat "$M/part_aa" .device/part_ab > "$MODEL"
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .device/whl/*.whl 2>/dev/null || true
    # the repo copy is replaced by every call: background jobs run from a private copy
    rm -rf "$M/repo" && mkdir -p "$M/repo" && cp -r rtpurbo scripts benchmarks dev tests pyproject.toml "$M/repo/"
    [ -s "$M/eval/eval_data.npz" ] || [ ! -d .device/eval ] || cp -r .device/eval "$M/"
    [ ! -d .device/plans ] || cp -r .device/plans "$M/"
    ls -la "$MODEL"
    ;;
esac
export MODEL PYTHONPATH=/tmp/site:$M/repo PYTHONUNBUFFERED=1 TQDM_MININTERVAL=20 \
  PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
