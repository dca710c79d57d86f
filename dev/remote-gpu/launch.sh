#!/usr/bin/env bash
# Start a job that outlives this device call: launch.sh NAME GPU COMMAND...
# Log in $M/logs/NAME.log, exit status in $M/logs/NAME.rc when it ends. Runs from $M/repo.
M=${M:-$HOME/m}
name=$1 gpu=$2; shift 2
mkdir -p "$M/logs"
rm -f "$M/logs/$name.rc"
CUDA_VISIBLE_DEVICES=$gpu setsid nohup bash -c 'cd "$0/repo" && "${@:2}"; echo $? > "$0/logs/$1.rc"' \
  "$M" "$name" "$@" > "$M/logs/$name.log" 2>&1 < /dev/null &
echo "launched $name on GPU $gpu (pid $!)"
