"""Window kernel experiments: exp2 split between MUFU and an FMA polynomial; 64-row tiles.

    python3 wexp.py OUT.jsonl PATCHED_WINDOW_PY

PATCHED_WINDOW_PY: rtpurbo/ops/triton/window.py with exp2_split.patch applied (a launch field ``exp_poly``: 0 =
MUFU only; 1 = every exponential on the FMA / integer pipes; 2, 4, 8 = a half, a quarter, an eighth of the
whole blocks' columns there). The shipped kernel (rtpurbo.ops.triton.window) is the baseline.
"""
import importlib.util, json, os, subprocess, sys, glob, torch, triton
from rtpurbo.bench.attention import _model_layout, local_pairs, time_ms
from rtpurbo.ops.triton import window as W
spec = importlib.util.spec_from_file_location("window_exp", sys.argv[2])
X = importlib.util.module_from_spec(spec); sys.modules["window_exp"] = X; spec.loader.exec_module(X)
WIN, S, NQ, NKV, D = 8192, 4, 28, 7, 128
out = open(sys.argv[1], "w")
def rec(r):
    print(json.dumps(r), flush=True); out.write(json.dumps(r) + "\n"); out.flush()
L_ = X.WindowLaunch
launches = {
    "poly0-m128-n128-w8-s3": L_(),
    "poly2-m128-n128-w8-s3": L_(exp_poly=2),
    "poly4-m128-n128-w8-s3": L_(exp_poly=4),
    "poly8-m128-n128-w8-s3": L_(exp_poly=8),
    "poly1-m128-n128-w8-s3": L_(exp_poly=1),
    "poly4-m128-n128-w8-s3-ws": L_(exp_poly=4, warp_specialize=True),
    "poly4-m128-n64-w8-s3": L_(exp_poly=4, block_n=64),
    "poly0-m64-n64-w4-s3": L_(block_m=64, block_n=64, num_warps=4),
    "poly0-m64-n64-w4-s2": L_(block_m=64, block_n=64, num_warps=4, num_stages=2),
    "poly0-m64-n128-w4-s2": L_(block_m=64, block_n=128, num_warps=4, num_stages=2),
    "poly4-m64-n64-w4-s3": L_(block_m=64, block_n=64, num_warps=4, exp_poly=4),
}
lengths = [(32768, 3), (131072, 3)]
for L, rounds in lengths:
    q, k, v = _model_layout(L, NQ, D), _model_layout(L, NKV, D), _model_layout(L, NKV, D)
    flops = 4 * D * NQ * local_pairs(L, WIN, S)
    fns = {"shipped": lambda: W.window_attention(q, k, v, window=WIN, sinks=S, scale=D**-0.5)}
    for name, la in launches.items():
        fns[name] = lambda la=la: X.window_attention(q, k, v, window=WIN, sinks=S, scale=D**-0.5, launch=la)
    want = fns["shipped"]().float()
    from rtpurbo.ops import api
    pos = torch.arange(L, device="cuda")[None]
    causal = lambda: api.attention(q, k, v, pos, pos, impl="flex", plain=True)
    causal()
    fns["cudnn-causal"] = causal
    errs = {}
    for name, fn in list(fns.items()):
        if name == "cudnn-causal":
            continue
        try:
            errs[name] = ((fn().float() - want).norm() / want.norm()).item()
        except Exception as exc:
            rec(dict(L=L, kernel=name, error=f"{type(exc).__name__}: {str(exc)[:300]}")); del fns[name]
    for r in range(rounds):
        for name, fn in fns.items():
            ms = time_ms(fn)
            fl = 4 * D * NQ * L * (L + 1) / 2 if name == "cudnn-causal" else flops
            rec(dict(L=L, round=r, kernel=name, ms=round(ms, 3), tflops=round(fl / ms / 1e9, 1), rel_err=errs.get(name)))
    del q, k, v, want; torch.cuda.empty_cache()
# compiled kernels: registers, spills, shared memory, instruction mix
nvd = glob.glob(os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/nvdisasm"))
for mod, tag in ((W, "shipped"), (X, "exp")):
    for dev, caches in getattr(mod._window_kernel, "device_caches", {}).items():
        for key, kern in caches[0].items():
            try:
                cs = {k2: v2 for k2, v2 in kern.src.constants.items()} if hasattr(kern, "src") else {}
            except Exception:
                cs = {}
            info = dict(mod=tag, regs=kern.n_regs, spills=kern.n_spills, shared=kern.metadata.shared,
                        warps=kern.metadata.num_warps, stages=kern.metadata.num_stages, key=str(key)[-200:])
            if nvd:
                path = f"/tmp/k_{tag}_{abs(hash(key))}.cubin"
                open(path, "wb").write(kern.asm["cubin"])
                sass = subprocess.run([nvd[0], "-c", path], capture_output=True, text=True).stdout
                for op in ("MUFU.EX2", "FFMA", "FADD", "FMUL", "FMNMX", "F2FP", "IMAD", "SHF", "LEA", "IADD3", "HGMMA", "LDL", "STL", "BAR", "SHFL"):
                    info[op] = sum(1 for line in sass.splitlines() if f" {op}" in line)
            rec(info)
