#!/usr/bin/env bash
# Planned GPU block (nvidia-h200-x2, ~18 min), NOT RUN YET: W = 2048 training + eval (issue #7's
# perplexity prediction). Its GPU-test and model-bench part, planned in session 3, ran in session 4
# as block5.sh .. block7.sh and is dropped here.
#   call 1: `M=$HOME/m bash scripts/device/setup.sh stash` carrying .device/part_aa .device/session2 .device/plans
#   call 2: `mkdir -p $HOME/m && cp -r .device/train .device/eval $HOME/m/` carrying .device/train .device/eval
#   call 3: `M=$HOME/m bash scripts/device/block4.sh` carrying .device/part_ab .device/whl; then `wait.sh` calls.
#   phase A (~5 min): GPU 0 stage 1 at W = 2048 (same 14 retrieval heads, 240 s budget, stage-1 artifact);
#   phase B (~6 min): stage 2 from that artifact on 2 GPUs (300 steps x 2 x 8K, no checkpointing);
#   phase C (~6 min): eval rows of the W = 2048 artifact at 2K / 4K / 8K (12 perplexity windows at 8K):
#            does it meet issue #7's 1 % perplexity target where W = 1024 plateaued at +1.2 %?
set -u
source scripts/device/setup.sh assemble
M=${M:-$HOME/m}
out=$M/out
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
data=(--model "$MODEL" --data "$M/train/train-data" --dev "$M/train/dev-data")
scripts/device/launch.sh stage1-w2048 0 python3 scripts/train_gpu.py "${data[@]}" --plan "$M/train/head_plan.json" \
  --window 2048 --sinks 4 --indexer-time-budget 240 --distill-steps 1 --save-stage1 --no-save --no-eval \
  --out "$out/w2048-stage1" --checkpoint-dir /tmp/ckpt-w2048-s1
scripts/device/launch.sh stage2-w2048 0,1 bash -c "
  until [ -e $M/logs/stage1-w2048.rc ]; do sleep 5; done
  python3 -m torch.distributed.run --standalone --nproc_per_node 2 scripts/train_gpu.py ${data[*]} \
    --from-artifact $out/w2048-stage1/artifact-stage1 --distill-batch-size 2 --distill-steps 300 \
    --distill-time-budget 480 --no-gradient-checkpointing --eval-windows 4 --out $out/w2048 \
    --checkpoint-dir $M/ckpt-w2048"
for gpu_lengths in "0 8192" "1 2048 4096"; do
  set -- $gpu_lengths
  gpu=$1; shift
  scripts/device/launch.sh "eval-w2048-gpu$gpu" "$gpu" bash -c "
    until [ -e $M/logs/stage2-w2048.rc ]; do sleep 5; done
    for len in $*; do
      ppl=0; [ \$len = 8192 ] && ppl=12
      python3 -m rtpurbo.cli eval --model $MODEL --data $M/eval/eval_data.npz --rows \
        --artifacts stage2-w2048=$out/w2048/artifact --speed-repeats 0 --lengths \$len --ppl-windows \$ppl \
        --out $out/eval-w2048-\$len &
    done
    wait"
done
scripts/device/wait.sh "${WAIT:-500}" 60
