#!/usr/bin/env bash
# Third GPU block (nvidia-h200-x2, session 3). Call 1: `setup.sh stash` carrying
# .device/part_aa .device/train .device/session2; call 2 (carry .device/part_ab .device/whl
# .device/eval .device/plans): `M=$HOME/m bash scripts/device/block3.sh`; then `wait.sh` calls.
# Timing-sensitive jobs never share a GPU with another job:
#   phase A (~3.5 min): GPU 0 the 1-GPU stage-2 throughput run (global batch 2, the 2-GPU run's
#            schedule, stopped by its time budget; no gradient checkpointing: 135M at 8K fits);
#            GPU 1 the GPU tests, then the decode-selection benchmark (issue #5);
#   phase B (~9 min): stage 2 from the stage-1 artifact on 2 GPUs under torchrun, DDP_STEPS
#            optimizer steps of 2 x 8K sequences (issue #4 scaling, issue #7's full stage 2);
#            with gradient checkpointing again if phase A ran out of memory;
#   phase C (~6 min): GPU 0 `rtpurbo bench model`, then the 25 % training-free split;
#            GPU 1 the new artifact's eval rows (2K / 4K / 8K) and the trainable-set ablation
#            (lora / attention / all, ABL_STEPS steps each from the stage-1 artifact).
set -u
source scripts/device/setup.sh assemble
M=${M:-$HOME/m}
stage1=$M/session2/artifact-stage1
out=$M/out
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
steps=${DDP_STEPS:-300}
train=(python3 scripts/train_gpu.py --model "$MODEL" --data "$M/train/train-data" --dev "$M/train/dev-data"
       --from-artifact "$stage1")
ddp="python3 -m torch.distributed.run --standalone --nproc_per_node"
# phase A
scripts/device/launch.sh scale1 0 $ddp 1 scripts/train_gpu.py --model "$MODEL" --data "$M/train/train-data" \
  --dev "$M/train/dev-data" --from-artifact "$stage1" --distill-batch-size 2 --distill-steps "$steps" \
  --distill-time-budget 150 --no-gradient-checkpointing --no-eval --no-save --out "$out/gpu1" \
  --checkpoint-dir /tmp/ckpt-scale1
scripts/device/launch.sh gpu-tests 1 bash -c "python3 -m pytest tests/test_ops_gpu.py -q -p no:cacheprovider \
  > $out/gpu_tests.txt 2>&1; mkdir -p $out/ops; PYTHONPATH=.:\$PYTHONPATH python3 benchmarks/attention_bench.py \
  --geometries llama-3.1-8b --prefill= --decode 131072,524288,1048576 --budgets top-p,2048 \
  --json $out/ops/select_bench.json"
# phase B
scripts/device/launch.sh stage2 0,1 bash -c "
  until [ -e $M/logs/scale1.rc ] && [ -e $M/logs/gpu-tests.rc ]; do sleep 5; done
  ckpt=--no-gradient-checkpointing; [ -s $out/gpu1/distill_report.json ] || ckpt=
  echo \"phase B: \${ckpt:-with gradient checkpointing}\"
  $ddp 2 scripts/train_gpu.py --model $MODEL --data $M/train/train-data --dev $M/train/dev-data \
    --from-artifact $stage1 --distill-batch-size 2 --distill-steps $steps --distill-time-budget 600 \$ckpt \
    --eval-windows 4 --out $out/gpu2 --checkpoint-dir $M/ckpt-ddp2
  python3 scripts/compare_scaling.py $out/gpu1/distill_report.json $out/gpu2/distill_report.json > $out/scaling.json"
# phase C
abl_common="--data $M/eval/eval_data.npz --lengths 8192 --samples 50 --speed-repeats 0 --ppl-windows 6 --sinks 4"
abl_common+=" --tasks niah_number niah_multikey niah_multiquery variable_tracking doc_qa code_function"
scripts/device/launch.sh after-gpu0 0 bash -c "
  until [ -e $M/logs/stage2.rc ]; do sleep 5; done
  OUT=$out/bench-model bash scripts/bench_model_gpu.sh
  python3 -m rtpurbo.cli eval --model $MODEL $abl_common --rows split --top-p 1 --window 1024 \
    --plan $M/plans/r25.json --out $out/abl-r25"
scripts/device/launch.sh after-gpu1 1 bash -c "
  until [ -e $M/logs/stage2.rc ]; do sleep 5; done
  for len in 2048 4096 8192; do
    ppl=0; [ \$len = 8192 ] && ppl=12
    python3 -m rtpurbo.cli eval --model $MODEL --data $M/eval/eval_data.npz --rows \
      --artifacts stage2-ddp=$out/gpu2/artifact --speed-repeats 0 --lengths \$len --ppl-windows \$ppl \
      --out $out/eval-stage2-ddp-\$len &
  done
  for set in lora attention all; do
    ( ${train[*]} --trainable \$set --distill-steps ${ABL_STEPS:-60} --distill-time-budget 400 \
        --no-gradient-checkpointing --no-eval --out $out/train-\$set --checkpoint-dir /tmp/ckpt-\$set &&
      python3 -m rtpurbo.cli eval --model $MODEL $abl_common --rows \
        --artifacts stage2-\$set=$out/train-\$set/artifact --out $out/abl-train-\$set ) &
  done
  wait"
scripts/device/wait.sh "${WAIT:-500}" 60
