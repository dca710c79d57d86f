"""Sub-program stamps (substamp_patch.py) of one layer's selecting step and of the chain alone:

    python3 substamps.py 256K,512K NAME=DIR ...   (from a tree holding benchmarks/decode_step_ab.py; each DIR a tree
    patched by stamp_patch.py of ..._step-streams-stamps/tools, then by substamp_patch.py)

Per search level: when its programs' first loads are back (k0), their pass ends (k1), their ticket returns (k2); in
the last program, when its walk (k3), list resolve (k4, key levels) and stores (k5) are done; us from the step's first
program. Then the launch spans as stamps_lib prints them."""
import sys
from pathlib import Path

import torch

here = Path(__file__).resolve().parent
sys.path.insert(0, str(here.parents[1] / "llama-3.1-8b_h100_2026-12-06_step-streams-stamps/tools"))  # stamps_lib
sys.path.insert(0, "benchmarks")
from decode_step_ab import load_trees, step_case, LENGTHS, _step_inputs, GEOM  # noqa: E402
from rtpurbo.bench.attention_common import TOP_P, MIN_TOKENS, RECENT  # noqa: E402
from decode_step_ab import SINKS  # noqa: E402
import stamps_lib  # noqa: E402

lengths = sys.argv[1].split(",")


def sub_report(S, SUB, title, fn):
    g, launches = stamps_lib.capture(S, fn)
    for _ in range(20):
        g.replay()
    torch.cuda.synchronize()
    SUB.buf.zero_()
    g.replay()
    torch.cuda.synchronize()
    buf = S.buf.cpu()
    t_first = min(int(buf[off:off + n, 0].min()) for _, off, n in launches)
    sub = SUB.buf.cpu()
    print(f"== {title} (substamps, us from the step's first program)")
    for name, off, n in launches:
        if not name.startswith("phase") or int(name[5:]) > 3:
            continue
        phase = int(name[5:])
        rows = sub[phase * n:(phase + 1) * n]
        b = buf[off:off + n].double()
        t1 = (b[:, 1] - t_first) / 1000
        t2 = (b[:, 2] - t_first) / 1000

        def q(col):
            v = rows[:, col]
            v = v[v > 0].double()
            if len(v) == 0:
                return "-"
            v = (v - t_first) / 1000
            return f"{v.min():.1f}/{v.median():.1f}/{v.max():.1f}"
        last = [i for i in range(n) if rows[i, 3] > 0]
        line = (f"  {name}: waitdone {t1.min():.1f}/{t1.median():.1f}/{t1.max():.1f} | k0 {q(0)} | pass {q(1)} | "
                f"ticket {q(2)} | end {t2.min():.1f}/{t2.median():.1f}/{t2.max():.1f}")
        print(line)
        for i in last:
            r = [(int(x) - t_first) / 1000 if int(x) > 0 else float('nan') for x in rows[i, :6]]
            print(f"    last program {i}: waitdone {float(t1[i]):.1f} k0 {r[0]:.1f} pass {r[1]:.1f} ticket {r[2]:.1f} "
                  f"walk {r[3]:.1f} resolve {r[4]:.1f} stored {r[5]:.1f} end {float(t2[i]):.1f}")
    stamps_lib.report(S, title, fn)


for entry in sys.argv[2:]:
    name = entry.partition("=")[0]
    trees = load_trees([entry])
    tree = trees[name]
    dl = sys.modules[f"rtpurbo_{name}.ops.triton.dependent_launch"]
    for label in lengths:
        length = LENGTHS[label]
        sub_report(dl.STAMPS, dl.SUBSTAMPS, f"{name} {label} step", step_case(trees, length, [], 1)[name])
        inputs, ring_pos, q_pos, k_pos = _step_inputs(length, 1)
        x = inputs[0]
        group = GEOM.group

        def chain():
            return tree["topp"].topp_attention(x["q"][:, :group], x["k"], x["v"], q_pos, k_pos, x["q_idx"], x["k_idx"],
                                               top_p=TOP_P, min_tokens=MIN_TOKENS, sinks=SINKS, recent=RECENT)
        sub_report(dl.STAMPS, dl.SUBSTAMPS, f"{name} {label} chain alone", chain)
