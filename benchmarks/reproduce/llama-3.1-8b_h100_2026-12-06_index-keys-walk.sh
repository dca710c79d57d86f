#!/usr/bin/env bash
# Reproduces benchmarks/results/llama-3.1-8b_h100_2026-12-06_index-keys-walk.md on one GPU (an H100 there), call by
# call (random inputs; every comparison within one process):
#   call1: 5e6238e against the indexer keys loaded beside the positions (idx, 5571cd8), the key levels in 32-bit (k32),
#          both (3e43434), index-score blocks of 2,048 keys (idx2k) and the ring beside the selection on fewer programs
#          (ring13, ring10), per layer of 8 with the bytes ceiling; ncu sector counters of 5e6238e's step; GPU tests;
#   call2: 5e6238e against 3e43434, the selecting step and the step over every key, per layer of 8 with the bytes
#          ceiling; keys each layer selects; one-layer timelines at 256K; ncu per launch of the search (serial tails);
#   call3: 3e43434's phased search against its relay schedule with PDL; ncu source counters of level 1 at 128K keys;
#   call4: the walk's clamp test from first bins (new, dad7387) and the key levels on 16 warps (w16) against 3e43434,
#          per layer of 8 with the bytes ceiling and the selection alone on three score regimes; GPU tests;
#   call5: on dad7387, the local heads forked after level 0 or level 1 (fork0, fork1: patches/fork-after-phase.patch),
#          the ring beside the selection on 2 programs of 2 warps per SM or 64-key steps (ringw2, ring64), the list
#          attention unpipelined (list1), per layer of 8, and one-layer timelines;
#   call6: fork0 again, the index scores on 4 warps (idxw4), level 0 in 128-key sub-steps (l0s128);
#   call7: the fork after level 0 from 512K keys as shipped (227fc36) against 1545444; GPU tests;
#   call8: on 227fc36, level 0 on 16 warps (l0w16) or in 512-key sub-steps (l0s512), the search over 4,096-key steps
#          (blk4k).
#
#   bash benchmarks/reproduce/llama-3.1-8b_h100_2026-12-06_index-keys-walk.sh OUT   # ~24 minutes
set -euo pipefail
here=$(git rev-parse --show-toplevel)
. "$here/benchmarks/reproduce/variant_trees.sh"  # start_run, archived, copy, edited
start_run "${1:-}" llama-3.1-8b_h100_2026-12-06_index-keys-walk 8  # $out, $raw, $tmp
archived prev:5e6238e idx:5571cd8 both:3e43434 new:dad7387 bench:a15532f before:1545444 fork:227fc36
copy k32 prev && git diff 5571cd8 3e43434 -- rtpurbo | (cd "$tmp/k32" && patch -s -p1)
edited idx2k prev decode.py 's/sinks: int, recent: int, block: int = 1024,/sinks: int, recent: int, block: int = 2048,/'
for r in ring13:640 ring10:864; do
  edited "${r%%:*}" prev decode.py "s/^BESIDE_LAUNCH = DecodeLaunch(block_n=32, waves=1, combine_chunk=256)/BESIDE_LAUNCH = DecodeLaunch(block_n=32, waves=1, split_keys=${r##*:}, combine_chunk=256)/"
done
edited w16 new threshold.py 's/        warps = 4 if first >= TALLY else num_warps .*/        warps = 4 if first >= TALLY else (16 if first >= 1 else num_warps)/'
ab() { (cd "$tmp/bench" && PYTHONPATH=. python3 benchmarks/decode_step_ab.py "$@"); }
lengths=128K,256K,512K,1M
metrics=gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,lts__t_sectors_srcunit_tex_op_read.sum,\
lts__t_sectors_srcunit_tex_op_read_lookup_miss.sum,l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum,\
l1tex__t_requests_pipe_lsu_mem_global_op_ld.sum,launch__grid_size

