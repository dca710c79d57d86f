"""rtpurbo: head-wise sparse attention for trained Hugging Face LLMs.

Pipeline: profile -> plan -> convert -> stage 1 -> stage 2 -> save/load -> infer -> eval/bench.
"""
__version__ = "0.1.0"
