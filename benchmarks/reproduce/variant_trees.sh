# Sourced by reproduce scripts (after setting "$here", the repository's top): the run's folders (start_run), then
# trees of the package at given commits, and variants of them, under "$tmp"; and the decode end to end of a tree.

start_run() {  # OUT RESULTS CALLS: $out with OUT/call1..CALLS, $raw (benchmarks/results/RESULTS), $tmp (removed on exit)
  out=$(realpath -m "${1:?usage: $0 OUT}")
  raw="$here/benchmarks/results/$2"
  local call
  for call in $(seq 1 "$3"); do mkdir -p "$out/call$call"; done
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  cd "$here"
}

archived() {  # NAME:REV ...: rtpurbo, benchmarks, tests and pyproject.toml as at REV, in $tmp/NAME
  local variant
  for variant in "$@"; do
    mkdir -p "$tmp/${variant%%:*}"
    git -C "$here" archive "${variant##*:}" rtpurbo benchmarks tests pyproject.toml | tar -x -C "$tmp/${variant%%:*}"
  done
}

patched() {  # NAME BASE PATCH: BASE's package, tests and pyproject.toml with PATCH applied (patch -p1), in $tmp/NAME
  mkdir -p "$tmp/$1" && cp -r "$tmp/$2/rtpurbo" "$tmp/$2/tests" "$tmp/$2/pyproject.toml" "$tmp/$1/"
  (cd "$tmp/$1" && patch -s -p1 < "$3")
}

copy() {  # NAME BASE: a copy of BASE's package
  mkdir -p "$tmp/$1" && cp -r "$tmp/$2/rtpurbo" "$tmp/$1/"
}

edited() {  # NAME BASE FILE SED: a copy of BASE's package with the sed expression applied to ops/triton/FILE
  copy "$1" "$2"
  local file="$tmp/$1/rtpurbo/ops/triton/$3"
  sed -i "$4" "$file"
  if cmp -s "$file" "$tmp/$2/rtpurbo/ops/triton/$3"; then echo "variant $1: the edit matched nothing" >&2; exit 1; fi
}

trees() {  # NAME ...: the trees under "$tmp" as decode_step_ab.py's --trees arguments (NAME=DIR ...)
  for name in "$@"; do printf '%s ' "$name=$tmp/$name"; done
}

llama_decode_e2e() {  # TREE CALL: `bench model` on TREE's checkout, 8 of Llama-3.1-8B's layers, decode at 32K-1M
  (cd "$tmp/$1" && PYTHONPATH=. python3 -m rtpurbo.cli bench model --cuda-graph --lengths 8K \
    --decode-lengths 32K 128K 256K 1M --index-logit-std 2.56 --max-tokens 2048 --no-flash-ttft --repeats 3 \
    --out "$out/$2/e2e_llama.jsonl") | tee "$out/$2/e2e_llama.txt"
}