ab --trees main="$tmp/prev" idx="$tmp/idx" k32="$tmp/k32" both="$tmp/both" idx2k="$tmp/idx2k" ring13="$tmp/ring13" \
  ring10="$tmp/ring10" --cases step --layers 8 --ceiling --lengths $lengths --rounds 8 \
  --json "$out/call1/ab_layers8.json" | tee "$out/call1/ab_layers8.txt"
(cd "$tmp/prev" && cp "$tmp/bench/benchmarks/decode_step_ab.py" benchmarks/ && RTPURBO_PDL=0 ncu --clock-control none \
  --profile-from-start off -k regex:"_decode_attention_kernel|_index_scores_kernel" --metrics "$metrics" --csv \
  --page raw python3 "$here/benchmarks/results/llama-3.1-8b_h100_2026-12-06_tally-gather-fp32/call1/prof.py" ncu 128K,1M > "$out/call1/ncu_metrics.csv")
(cd "$tmp/both" && python3 -m pytest -q -p no:cacheprovider tests/test_ops_gpu.py \
  -k "topp_decode or always_list or decode_step_is or dependent_launch or capturable or two_role" \
  | tail -3 > "$out/call1/tests_both.txt") || true

ab --trees prev="$tmp/prev" new="$tmp/both" --cases step,every --layers 8 --ceiling --lengths $lengths --rounds 10 \
  --json "$out/call2/ab_layers8.json" | tee "$out/call2/ab_layers8.txt"
(cd "$tmp/bench" && PYTHONPATH=. python3 "$raw/call2/layer_keys.py" 128K,1M) | tee "$out/call2/layer_keys.txt"
ab --trees prev="$tmp/prev" new="$tmp/both" --cases step --lengths 256K --rounds 3 --timeline | tee "$out/call2/ab_step256.txt"
(cd "$tmp/both" && cp "$tmp/bench/benchmarks/decode_step_ab.py" benchmarks/ && RTPURBO_PDL=0 ncu --clock-control none \
  --profile-from-start off -k regex:"_search_kernel|_index_scores|_combine" --metrics \
  launch__grid_size,gpu__time_duration.sum,sm__cycles_active.avg,sm__cycles_active.max,sm__cycles_elapsed.max,smsp__warps_launched.sum,lts__t_sectors_op_atom.sum,lts__t_sectors_op_red.sum \
  --csv --page raw python3 "$here/benchmarks/results/llama-3.1-8b_h100_2026-12-06_tally-gather-fp32/call1/prof.py" ncu 128K,1M > "$out/call2/ncu_search.csv")

ab --trees new="$tmp/both" --schedules relay --cases step --layers 8 --ceiling --lengths $lengths --rounds 8 \
  --json "$out/call3/ab_relay8.json" | tee "$out/call3/ab_relay8.txt"
ab --trees new="$tmp/both" --schedules relay --cases step --lengths 128K,1M --rounds 3 --timeline \
  | tee "$out/call3/ab_relay_timeline.txt"
(cd "$tmp/both" && RTPURBO_PDL=0 ncu --clock-control none --profile-from-start off -k regex:"_search_kernel" \
  --launch-skip 1 --launch-count 1 --section SourceCounters --section WarpStateStats --page source --csv \
  --print-source sass python3 "$here/benchmarks/results/llama-3.1-8b_h100_2026-12-06_tally-gather-fp32/call1/prof.py" ncu 128K > "$out/call3/ncu_level1_source_full.csv")

ab --trees head="$tmp/both" new="$tmp/new" w16="$tmp/w16" --cases step --layers 8 --ceiling --lengths $lengths \
  --rounds 10 --json "$out/call4/ab_layers8.json" | tee "$out/call4/ab_layers8.txt"
ab --trees head="$tmp/both" new="$tmp/new" w16="$tmp/w16" --cases select --lengths 128K,1M --rounds 5 --timeline \
  --json "$out/call4/ab_select.json" | tee "$out/call4/ab_select.txt"
