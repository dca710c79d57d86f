"""``generate()`` through rtpurbo's head-wise KV cache, written by ``rtpurbo export``.

transformers loads ``custom_generate/generate.py`` of a model directory when the model is loaded
with ``trust_remote_code=True`` and uses its ``generate`` as the model's ``generate()``. That
includes servers that build the base class named in ``config.json``'s ``architectures`` (such as
``transformers serve``): the first call turns that dense model into the sparse one.
"""
from rtpurbo.export.runtime import generate

__all__ = ["generate"]
