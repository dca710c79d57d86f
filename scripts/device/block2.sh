#!/usr/bin/env bash
# Second GPU block (nvidia-h200-x2; call 1 ran `setup.sh stash` carrying .device/session2, the
# stage-1 artifact of block1.sh, too; call 2 carries .device/part_ab .device/whl .device/eval):
#   phase A, both GPUs at once (~4 min): GPU 0 the GPU tests + the decode-selection benchmark,
#            GPU 1 `rtpurbo bench model` (issue #5);
#   phase B (~12 min): stage 2 from the stage-1 artifact, 60 steps on 1 GPU, then the full 600
#            steps on 2 GPUs under torchrun (same global batch 2 x 8K; issue #4 scaling, and the
#            full-length stage 2 of issue #7), saved with perplexity before/after;
#   phase C: the new artifact's eval rows (2K / 4K / 8K) and the trainable-set ablation.
# Each phase is a launched job (survives the call); watch with `scripts/device/wait.sh SECONDS`.
set -u
source scripts/device/setup.sh assemble
M=${M:-$HOME/m}
stage1=$M/session2/artifact-stage1
out=$M/out
scripts/device/launch.sh gpu-tests 0 bash -c "OUT=$out/ops python3 -m pytest tests/test_ops_gpu.py -q -x \
  -p no:cacheprovider > $out/gpu_tests.txt 2>&1; mkdir -p $out/ops; PYTHONPATH=.:\$PYTHONPATH \
  python3 benchmarks/attention_bench.py --geometries llama-3.1-8b --prefill= \
  --decode 131072,524288,1048576 --budgets top-p,2048 --json $out/ops/select_bench.json"
scripts/device/launch.sh bench-model 1 env OUT="$out/bench-model" bash scripts/bench_model_gpu.sh
scripts/device/launch.sh stage2 0,1 bash -c "
  until [ -e $M/logs/gpu-tests.rc ] && [ -e $M/logs/bench-model.rc ]; do sleep 10; done
  common=(--model $MODEL --data $M/train/train-data --dev $M/train/dev-data --from-artifact $stage1
          --distill-batch-size 2 --distill-time-budget 1500)
  python3 -m torch.distributed.run --standalone --nproc_per_node 1 scripts/train_gpu.py \"\${common[@]}\" \
    --distill-steps 60 --no-eval --no-save --out $out/gpu1 --checkpoint-dir /tmp/ddp1
  python3 -m torch.distributed.run --standalone --nproc_per_node 2 scripts/train_gpu.py \"\${common[@]}\" \
    --distill-steps 600 --out $out/gpu2 --checkpoint-dir $M/ckpt-ddp2
  python3 scripts/compare_scaling.py $out/gpu1/distill_report.json $out/gpu2/distill_report.json \
    > $out/scaling.json"
scripts/device/launch.sh after 0 bash -c "
  until [ -e $M/logs/stage2.rc ]; do sleep 10; done
  for len in 2048 4096 8192; do
    ppl=0; [ \$len = 8192 ] && ppl=12
    python3 -m rtpurbo.cli eval --model $MODEL --data $M/eval/eval_data.npz --rows \
      --artifacts stage2-600=$out/gpu2/artifact --speed-repeats 0 --lengths \$len --ppl-windows \$ppl \
      --out $out/eval-stage2-600-\$len &
  done
  wait"
scripts/device/wait.sh "${WAIT:-530}" 60
