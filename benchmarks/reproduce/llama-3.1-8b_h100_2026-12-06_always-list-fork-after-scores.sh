#!/usr/bin/env bash
# Reproduces benchmarks/results/llama-3.1-8b_h100_2026-12-06_always-list-fork-after-scores.md on one GPU (an H100
# there), call by call (random inputs; every comparison in one process or one call):
#   call1: the attention bench's decode rows on fill (8aeef4b: no always-list fill launch);
#   call2: the GPU tests of the retrieval path on fill (test_ops_gpu from the ring beside selection on, 420 s limit)
#          and the graph-replay decode tests;
#   call3: paired A/B of base (0ce9160) and fill: the selecting step (one layer per graph) and the selection alone,
#          then the step per layer of 8; the rest of test_ops_gpu;
#   call4: base, fill and new (250c713: the local heads forked after the index scores) per layer of 8 with the bytes
#          ceiling at 128K-1M, one layer per graph with kernel timelines; decode tests; the attention bench on new;
#   call5: end-to-end decode at 1M (8 layers), new and base alternating, each run from its own folder;
#   call6: the ring beside the selection on half and a quarter of its programs against new;
#   call7: the gather in the list attention's launch (f263fcd) against new, with its GPU tests.
#
#   bash benchmarks/reproduce/llama-3.1-8b_h100_2026-12-06_always-list-fork-after-scores.sh OUT   # ~11 minutes
set -euo pipefail
out=$(realpath -m "${1:?usage: $0 OUT}")
for c in 1 2 3 4 5 6 7; do mkdir -p "$out/call$c"; done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for variant in base:0ce9160 fill:8aeef4b new:250c713 gather:f263fcd; do
  name=${variant%%:*}
  mkdir -p "$tmp/$name" && git archive "${variant##*:}" rtpurbo benchmarks tests | tar -x -C "$tmp/$name"
done
for waves in 50 25; do  # BESIDE_LAUNCH on fewer programs (splits rounds waves x SMs to a whole number)
  mkdir -p "$tmp/w$waves" && cp -r "$tmp/new/rtpurbo" "$tmp/w$waves/"
  sed -i -e "s/triton.cdiv(self.waves \* _num_sms(device), rows)/triton.cdiv(max(1, round(self.waves * _num_sms(device))), rows)/" \
    -e "s/^BESIDE_LAUNCH = DecodeLaunch(block_n=32, waves=1,/BESIDE_LAUNCH = DecodeLaunch(block_n=32, waves=0.$waves,/" \
    "$tmp/w$waves/rtpurbo/ops/triton/decode.py"
done
ab() { (cd "$tmp/new" && PYTHONPATH=. python3 benchmarks/decode_step_ab.py "$@"); }
rt() { local tree=$1; shift; (cd "$tmp/$tree" && python3 -m rtpurbo.cli "$@"); }
keep="not flex_prefill_matches and not triton_window_kernel_matches and not chunk_layout and not dense_tail"
keep="$keep and not plain_window and not local_mask and not flex_decode"

rt fill bench attention --geometries llama-3.1-8b --prefill "" --decode 32K,128K,1M --budgets top-p,2048 \
  --index-scale 0.64 --json "$out/call1/attention.json" | tee "$out/call1/attention.txt"
(cd "$tmp/fill" && timeout 420 python3 -m pytest -q -p no:cacheprovider tests/test_ops_gpu.py -k "$keep" \
  | tee "$out/call2/ops_gpu.txt"; python3 -m pytest -q -p no:cacheprovider tests/test_decode_static.py \
  -k "dependent or graph_replay or side_stream" | tee "$out/call2/decode_static.txt") || true
ab --trees base="$tmp/base" new="$tmp/fill" --cases step,select --lengths 128K,1M --rounds 6 --rep 25 --timeline \
  --json "$out/call3/ab.json" | tee "$out/call3/ab.txt"
ab --trees base="$tmp/base" new="$tmp/fill" --cases step --layers 8 --lengths 128K,1M --rounds 6 --rep 25 \
  --json "$out/call3/ab_layers8.json" | tee "$out/call3/ab_layers8.txt"
(cd "$tmp/fill" && python3 -m pytest -v -p no:cacheprovider tests/test_ops_gpu.py \
  -k "dependent_launch or backends_report or sparse_prefill_matches or refuses or block_mass or gradients" \
  | tail -40 > "$out/call3/ops_gpu_rest.txt")
ab --trees base="$tmp/base" fill="$tmp/fill" new="$tmp/new" --cases step --layers 8 --ceiling \
  --lengths 128K,256K,512K,1M --rounds 5 --rep 25 --json "$out/call4/ab_layers8.json" | tee "$out/call4/ab_layers8.txt"
ab --trees base="$tmp/base" fill="$tmp/fill" new="$tmp/new" --cases step --timeline --lengths 128K,1M --rounds 5 \
  --rep 25 --json "$out/call4/ab_step.json" | tee "$out/call4/ab_step.txt"
(cd "$tmp/new" && python3 -m pytest -q -p no:cacheprovider tests/test_decode_static.py \
  -k "dependent or graph_replay or side_stream" | tee "$out/call4/decode_static.txt"
  python3 -m pytest -q -p no:cacheprovider tests/test_ops_gpu.py -k "always_list or topp_decode or two_role" \
  | tee "$out/call4/ops_gpu.txt")
rt new bench attention --geometries llama-3.1-8b --prefill "" --decode 128K,1M --budgets top-p,2048 \
  --index-scale 0.64 --json "$out/call4/attention.json" | tee "$out/call4/attention.txt"
for run in new1 base1 new2 base2; do
  rt "${run%?}" bench model --cuda-graph --lengths 8K --decode-lengths 1M --index-logit-std 2.56 --no-flash-ttft \
    --repeats 1 --out "$out/call5/e2e_$run.jsonl"
done
ab --trees new="$tmp/new" w50="$tmp/w50" w25="$tmp/w25" --cases step --layers 8 --lengths 128K,512K,1M --rounds 5 \
  --rep 25 --json "$out/call6/ab_ring_layers8.json" | tee "$out/call6/ab_ring_layers8.txt"
ab --trees new="$tmp/new" w50="$tmp/w50" w25="$tmp/w25" --cases step --timeline --lengths 128K,1M --rounds 5 \
  --rep 25 --json "$out/call6/ab_ring_step.json" | tee "$out/call6/ab_ring_step.txt"
ab --trees prev="$tmp/new" new="$tmp/gather" --cases step --layers 8 --ceiling --lengths 128K,256K,512K,1M \
  --rounds 5 --rep 25 --json "$out/call7/ab_layers8.json" | tee "$out/call7/ab_layers8.txt"
(cd "$tmp/gather" && timeout 70 python3 -m pytest -q -p no:cacheprovider tests/test_ops_gpu.py \
  -k "topp_decode or always_list or two_role or dependent_launch" | tee "$out/call7/ops_gpu.txt"
  python3 -m pytest -q -p no:cacheprovider tests/test_decode_static.py -k "dependent or graph_replay or side_stream" \
  | tee "$out/call7/decode_static.txt") || true
