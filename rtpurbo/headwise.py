"""The ``headwise_config`` block of an exported ``config.json``, in the form RTP-LLM reads.

RTP-LLM (github.com/alibaba/rtp-llm) takes the whole top-level ``headwise_config`` value of a
checkpoint's ``config.json`` (``rtp_llm/models/qwen_v2.py`` line 399, ``_from_config_json`` of
the Qwen2 / Qwen3 / Qwen3-MoE loaders) and reads it as one flat dict
(``rtp_llm/models_py/modules/factory/attention/cuda_headwise_impl/headwise.py``):

* lines 96-101: ``sink_token_num`` (default 4), ``swa_token_num`` (default 8192) and
  ``seqlen_threshold`` (default 16384): ``_plan_one_sequence`` (line 202) runs every head in full for a
  prefill with fewer keys, and splits the heads only from there on;
* lines 152-171: the key ``str(layer_idx)`` holds that layer's list of one 0/1 per query head of
  the whole model (``1`` = retrieval / full attention, ``0`` = sink + sliding window); a layer
  without a key falls back to all-retrieval.

So for a model with 2 layers of 4 query heads::

    {"sink_token_num": 4, "swa_token_num": 1024, "seqlen_threshold": 0,
     "0": [1, 1, 0, 0], "1": [0, 0, 0, 0]}

rtpurbo splits its heads in every prefill, so it writes ``seqlen_threshold: 0`` here: RTP-LLM then runs the
model as rtpurbo converted, trained and measured it. rtpurbo's own ``seqlen_threshold`` means something else
(the cached length from which retrieval heads *select* at decode, :class:`rtpurbo.config.SparseConfig`); an
exported ``config.json`` keeps it in its ``rtpurbo`` block, and a ``seqlen_threshold`` read from this form is
not taken for it.

RTP-LLM's window counts the keys *before* the current one: its reference mask (``test_py_headwise.py``,
``_make_flex_mask``) keeps key ``j`` for query ``i`` when ``i - j <= window_left`` (= ``swa_token_num``), so it
sees ``swa_token_num + 1`` keys, where rtpurbo's local heads see ``W`` (``i - j < W``). So this form holds
``swa_token_num = W - 1`` (:data:`RTP_LLM_WINDOW_OFFSET`), and reading it back adds the 1. Directories exported
in the first format (``rtpurbo.export/1``) held ``W`` itself and rtpurbo's decode threshold; ``legacy=True``
reads them so.

rtpurbo's own artifacts keep the older list form (``rtpurbo.config.HeadPlan.to_headwise_config``, where
``seqlen_threshold`` is rtpurbo's); :func:`to_list_form` turns this form into that one.
"""
from __future__ import annotations

from typing import Any

from .config import HeadPlan, PlanMismatch, SparseConfig

SETTINGS = ("sink_token_num", "swa_token_num", "seqlen_threshold")
RTP_LLM_SPLIT_FROM = 0  # RTP-LLM's seqlen_threshold for an rtpurbo model: heads split in every prefill
RTP_LLM_WINDOW_OFFSET = 1  # rtpurbo's W = RTP-LLM's swa_token_num + 1 (module docstring)
RTP_LLM_DEFAULT_SINKS, RTP_LLM_DEFAULT_SWA = 4, 8192  # what RTP-LLM reads where the keys are absent (lines 96-101)
EXPORT_FORMAT = "rtpurbo.export/2"  # the rtpurbo block of a directory `rtpurbo export` writes
LEGACY_EXPORT_FORMAT = "rtpurbo.export/1"  # its headwise_config held rtpurbo's W and decode threshold


def rtp_llm_headwise_config(plan: HeadPlan, sparse: SparseConfig) -> dict[str, Any]:
    """The RTP-LLM ``headwise_config`` of a plan and its sparse settings (module docstring)."""
    rows = plan.to_headwise_config(sparse.sinks, sparse.window)["headwise_config"]
    block: dict[str, Any] = {
        "sink_token_num": sparse.sinks,
        "swa_token_num": sparse.window - RTP_LLM_WINDOW_OFFSET,
        "seqlen_threshold": RTP_LLM_SPLIT_FROM,
    }
    block.update({str(layer): row for layer, row in enumerate(rows)})
    return block


def is_rtp_llm_form(value: Any) -> bool:
    """True for the RTP-LLM dict form (layers keyed ``"0"``, ``"1"``, ...), False for rtpurbo's list form."""
    return isinstance(value, dict) and "0" in value


def to_list_form(block: dict[str, Any], num_layers: int) -> dict[str, Any]:
    """RTP-LLM form -> ``{"headwise_config": [[0/1, ...] per layer], "sink_token_num", "swa_token_num"}``.

    Raises PlanMismatch naming the missing or extra layer keys.
    """
    layer_keys = {k for k in block if k not in SETTINGS}
    want = {str(layer) for layer in range(num_layers)}
    if layer_keys != want:
        missing, extra = sorted(want - layer_keys, key=int), sorted(layer_keys - want)
        raise PlanMismatch(f"headwise_config must have one key per layer '0'..'{num_layers - 1}'; "
                           f"missing {missing}, unexpected {extra}")
    out: dict[str, Any] = {"headwise_config": [block[str(layer)] for layer in range(num_layers)]}
    for key in ("sink_token_num", "swa_token_num"):
        if key in block:
            out[key] = block[key]
    return out


def plan_from_rtp_llm(block: dict[str, Any], num_layers: int, num_kv_heads: int, legacy: bool = False
                      ) -> tuple[HeadPlan, dict[str, int]]:
    """(plan, settings) from an RTP-LLM ``headwise_config``: ``sinks`` and rtpurbo's ``window`` of what RTP-LLM runs
    (its defaults where the block has no key; RTP-LLM's ``seqlen_threshold`` is not rtpurbo's: module docstring).
    ``legacy``: a block written by the first export format, whose ``swa_token_num`` was rtpurbo's W and whose
    ``seqlen_threshold`` was rtpurbo's."""
    plan, settings = HeadPlan.from_headwise_config(to_list_form(block, num_layers), num_kv_heads)
    if not legacy:  # what RTP-LLM runs: its defaults where the block is silent
        settings = {"sinks": settings.get("sinks", RTP_LLM_DEFAULT_SINKS),
                    "window": settings.get("window", RTP_LLM_DEFAULT_SWA) + RTP_LLM_WINDOW_OFFSET}
    if legacy and "seqlen_threshold" in block:
        settings["seqlen_threshold"] = int(block["seqlen_threshold"])
    return plan, settings


def exported_settings(headwise: dict[str, Any], rtpurbo_block: Any, num_layers: int, num_kv_heads: int
                      ) -> tuple[HeadPlan, dict[str, Any]]:
    """(plan, sparse settings) of a ``config.json`` whose ``headwise_config`` is RTP-LLM's form: the sparse settings
    of its ``rtpurbo`` block (one written by ``rtpurbo export``; none in RTP-LLM's own configs), with S and W from
    the ``headwise_config`` (a block of the first export format, :data:`LEGACY_EXPORT_FORMAT`, is read as such)."""
    block = rtpurbo_block if isinstance(rtpurbo_block, dict) else {}
    plan, settings = plan_from_rtp_llm(headwise, num_layers, num_kv_heads,
                                       legacy=block.get("format") == LEGACY_EXPORT_FORMAT)
    return plan, {**block.get("sparse", {}), **settings}
