"""Diagnostic (GPU): where an eager (not graphed) prefill and decode step of a small converted model spend their
time, against the dense model, as transformers' ``generate()`` runs them.

    python benchmarks/eager_generate_profile.py [prompt_length ...] [--json OUT]

SmolLM2-135M's geometry with random weights (30 layers, 9 q / 3 KV heads, head dim 64, bf16). The converted model
has one retrieval KV head in every other layer (15 of 90), local heads at W 1536 + 4 sinks (the shipped adapter's
window). Per prompt length and variant, ``torch.profiler`` over one prefill (dense: a forward through a
``DynamicCache``; converted: :func:`rtpurbo.prefill.prefill` into a :class:`rtpurbo.cache.HeadwiseCache`, as
``generate()`` does) and over 8 eager decode steps. Each row: wall and device ms, the device's busy fraction, kernels
and top-level aten ops, and the operators with the most host time (:mod:`rtpurbo.bench.decode_profile`). A busy
fraction far below 1 means host-bound: fewer launches per layer, or a CUDA graph, is the fix.
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from rtpurbo._compat import cache_kwarg
from rtpurbo.bench import decode_profile
from rtpurbo.cache import HeadwiseCache
from rtpurbo.config import HeadPlan, SparseConfig
from rtpurbo.convert import convert
from rtpurbo.prefill import prefill

STEPS = 8


def smollm2_config():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                       num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=65536,
                       rope_theta=100000.0, tie_word_embeddings=True)


def _wall(fn) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3


def profile_variant(model, ids: torch.Tensor, converted: bool) -> list[dict]:
    """[prefill row, decode row] of one model at one prompt length."""
    from transformers import DynamicCache

    mask = torch.ones_like(ids)
    state = {}

    def run_prefill() -> None:
        if converted:
            state["cache"] = HeadwiseCache(model)
            prefill(model, state["cache"], ids, mask, chunk=ids.shape[1])
        else:
            state["cache"] = DynamicCache()
            model(input_ids=ids, use_cache=True, logits_to_keep=1, **{cache_kwarg(): state["cache"]})

    def run_steps() -> None:
        token = ids[:, -1:]
        for i in range(STEPS):
            positions = torch.full((1, 1), ids.shape[1] + i, device=ids.device)
            model(input_ids=token, position_ids=positions, use_cache=True, logits_to_keep=1,
                  **{cache_kwarg(): state["cache"]})

    rows = []
    with torch.no_grad():
        for _ in range(2):  # compilation, autotuning, plans
            run_prefill()
            run_steps()
        rows.append({"phase": "prefill", **decode_profile.profile(lambda: _wall(run_prefill), 1, True)})
        run_prefill()
        rows.append({"phase": "decode", **decode_profile.profile(lambda: _wall(run_steps), STEPS, True)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("lengths", nargs="*", type=int, default=[4096])
    parser.add_argument("--json", help="write every row here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this diagnostic profiles CUDA kernels; run it on a GPU")
    from transformers import AutoModelForCausalLM

    decode_profile.TOP = 25
    rows = []
    for length in args.lengths:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(copy.deepcopy(smollm2_config()), dtype=torch.bfloat16).cuda().eval()
        ids = torch.randint(10, 49000, (1, length), device="cuda")
        for variant in ("dense", "converted"):
            if variant == "converted":
                plan = HeadPlan(30, 3, 9, [[0] if layer % 2 == 0 else [] for layer in range(30)])
                convert(model, plan, SparseConfig(window=1536, sinks=4, top_p=0.9))
            for row in profile_variant(model, ids, variant == "converted"):
                row = {"variant": variant, "length": length, **row}
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "top"}), flush=True)
        del model
        torch.cuda.empty_cache()
    for row in rows:
        row["variant"] = f"{row['variant']} {row['phase']}"
    print("\n".join(decode_profile.markdown_lines(rows)))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"torch": torch.__version__, "device": torch.cuda.get_device_name(), "rows": rows}, handle,
                      indent=1)


if __name__ == "__main__":
    main()
