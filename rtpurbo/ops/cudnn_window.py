"""Local-head plain prefill on cuDNN's banded SDPA, with the sink tokens merged in by log-sum-exp.

Same function as :func:`rtpurbo.ops.triton.window.window_attention` for a plain prefill (queries and keys
at positions ``0..L-1``): query ``i`` sees key ``j`` iff ``j <= i`` and (``i - j < W`` or ``j < S``).

1. cuDNN runs the band alone (causal, ``diagonal_band_left_bound = W``: ``0 <= i - j < W``), GQA-native on the
   model's q/k/v views, and returns its output and log-sum-exp (``cudnn-frontend``'s
   ``torch.ops.cudnn.sdpa_fwd``; cuDNN plans are built once per shape and cached there).
2. :func:`rtpurbo.ops.triton.sink_merge.sink_merge` adds the sinks to the rows that see them only through the
   sinks rule (``i - j >= W``) and writes the result where the caller wants it (through a head map into the
   layer's output).

Chosen with ``rtpurbo.ops.flex.set_window_kernel("cudnn")`` (or ``RTPURBO_WINDOW_KERNEL=cudnn``); needs a CUDA
GPU, fp16 / bf16, and ``pip install nvidia-cudnn-frontend`` (the ``cudnn`` extra). Later prefill chunks keep
the Triton kernel.
"""
from __future__ import annotations

import importlib.util

import torch

INSTALL_HINT = "pip install nvidia-cudnn-frontend, or the cudnn extra: pip install -e '.[cudnn]'"


def unsupported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor | None = None) -> str | None:
    """Why :func:`window_attention` cannot take these tensors (None: it can). Shapes as there; the tensor
    conditions are those of the Triton window kernel with pointer loads (fp16 / bf16, head dim a power of two in
    [16, 256], contiguous last dims)."""
    if importlib.util.find_spec("cudnn") is None:
        return f"cudnn-frontend is not installed ({INSTALL_HINT})"
    try:
        from .triton import window as triton_window
    except ImportError:
        return "triton is not installed (the sink merge is a Triton kernel)"
    if not q.is_cuda:
        return f"it runs on CUDA tensors; got q on {q.device}"
    return triton_window.unsupported(q, k, v, triton_window.WindowLaunch(tma=False), out)


def band_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, window: int,
                   scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cuDNN's causal band ``0 <= i - j < window`` alone: (o (B, Hq, L, D) in q's dtype, lse (B, Hq, L) fp32, the
    natural log-sum-exp of the scaled scores)."""
    from cudnn.sdpa.fwd.torch_op import sdpa

    o, lse = sdpa(q, k, v, scale=scale, is_causal=True, window_left=window, return_lse=True)
    return o, lse.reshape(q.shape[:3])


def window_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, window: int, sinks: int, scale: float,
    out: torch.Tensor | None = None, out_heads: torch.Tensor | None = None,
) -> torch.Tensor:
    """Window + sinks attention of a plain prefill.

    Args:
        q: (B, Hq, L, D), k, v: (B, Hkv, L, D), positions ``0..L-1`` in every row; any strides with a contiguous
            last dim (the model's transposed (B, L, H, D) projections are read in place).
        out, out_heads: as :func:`rtpurbo.ops.triton.window.window_attention` (query head ``h`` written to
            ``out[:, out_heads[h]]``); default a new (B, Hq, L, D) tensor.
    Returns:
        out, in q's dtype.
    """
    from .triton.sink_merge import sink_merge

    problem = unsupported(q, k, v, out)
    if problem is not None:
        raise ValueError(f"the cuDNN window kernel cannot run this: {problem}")
    if window < 1 or sinks < 0:
        raise ValueError(f"window must be >= 1 and sinks >= 0, got window={window}, sinks={sinks}")
    o, lse = band_attention(q, k, v, window=window, scale=scale)
    return sink_merge(q, k, v, o, lse, window=window, sinks=sinks, scale=scale, out=out, out_heads=out_heads)
