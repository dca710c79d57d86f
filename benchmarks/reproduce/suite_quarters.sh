# Sourced by the reproduce scripts that evaluate one artifact row on the suite's 19 tasks at 4K and 8K (samples 0-99)
# and the 12 perplexity windows: the work split into four evals that run at once on one GPU (about 4 minutes on an
# H200 for SmolLM2-135M). committed_rows.suite_quarters merges them again.
#
#   suite_prepare OUT                    # CPU, ~4 min: OUT/eval100/eval_data.npz (the committed rows' samples)
#   suite_quarters OUT DATA ROW PREFIX   # writes OUT/PREFIX-4k-a, -4k-b, -8k-a, -8k-b
#   suite_script MODE OUT ARG ROW PREFIX REFERENCE...   # a reproduce script's three modes, below
#
# DATA: eval_data.npz from `rtpurbo eval --prepare-only --lengths 4096 8192 --samples 100 --ppl-windows 12`;
# ROW: an --artifacts row (NAME=ARTIFACT[@SETTINGS]); RTPURBO: the command (default python3 -m rtpurbo.cli).
suite_prepare() {
  local rt=(${RTPURBO:-python3 -m rtpurbo.cli})
  "${rt[@]}" eval --prepare-only --lengths 4096 8192 --samples 100 --ppl-windows 12 --workers 2 --out "$1/eval100"
}

# the suite's 19 tasks in two halves of about equal eval time
SUITE_TASKS_A="code_function common_words common_words_close doc_qa essay_multikey essay_multivalue essay_niah_number"
SUITE_TASKS_A="$SUITE_TASKS_A essay_niah_uuid frequent_words multikey_lines"
SUITE_TASKS_B="multikey_uuid_lines niah_multikey niah_multiquery niah_multivalue niah_number niah_uuid niah_word"
SUITE_TASKS_B="$SUITE_TASKS_B variable_tracking variable_tracking_chains"

suite_quarters() {
  local out=$1 data=$2 row=$3 prefix=$4
  local rt=(${RTPURBO:-python3 -m rtpurbo.cli})
  local t1=$SUITE_TASKS_A t2=$SUITE_TASKS_B
  _quarter() {  # _quarter NAME LENGTH PPL_WINDOWS TASKS
    # shellcheck disable=SC2086
    "${rt[@]}" eval --model smollm2-135m --speed-repeats 0 --batch-size 16 --decode graph --data "$data" --samples 100 \
      --lengths "$2" --ppl-windows "$3" --tasks $4 --rows --artifacts "$row" --out "$out/$1"
  }
  _quarter "$prefix-4k-a" 4096 12 "$t1" &
  _quarter "$prefix-4k-b" 4096 0 "$t2" &
  _quarter "$prefix-8k-a" 8192 0 "$t1" &
  _quarter "$prefix-8k-b" 8192 0 "$t2" &
  wait
}

# suite_script MODE OUT ARG ROW PREFIX REFERENCE...: what a reproduce script of one suite row does in each mode:
#   prepare OUT            suite_prepare
#   eval OUT EVAL100       suite_quarters of ROW, its evals named PREFIX-*
#   analyse OUT RESULTS    committed_rows.py: row PREFIX paired against the committed REFERENCE rows (names of
#                          committed_rows.REFERENCES, in order), outputs written to RESULTS
suite_script() {
  local mode=$1 out=$2 arg=$3 row=$4 prefix=$5
  shift 5
  mkdir -p "$out"
  case "$mode" in
  prepare) suite_prepare "$out" ;;
  eval) suite_quarters "$out" "${arg:?eval needs EVAL100 (OUT/eval100/eval_data.npz from prepare)}" "$row" "$prefix" ;;
  analyse)
    python3 "$(dirname "${BASH_SOURCE[0]}")/committed_rows.py" "$out" "${arg:?analyse needs RESULTS}" "$prefix" "$@"
    ;;
  *)
    echo "mode must be prepare, eval or analyse" >&2
    return 2
    ;;
  esac
}
