"""cuDNN band SDPA through cudnn-frontend's THD (varlen) path, plans keyed by a length bucket, not the length
(device experiment). The plan key of the THD path holds max_seqlen and strides but not the token count, so every
L up to a bucket's max_seqlen shares one plan."""
import torch
from cudnn.sdpa.fwd.torch_op import sdpa

_CU: dict = {}


def bucket(length: int) -> int:
    """Next power of two >= length (at least 4096)."""
    return max(4096, 1 << (length - 1).bit_length())


def band_attention(q, k, v, *, window, scale):
    b, hq, length, d = q.shape
    hk = k.shape[1]
    # (B, H, L, D) views of (B, L, H, D) projections -> (B*L, H, D) views
    q3 = q.transpose(1, 2).reshape(b * length, hq, d)
    k3 = k.transpose(1, 2).reshape(b * length, hk, d)
    v3 = v.transpose(1, 2).reshape(b * length, hk, d)
    key = (b, length, q.device)
    if key not in _CU:
        _CU[key] = torch.arange(0, b + 1, device=q.device, dtype=torch.int32) * length
    cu = _CU[key]
    s_max = bucket(length)
    o, lse = sdpa(q3, k3, v3, scale=scale, is_causal=True, window_left=window, cu_seqlens_q=cu, cu_seqlens_kv=cu,
                  max_seqlen_q=s_max, max_seqlen_kv=s_max, return_lse=True)
    o4 = o.view(b, length, hq, d).transpose(1, 2)
    lse3 = lse.view(b, length, hq).transpose(1, 2)
    return o4, lse3
