"""Per-program time stamps of one replay of the selecting layer step (diag tree): when each launch's programs start,
finish their PDL wait and end, relative to the step's first program; and the ring alone, the chain alone."""
import sys
from pathlib import Path

sys.path.insert(0, "benchmarks")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_step_ab import load_trees, step_case, GEOM, SINKS, WINDOW, LENGTHS, _step_inputs
from rtpurbo.bench.attention_common import TOP_P, MIN_TOKENS, RECENT
import stamps_lib

tree_dir = sys.argv[1]
lengths = sys.argv[2].split(",")
trees = load_trees([f"diag={tree_dir}"])
tree = trees["diag"]
report = stamps_lib.report
S = sys.modules["rtpurbo_diag.ops.triton.dependent_launch"].STAMPS
dec = tree["decode"]


group, dim = GEOM.group, GEOM.head_dim
for label in lengths:
    length = LENGTHS[label]
    inputs, ring_pos, q_pos, k_pos = _step_inputs(length, 1)
    x = inputs[0]
    step = step_case(trees, length, [], 1)["diag"]
    report(S, f"{label} step (as shipped)", step, ("ring",))

    def ring(launch=None):
        return dec.decode_attention(x["q"][:, group:], x["ring_k"], x["ring_v"], q_pos, ring_pos, scale=dim**-0.5,
                                    window=WINDOW, sinks=SINKS, launch=launch or dec.BESIDE_LAUNCH)
    if label == lengths[0]:
        report(S, "ring alone, BESIDE_LAUNCH", ring, ("ring",))
        report(S, "ring alone, DENSE_LAUNCH", lambda: ring(dec.DENSE_LAUNCH), ("ring",))

    def chain():
        return tree["topp"].topp_attention(x["q"][:, :group], x["k"], x["v"], q_pos, k_pos, x["q_idx"], x["k_idx"],
                                           top_p=TOP_P, min_tokens=MIN_TOKENS, sinks=SINKS, recent=RECENT)
    report(S, f"{label} chain alone (no ring)", chain, ("list",))
