"""Evaluation: perplexity by position, RULER-style long-context tasks, speed and KV bytes per row.

``rtpurbo eval`` (see :mod:`rtpurbo.eval.commands`) runs :mod:`.suite` over the rows
dense / StreamingLLM-style / training-free split / trained artifacts and writes the
report of :mod:`.report`. Task generators live in :mod:`.tasks`, scores and confidence
intervals in :mod:`.scoring`, timing in :mod:`.speed`.
"""
