"""The visibility rules of rtpurbo, defined once.

Positions are 0-based integers. Query position ``i``, key position ``j``.
A key slot whose position is negative is empty (padding, or a cache slot not yet
written) and is never visible.

* Retrieval (full) head:  ``j`` visible to ``i``  iff  ``0 <= j <= i``.
* Local (sliding-window) head with window ``W`` and ``S`` sinks:
  ``j`` visible to ``i``  iff  ``0 <= j <= i`` and (``i - j < W`` or ``j < S``).
  The window counts the current token, so a query sees at most ``W + S`` keys.

Everything in the package (reference ops, fast kernels, the head-wise cache) is
tested against :func:`visible`.
"""
from __future__ import annotations

import torch

DEFAULT_WINDOW = 8192
DEFAULT_SINKS = 4


def check_window(window: int | None, sinks: int) -> None:
    """Raise ``ValueError`` for a window < 1 or negative sink count."""
    if window is not None and (not isinstance(window, int) or window < 1):
        raise ValueError(f"window must be an integer >= 1 (or None for full attention), got {window!r}")
    if not isinstance(sinks, int) or sinks < 0:
        raise ValueError(f"sinks must be an integer >= 0, got {sinks!r}")


def visible(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None, sinks: int) -> torch.Tensor:
    """Boolean visibility of keys to queries.

    Args:
        q_pos: (..., Lq) integer positions of the queries.
        k_pos: (..., Lk) integer positions of the keys; negative = empty slot.
        window: ``W`` for a local head, ``None`` for a retrieval (full causal) head.
        sinks: ``S``, the number of leading positions every local query also sees.

    Returns:
        (..., Lq, Lk) bool, True where the key is visible to the query.
    """
    check_window(window, sinks)
    qi = q_pos.unsqueeze(-1)
    kj = k_pos.unsqueeze(-2)
    mask = (kj >= 0) & (kj <= qi)
    if window is not None:
        mask = mask & ((qi - kj < window) | (kj < sinks))
    return mask


def max_visible_keys(window: int | None, sinks: int, context: int) -> int:
    """How many keys one query can see at most, for a context of ``context`` tokens."""
    if window is None:
        return context
    return min(context, window + sinks)


def causal_pairs(length: int) -> int:
    """Visible (query, key) pairs of a retrieval head over a plain prefill of ``length`` tokens (positions
    ``0..length-1``): ``length (length + 1) / 2``."""
    return length * (length + 1) // 2


def local_pairs(length: int, window: int, sinks: int) -> int:
    """Visible (query, key) pairs of a local head (window ``W``, ``S`` sinks) over a plain prefill of ``length``
    tokens: the window's pairs, plus for each query ``i >= W`` the ``min(S, i + 1 - W)`` sinks outside it."""
    w = min(window, length)
    in_window = w * (w + 1) // 2 + (length - w) * w
    beyond = max(0, length - window)
    s = min(sinks, beyond)
    return in_window + s * (s + 1) // 2 + (beyond - s) * sinks
