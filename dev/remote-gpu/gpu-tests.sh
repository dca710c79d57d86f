#!/usr/bin/env bash
# The GPU tests in parallel pytest processes, so that compiling (most of their time) uses the machine's cores. From
# the repository root, rtpurbo importable:
#
#   bash dev/remote-gpu/gpu-tests.sh OUT_DIR [SHARDS] [TEST_FILES...]
#
# SHARDS (default 6): processes, each given a contiguous run of the collected tests (a file's parametrisations of one
# kernel mostly stay in one process, which compiles them once). TEST_FILES default to the files that need a GPU.
# Writes OUT_DIR/shard_K.txt (each process's pytest output, with its five slowest tests) and OUT_DIR/summary.txt (each
# shard's totals, or what it had done when stopped, then the totals); the test ids in OUT_DIR/ids/. Each shard stops
# after GPU_TESTS_LIMIT seconds (default 900); stopped from outside (TERM), the script stops the shards and still
# writes the summary. Exits non-zero when a shard failed, was stopped or none ran.
set -uo pipefail
out=${1:?usage: gpu-tests.sh OUT_DIR [SHARDS] [TEST_FILES...]}
shards=${2:-6}
limit=${GPU_TESTS_LIMIT:-900}  # seconds a shard may run (timeout's exit status 124 in its log when it ran out)
shift $(( $# >= 2 ? 2 : 1 ))
files=("$@")
[ ${#files[@]} -gt 0 ] || files=(tests/test_ops_gpu.py tests/test_gpu_steady_state.py tests/test_cudnn_window_gpu.py
  tests/test_decode_static.py tests/test_seqlen_threshold.py tests/test_sparse_prefill.py)
mkdir -p "$out/ids"
python3 -m pytest --collect-only -q -p no:cacheprovider "${files[@]}" 2>/dev/null | grep '::' > "$out/ids/all.txt"
total=$(wc -l < "$out/ids/all.txt")
if [ "$total" -eq 0 ]; then
  echo "no tests collected from ${files[*]}" | tee "$out/summary.txt"
  exit 1
fi
per=$(( (total + shards - 1) / shards ))
split -l "$per" -d -a 2 "$out/ids/all.txt" "$out/ids/shard_"

summarize() {  # one line per shard: its pytest totals, or (stopped early) the outcomes its progress lines show so far
  : > "$out/summary.txt"
  failed=0
  local log progress
  for log in "$out"/shard_*.txt; do
    if grep -qE '^rc [01]$' "$log"; then  # pytest ended: its totals
      echo "$(basename "$log"): $(grep -E '(passed|failed|error|skipped)' "$log" | tail -n 1) ($(tail -n 1 "$log"))"
      grep -q '^rc 0$' "$log" || failed=1
    else  # stopped (its limit, or the caller's): what its progress lines show
      progress=$(grep -oE '^[.sFEx]+' "$log" | tr -d '\n')
      echo "$(basename "$log"): stopped early ($(grep '^rc ' "$log" || echo 'no rc')):" \
        "$(tr -cd '.' <<< "$progress" | wc -c) passed, $(tr -cd 'FE' <<< "$progress" | wc -c) failed or errors so far"
      failed=1
    fi
  done >> "$out/summary.txt"
  echo "tests collected: $total in $shards shards; a shard failed or did not end: $failed" >> "$out/summary.txt"
  cat "$out/summary.txt"
}
pids=()
logs=()
for ids in "$out"/ids/shard_*; do
  mapfile -t nodes < "$ids"
  logs+=("$out/shard_${ids##*_}.txt")
  timeout "$limit" python3 -m pytest -q -rfEs --durations=5 -p no:cacheprovider "${nodes[@]}" > "${logs[-1]}" 2>&1 &
  pids+=($!)
done
waited=0
finish() {  # wait for the shards not yet waited for, each exit status at the end of its log
  while [ "$waited" -lt ${#pids[@]} ]; do
    wait "${pids[$waited]}"
    printf "\nrc %s\n" "$?" >> "${logs[$waited]}"  # on a line of its own: a stopped pytest leaves its last one open
    waited=$((waited + 1))
  done
}
# stopped from outside (a caller's timeout): stop the shards (timeout passes the signal on to pytest), still summarize
trap 'kill -TERM "${pids[@]}" 2>/dev/null; finish; summarize; exit 124' TERM INT
finish
summarize
exit $failed
