"""cuDNN window kernel at new prompt lengths: first / second call, steady time against the Triton kernel, and the
error against it, with the band's plans built three ways. argv[1]:
  static  - cudnn-frontend's default: one plan per shape;
  varlen  - the THD (packed) path with max_seqlen rounded up to a power of two (cudnn_varlen.py): one plan per bucket;
  dynamic - cudnn-frontend graphs with is_dynamic_shape_enabled and a shared kernel cache.
Run from the repository root with nvidia-cudnn-frontend installed."""
import sys, time, torch
import cudnn
mode = sys.argv[1]
if mode == "dynamic":
    cache = cudnn.create_kernel_cache()
    base = cudnn.pygraph
    class _Dynamic(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, is_dynamic_shape_enabled=True, kernel_cache=cache, **kwargs)
    cudnn.pygraph = _Dynamic
from rtpurbo.bench.attention import _model_layout, time_ms
from rtpurbo.ops import cudnn_window
if mode == "varlen":
    import importlib.util
    spec = importlib.util.spec_from_file_location("cudnn_varlen", __file__.rsplit("/", 1)[0] + "/cudnn_varlen.py")
    D = importlib.util.module_from_spec(spec); spec.loader.exec_module(D)
    cudnn_window.band_attention = D.band_attention
from rtpurbo.ops.triton import window as tw
for L in (8192, 8320, 9000, 16384, 20000, 32768, 32769, 65536, 131072):
    q, k, v = _model_layout(L, 28, 128), _model_layout(L, 7, 128), _model_layout(L, 7, 128)
    fn = lambda: cudnn_window.window_attention(q, k, v, window=8192, sinks=4, scale=128**-0.5)
    torch.cuda.synchronize(); t = time.perf_counter(); out = fn(); torch.cuda.synchronize(); first = time.perf_counter() - t
    t = time.perf_counter(); fn(); torch.cuda.synchronize(); second = time.perf_counter() - t
    ref = tw.window_attention(q, k, v, window=8192, sinks=4, scale=128**-0.5).float()
    err = ((out.float() - ref).norm() / ref.norm()).item()
    steady = time_ms(fn) if L in (32768, 131072) else None
    tri = time_ms(lambda: tw.window_attention(q, k, v, window=8192, sinks=4, scale=128**-0.5)) if steady else None
    print(f"{mode} L={L} first {first*1e3:.1f} ms second {second*1e3:.2f} ms err_vs_triton {err:.2e}"
          + (f" steady {steady:.3f} ms (triton {tri:.3f} ms)" if steady else ""), flush=True)
    del q, k, v, out, ref; torch.cuda.empty_cache()
