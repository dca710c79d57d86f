"""Attention-layer benchmark (GPU): head-wise sparse layer vs dense SDPA cuDNN / flash.

    PYTHONPATH=. python benchmarks/attention_bench.py --json results.json
    rtpurbo bench attention --json results.json          # the same, through the CLI

Prints one JSON line per point while running, then the tables, then one JSON line with
everything. See rtpurbo/bench/attention.py for what is timed and how.
"""
from rtpurbo.bench.attention import main

if __name__ == "__main__":
    main()
