"""Capture one layer step in a CUDA graph with a stamped tree (stamp_patch.py), replay it, and print per launch when
its programs start, finish their PDL wait and end (us from the step's first program), their run times and the SMs
they ran on."""
import torch


def capture(S, fn):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    S.cursor, S.launches = 0, []
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    torch.cuda.synchronize()
    return g, list(S.launches)


def report(S, title, fn, detail=("ring", "list")):
    g, launches = capture(S, fn)
    for _ in range(20):
        g.replay()
    torch.cuda.synchronize()
    buf = S.buf.cpu()
    t_first = min(int(buf[off:off + n, 0].min()) for _, off, n in launches)
    print(f"== {title}")
    for name, off, n in launches:
        b = buf[off:off + n].double()
        t0, t1, t2 = (b[:, 0] - t_first) / 1000, (b[:, 1] - t_first) / 1000, (b[:, 2] - t_first) / 1000
        run = t2 - t1
        print(f"  {name:8s} n={n:4d} start {t0.min():6.1f}..{t0.max():6.1f} waitdone {t1.min():6.1f}..{t1.max():6.1f} "
              f"end {t2.min():6.1f}..{t2.max():6.1f} | run med {run.median():5.1f} max {run.max():5.1f} "
              f"| SMs {len(set(b[:, 3].long().tolist()))}")
        if name in detail:
            order = torch.argsort(t1)
            q = [float(t1[order[int(i * (n - 1) / 4)]]) for i in range(5)]
            e = sorted(t2.tolist())
            qe = [e[int(i * (n - 1) / 4)] for i in range(5)]
            print(f"     {name} waitdone quartiles " + " ".join(f"{x:.1f}" for x in q) + " | end quartiles " +
                  " ".join(f"{x:.1f}" for x in qe))
    span = max(float((buf[off:off + n, 2].max() - t_first) / 1000) for _, off, n in launches)
    print(f"  span {span:.1f} us")


