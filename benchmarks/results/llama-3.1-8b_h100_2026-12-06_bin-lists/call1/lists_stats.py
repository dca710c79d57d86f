"""Per length, layer and score regime: keys histogrammed by search levels 1 and 2 (0 at level 2: level 1's walk
resolved tau from its bin's list), with and without bin lists, and whether both select the same keys."""
import sys
import torch
sys.path.insert(0, "benchmarks")
from decode_step_ab import LENGTHS, _layer_inputs, REGIMES, SINKS
from rtpurbo.bench.attention_common import INDEX_DIM, MIN_TOKENS, RECENT, TOP_P, _randn
from rtpurbo.ops.triton import decode, threshold

for label in sys.argv[1].split(","):
    length = LENGTHS[label]
    q_pos, k_pos = torch.full((1, 1), length - 1, device="cuda"), torch.arange(length, device="cuda")[None]
    cases = [(f"layer{s}", _layer_inputs(length, s)) for s in range(8)]
    for regime, scale in REGIMES.items():
        torch.manual_seed(0)
        cases.append((regime, dict(q_idx=_randn(1, 1, 1, INDEX_DIM), k_idx=_randn(1, 1, length, INDEX_DIM) * scale)))
    for name, x in cases:
        sc = decode.index_scores(x["q_idx"], x["k_idx"], q_pos, k_pos, sinks=SINKS, recent=RECENT)
        row = []
        kept = []
        for bin_list in (0, threshold.BIN_LIST):
            work = torch.zeros(1, threshold.N_LEVELS, 2 * threshold.N_BINS + 1, dtype=torch.int64, device="cuda")
            order, n = threshold.topp_threshold(sc.scores.view(1, length), sc.block_max, sc.block_sum, sc.block_count,
                                                sc.block_min, top_p=TOP_P, min_tokens=MIN_TOKENS, max_tokens=None,
                                                work=work, bin_list=bin_list)
            counts = work[0, :, :threshold.N_BINS]
            row.append(f"lists={bin_list}: L1 {int(counts[1].sum())} (max bin {int(counts[1].max())}) "
                       f"L2 {int(counts[2].sum())} L3 {int(counts[3].sum())}")
            kept.append(order[0, :int(n[0])].cpu())
        print(label, name, f"n_keep {len(kept[0])}", " | ".join(row), "same" if torch.equal(*kept) else "DIFFERENT",
              flush=True)
