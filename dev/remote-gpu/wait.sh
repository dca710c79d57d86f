#!/usr/bin/env bash
# Watch the launched jobs for at most SECONDS (or until all have an .rc), printing one status line
# per job every INTERVAL s; then pack results and logs into $OUT.  wait.sh SECONDS [INTERVAL]
M=${M:-$HOME/m}
limit=${1:-540} every=${2:-60}
start=$(date +%s)
while :; do
  now=$(( $(date +%s) - start ))
  running=0
  echo "--- t=${now}s $(nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader | tr '\n' ' ')"
  for log in "$M"/logs/*.log; do
    [ -e "$log" ] || continue
    name=$(basename "$log" .log)
    if [ -e "$M/logs/$name.rc" ]; then state="rc=$(cat "$M/logs/$name.rc")"; else state=running; running=$((running + 1)); fi
    echo "$name [$state] $(tail -c 400 "$log" | tr '\r' '\n' | grep -av '^\s*$' | tail -n 1 | cut -c1-200)"
  done
  [ "$running" -eq 0 ] && break
  [ "$now" -ge "$limit" ] && break
  sleep "$every"
done
if [ -n "${OUT:-}" ]; then
  tar -czf "$OUT/results.tar.gz" -C "$M" --exclude='*.safetensors.tmp' out
  tar -czf "$OUT/logs.tar.gz" -C "$M" logs
  ls -la "$OUT"
fi
