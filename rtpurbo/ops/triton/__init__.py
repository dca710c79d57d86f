"""Triton code of the GPU paths; importing any module here needs ``triton``.

* kernels (``decode``, ``threshold``, ``append``): no attention semantics of their own beyond
  what :mod:`rtpurbo.ops.semantics` defines; ``block_mass``: the ``mass`` block scores of
  :mod:`rtpurbo.ops.block_scores` in one kernel;
* ``window``: the plain prefill of local (window + sinks) heads, which the ``flex`` backend runs for
  inputs without gradients;
* ``block_sparse``: the retrieval heads' sparse prefill of an unpadded prompt (block choice, then block-sparse
  attention), which the ``flex`` backend runs for inputs without gradients (``set_sparse_prefill_kernel``);
* ``rotary``: the ``triton`` backend of :func:`rtpurbo.ops.api.rotary` (a layer's queries and keys in one launch);
* ``topp``: the ``triton`` backend of :func:`rtpurbo.ops.api.topp_attention`, composed of those
  kernels (the ``flex`` backend, :mod:`rtpurbo.ops.flex`, uses ``decode`` for one-token calls).
"""
