"""Head-wise sparse attention for this checkpoint (``trust_remote_code=True``), written by ``rtpurbo export``.

The weights beside this file are the base model's (LoRA folded in) plus the retrieval heads'
16-d indexers; ``config.json`` carries the head roles (``headwise_config``) and the other sparse
settings (``rtpurbo``). The implementation is the ``rtpurbo`` package, which must be installed;
this file only names the class that ``auto_map`` points at.
"""
from transformers import LlamaForCausalLM

from rtpurbo.export.runtime import HeadwiseCausalLM


class RtpurboForCausalLM(HeadwiseCausalLM, LlamaForCausalLM):
    """LlamaForCausalLM with head-wise sparse attention; ``generate()`` decodes through the head-wise KV cache."""
