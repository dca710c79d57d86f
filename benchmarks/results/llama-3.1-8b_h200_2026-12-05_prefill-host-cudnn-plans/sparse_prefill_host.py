"""Where the sparse retrieval prefill's time goes (Llama-3.1-8B geometry, 1 retrieval KV head of 8, 16 key blocks):
the call as the attention bench made it (aligned=False: tokens laid out by position first) against the model's
call for an unpadded prompt (aligned=True), each alone and inside the layer, with a torch.profiler kernel table
at 32K; then the 1024-query dense tail's cost at 128K. The first timings of the layer and of the dense SDPA line
include their compilation / first call (no warm-up was run for them), so they are not comparable."""
import torch
from rtpurbo.bench.attention import _model_layout, _randn, INDEX_DIM, time_ms, _merged_layer
from rtpurbo.ops import api
n_ret, group, dim, nq, nkv = 1, 4, 128, 32, 8
split = n_ret * group
for L in (32768, 131072):
    q, k, v = (_model_layout(L, n, dim) for n in (nq, nkv, nkv))
    pos = torch.arange(L, device="cuda")[None]
    qi, ki = _randn(1, n_ret, L, INDEX_DIM), _randn(1, n_ret, L, INDEX_DIM)
    plan = api.plan(pos, pos, window=8192, sinks=4, plain=True, impl="flex")
    local = lambda out=None: api.attention(q[:, split:], k[:, n_ret:], v[:, n_ret:], pos, pos, window=8192, sinks=4,
                                           impl="flex", plain=True, plan=plan, out=out)
    for aligned in (False, True):
        fn = lambda: api.sparse_prefill(q[:, :split], k[:, :n_ret], v[:, :n_ret], pos, pos, qi, ki, top_p=0.999,
                                        max_blocks=16, sinks=4, band=512, impl="flex", aligned=aligned)[0]
        fn(); torch.cuda.synchronize()
        r = time_ms(fn)
        lay = time_ms(lambda: _merged_layer(q, split, fn, local))
        print(f"L={L} aligned={aligned} retrieval {r:.3f} ms layer {lay:.3f} ms", flush=True)
        if L == 32768:
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    fn()
                torch.cuda.synchronize()
            print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=14, max_name_column_width=60), flush=True)
    dense_ret = time_ms(lambda: torch.nn.functional.scaled_dot_product_attention(q[:, :split], k[:, :n_ret].repeat_interleave(group, 1), v[:, :n_ret].repeat_interleave(group, 1), is_causal=True))
    print(f"L={L} local {time_ms(local):.3f} ms; dense retrieval heads (sdpa default, repeat kv) {dense_ret:.3f} ms", flush=True)
    del q, k, v; torch.cuda.empty_cache()

# the dense tail's cost at 128K: sparse prefill with tail 0 / 1024, and a kernel table of the tail alone
L = 131072
q, k, v = (_model_layout(L, n, dim) for n in (nq, nkv, nkv))
pos = torch.arange(L, device="cuda")[None]
qi, ki = _randn(1, n_ret, L, INDEX_DIM), _randn(1, n_ret, L, INDEX_DIM)
from rtpurbo.ops import flex
for tail in (0, 1024):
    fn = lambda: api.sparse_prefill(q[:, :split], k[:, :n_ret], v[:, :n_ret], pos, pos, qi, ki, top_p=0.999,
                                    max_blocks=16, sinks=4, band=512, impl="flex", aligned=True, tail=tail, scoring="mass")[0]
    fn(); torch.cuda.synchronize()
    print(f"L={L} mass tail={tail}: retrieval {time_ms(fn):.3f} ms", flush=True)
first = L - 1024
tl_ = lambda: flex.dense_tail(q[:, :split, first:], k[:, :n_ret], v[:, :n_ret], pos[:, first:], pos, 128 ** -0.5)
tl_(); torch.cuda.synchronize()
print(f"dense_tail alone {time_ms(tl_):.3f} ms", flush=True)
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]) as prof:
    for _ in range(5):
        tl_()
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=12, max_name_column_width=60), flush=True)
