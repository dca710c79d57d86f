"""Triton kernels shared by the GPU backends (``flex``, ``triton_decode``).

A kernel library, not a backend: it holds no attention semantics of its own beyond
what :mod:`rtpurbo.ops.semantics` defines, and importing it needs ``triton``.
"""
