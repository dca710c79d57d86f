"""Benchmarks of rtpurbo's kernels and layers (GPU). Entry scripts live in ``benchmarks/``."""
