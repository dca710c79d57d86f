import sys, torch
sys.path.insert(0, "benchmarks")
from decode_step_ab import GEOM, SINKS, WINDOW, _step_inputs
from rtpurbo.ops.triton import decode as dec
inputs, ring_pos, q_pos, k_pos = _step_inputs(131072, 1)
x = inputs[0]
g, d = GEOM.group, GEOM.head_dim
for launch in (dec.BESIDE_LAUNCH, dec.DENSE_LAUNCH):
    for _ in range(4):
        dec.decode_attention(x["q"][:, g:], x["ring_k"], x["ring_v"], q_pos, ring_pos, scale=d**-0.5, window=WINDOW,
                             sinks=SINKS, launch=launch)
torch.cuda.synchronize()