(cd "$tmp/new" && timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_ops_gpu.py \
  -k threshold_select_matches_reference | tail -3 > "$out/call4/tests_select.txt"
  python3 -m pytest -q -p no:cacheprovider tests/test_ops_gpu.py -k "topp_decode or always_list or decode_step_is or capturable" \
  | tail -3 > "$out/call4/tests_rest.txt") || true

for f in fork0:0 fork1:1; do
  copy "${f%%:*}" new && (cd "$tmp/${f%%:*}" && patch -s -p1 < "$raw/patches/fork-after-phase.patch")
  sed -i "s/^FORK_PHASE = 0 /FORK_PHASE = ${f##*:} /" "$tmp/${f%%:*}/rtpurbo/ops/triton/threshold.py"
done
for r in "ringw2:block_n=32, waves=2, num_warps=2" "ring64:block_n=64, waves=1"; do
  edited "${r%%:*}" new decode.py "s/^BESIDE_LAUNCH = DecodeLaunch(block_n=32, waves=1, combine_chunk=256)/BESIDE_LAUNCH = DecodeLaunch(${r#*:}, combine_chunk=256)/"
done
edited list1 new decode.py 's/^LIST_LAUNCH = DecodeLaunch(block_n=128, waves=1, combine_chunk=256)/LIST_LAUNCH = DecodeLaunch(block_n=128, waves=1, num_stages=1, combine_chunk=256)/'
edited idxw4 new decode.py 's/    sinks: int, recent: int, block: int = 1024, num_warps: int = 8,/    sinks: int, recent: int, block: int = 1024, num_warps: int = 4,/'
edited l0s128 new threshold.py 's/N_STATE=N_STATE, N_SYNC=N_SYNC, SUB=min(256, block),/N_STATE=N_STATE, N_SYNC=N_SYNC, SUB=min(128, block),/'

ab --trees cur="$tmp/new" fork0="$tmp/fork0" fork1="$tmp/fork1" ringw2="$tmp/ringw2" ring64="$tmp/ring64" \
  list1="$tmp/list1" --cases step --layers 8 --ceiling --lengths $lengths --rounds 8 --json "$out/call5/ab_layers8.json" \
  | tee "$out/call5/ab_layers8.txt"
ab --trees cur="$tmp/new" fork0="$tmp/fork0" fork1="$tmp/fork1" --cases step --lengths 128K,256K,1M --rounds 3 \
  --timeline --json "$out/call5/ab_step.json" | tee "$out/call5/ab_step.txt"
ab --trees cur="$tmp/new" idxw4="$tmp/idxw4" l0s128="$tmp/l0s128" fork0="$tmp/fork0" --cases step --layers 8 --ceiling \
  --lengths $lengths --rounds 10 --json "$out/call6/ab_layers8.json" | tee "$out/call6/ab_layers8.txt"
ab --trees head="$tmp/before" new="$tmp/fork" --cases step --layers 8 --ceiling --lengths $lengths --rounds 10 \
  --json "$out/call7/ab_layers8.json" | tee "$out/call7/ab_layers8.txt"
(cd "$tmp/fork" && python3 -m pytest -q -p no:cacheprovider tests/test_decode_static.py tests/test_topp_schedule.py \
  | tail -3 > "$out/call7/tests.txt") || true

edited l0w16 fork threshold.py 's/        warps = 4 if first >= TALLY else num_warps .*/        warps = 4 if first >= TALLY else (16 if first == 0 else num_warps)/'
edited l0s512 fork threshold.py 's/N_STATE=N_STATE, N_SYNC=N_SYNC, SUB=min(256, block),/N_STATE=N_STATE, N_SYNC=N_SYNC, SUB=min(512, block),/'
edited blk4k fork threshold.py 's/max_tokens: int | None, block: int = 2048,/max_tokens: int | None, block: int = 4096,/'
ab --trees cur="$tmp/fork" l0w16="$tmp/l0w16" l0s512="$tmp/l0s512" blk4k="$tmp/blk4k" --cases step --layers 8 --ceiling \
  --lengths $lengths --rounds 8 --json "$out/call8/ab_layers8.json" | tee "$out/call8/ab_layers8.txt"
