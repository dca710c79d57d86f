#!/usr/bin/env bash
# The GPU tests in parallel pytest processes, so that compiling (most of their time) uses the machine's cores. From
# the repository root, rtpurbo importable:
#
#   bash dev/remote-gpu/gpu-tests.sh OUT_DIR [SHARDS] [TEST_FILES...]
#
# SHARDS (default 6): processes, each given a contiguous run of the collected tests (a file's parametrisations of one
# kernel mostly stay in one process, which compiles them once). TEST_FILES default to the files that need a GPU.
# Writes OUT_DIR/shard_K.txt (each process's pytest output) and OUT_DIR/summary.txt (each shard's last line, then
# the totals); exits non-zero when a shard failed, ran out of time (GPU_TESTS_LIMIT seconds, default 900) or none
# ran.
set -uo pipefail
out=${1:?usage: gpu-tests.sh OUT_DIR [SHARDS] [TEST_FILES...]}
shards=${2:-6}
limit=${GPU_TESTS_LIMIT:-900}  # seconds a shard may run (timeout's exit status 124 in its log when it ran out)
shift $(( $# >= 2 ? 2 : 1 ))
files=("$@")
[ ${#files[@]} -gt 0 ] || files=(tests/test_ops_gpu.py tests/test_gpu_steady_state.py tests/test_cudnn_window_gpu.py
  tests/test_decode_static.py tests/test_seqlen_threshold.py tests/test_sparse_prefill.py)
mkdir -p "$out"
python3 -m pytest --collect-only -q -p no:cacheprovider "${files[@]}" 2>/dev/null | grep '::' > "$out/tests.txt"
total=$(wc -l < "$out/tests.txt")
if [ "$total" -eq 0 ]; then
  echo "no tests collected from ${files[*]}" | tee "$out/summary.txt"
  exit 1
fi
per=$(( (total + shards - 1) / shards ))
split -l "$per" -d -a 2 "$out/tests.txt" "$out/ids_"
pids=()
for ids in "$out"/ids_*; do
  k=${ids##*_}
  (mapfile -t nodes < "$ids"
   timeout "$limit" python3 -m pytest -q -rfEs --durations=5 -p no:cacheprovider "${nodes[@]}" > "$out/shard_$k.txt" 2>&1
   echo "rc $?" >> "$out/shard_$k.txt") &
  pids+=($!)
done
wait "${pids[@]}"
: > "$out/summary.txt"
failed=0
for log in "$out"/shard_*.txt; do
  echo "$(basename "$log"): $(grep -E '(passed|failed|error|skipped)' "$log" | tail -n 1) ($(tail -n 1 "$log"))" \
    >> "$out/summary.txt"
  grep -q '^rc 0$' "$log" || failed=1
done
echo "tests collected: $total in $shards shards; a shard failed: $failed" >> "$out/summary.txt"
cat "$out/summary.txt"
exit $failed
