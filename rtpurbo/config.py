"""Configuration objects: which KV heads are retrieval heads (``HeadPlan``) and how
the sparse model runs (``SparseConfig``). Both round-trip through JSON.

Roles are per KV head: every query head of a GQA group shares its KV head's role.
``headwise_config`` is the per-query-head export read by the authors' serving
engine: one list per layer of length ``num_attention_heads`` with ``1`` for a
retrieval (full-attention) head and ``0`` for a sliding-window head, plus
``sink_token_num`` and ``swa_token_num``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from .ops.api import ATTENTION_IMPLS, DECODE_IMPLS
from .ops.block_scores import SCORINGS as PREFILL_SCORINGS
from .ops.semantics import DEFAULT_SINKS, DEFAULT_WINDOW, check_window

PLAN_FORMAT = "rtpurbo.head_plan/1"
# Retrieval heads select (top-p) only from this many cached tokens on: below it the selection
# chain costs more than the keys it skips. Break-even of one attention layer's decode step (Llama-3.1-8B geometry,
# selection on trained-like scores with the local heads beside it, against one launch over every key), paired: on an
# H200 selecting is 19.8 us slower at 128K, 4.0 faster at 256K, 0.8 slower at 384K and 6.9 faster at 512K; on an H100
# it is faster from 256K on (by 14.7 us there)
# (benchmarks/results/llama-3.1-8b_h100_2026-12-05_ring-beside-selection.md; it was 520-550K on an H200 before the
# faster selection: llama-3.1-8b_h200_2026-12-04_one-launch-decode.md). Since then the layer step alone selects faster
# from about 92K keys on an H100, but 8-layer decode end to end was still 0.13 / 0.06 / 0.02 ms per token slower
# selecting at 64K / 128K / 192K (the selecting step also launched 5 small kernels per layer outside the attention)
# (benchmarks/results/llama-3.1-8b_h100_2026-12-08_model-step-overhead.md); those launches are gone since, untimed.
DEFAULT_SEQLEN_THRESHOLD = 262144
RETRIEVAL_PREFILL = ("dense", "sparse", "topp")


class PlanMismatch(ValueError):
    """A head plan does not fit the model it is applied to."""


@dataclass
class HeadPlan:
    """Per layer, the sorted indices of the KV heads that keep full attention.

    Args:
        num_layers, num_kv_heads, num_q_heads: the model geometry the plan was made for.
        retrieval: ``retrieval[layer]`` = sorted KV-head indices that are retrieval heads.
        scores: optional (num_layers, num_kv_heads) scores the plan was chosen from.
        criterion: how the scores were computed (free text, for reports).
    """

    num_layers: int
    num_kv_heads: int
    num_q_heads: int
    retrieval: list[list[int]]
    scores: list[list[float]] | None = None
    criterion: str = ""

    def __post_init__(self) -> None:
        if self.num_q_heads % self.num_kv_heads:
            raise PlanMismatch(f"num_q_heads {self.num_q_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if len(self.retrieval) != self.num_layers:
            raise PlanMismatch(f"plan has {len(self.retrieval)} layers of roles, expected {self.num_layers}")
        self.retrieval = [sorted(set(int(h) for h in heads)) for heads in self.retrieval]
        for layer, heads in enumerate(self.retrieval):
            bad = [h for h in heads if not 0 <= h < self.num_kv_heads]
            if bad:
                raise PlanMismatch(f"layer {layer}: KV head indices {bad} outside [0, {self.num_kv_heads})")
        if self.scores is not None and (
            len(self.scores) != self.num_layers or any(len(r) != self.num_kv_heads for r in self.scores)
        ):
            raise PlanMismatch(f"scores must be {self.num_layers} x {self.num_kv_heads}")

    # --- construction -------------------------------------------------------------
    @classmethod
    def uniform(cls, num_layers: int, num_kv_heads: int, num_q_heads: int, retrieval: bool) -> "HeadPlan":
        """Every KV head retrieval (``retrieval=True``) or every KV head local."""
        heads = list(range(num_kv_heads)) if retrieval else []
        return cls(num_layers, num_kv_heads, num_q_heads, [list(heads) for _ in range(num_layers)])

    @classmethod
    def from_scores(
        cls, scores: list[list[float]], num_q_heads: int, ratio: float, criterion: str = ""
    ) -> "HeadPlan":
        """Keep the top ``ratio`` of KV heads model-wide (at least one) by score."""
        check_ratio(ratio)
        num_layers, num_kv_heads = len(scores), len(scores[0])
        flat = [(s, layer, h) for layer, row in enumerate(scores) for h, s in enumerate(row)]
        n_keep = max(1, round(ratio * len(flat)))
        keep = sorted(flat, key=lambda t: (-t[0], t[1], t[2]))[:n_keep]
        retrieval: list[list[int]] = [[] for _ in range(num_layers)]
        for _, layer, h in keep:
            retrieval[layer].append(h)
        return cls(num_layers, num_kv_heads, num_q_heads, retrieval, [list(map(float, r)) for r in scores], criterion)

    # --- queries ------------------------------------------------------------------
    @property
    def group_size(self) -> int:
        return self.num_q_heads // self.num_kv_heads

    def local_heads(self, layer: int) -> list[int]:
        return [h for h in range(self.num_kv_heads) if h not in self.retrieval[layer]]

    def num_retrieval(self) -> int:
        return sum(len(r) for r in self.retrieval)

    def retrieval_fraction(self) -> float:
        return self.num_retrieval() / (self.num_layers * self.num_kv_heads)

    def check_model(self, num_layers: int, num_kv_heads: int, num_q_heads: int) -> None:
        """Raise :class:`PlanMismatch` unless the plan was made for this geometry."""
        want = (self.num_layers, self.num_kv_heads, self.num_q_heads)
        got = (num_layers, num_kv_heads, num_q_heads)
        if want != got:
            raise PlanMismatch(
                f"head plan is for (layers, kv_heads, q_heads) = {want} but the model has {got}"
            )

    # --- JSON -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": PLAN_FORMAT, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "HeadPlan":
        """The plan of :meth:`to_dict` output; PlanMismatch names a missing or mistyped field."""
        if not isinstance(data, dict):
            raise PlanMismatch(f"a head plan must be an object, got {type(data).__name__}")
        if data.get("format") != PLAN_FORMAT:
            raise PlanMismatch(f"not a head plan (format {data.get('format')!r}, expected {PLAN_FORMAT!r})")
        for name in ("num_layers", "num_kv_heads", "num_q_heads"):
            if not _is_int(data.get(name)) or data[name] < 1:
                raise PlanMismatch(f"head plan: {name} must be an integer >= 1, got {data.get(name)!r}")
        retrieval = data.get("retrieval")
        if not isinstance(retrieval, list) or not all(
                isinstance(heads, list) and all(_is_int(h) for h in heads) for heads in retrieval):
            raise PlanMismatch("head plan: retrieval must be a list (one per layer) of lists of KV head indices")
        scores = data.get("scores")
        if scores is not None and not (isinstance(scores, list) and all(
                isinstance(row, list) and all(x is None or _is_number(x) for x in row) for row in scores)):
            raise PlanMismatch("head plan: scores must be null or a list of lists of numbers (null: undefined)")
        if not isinstance(data.get("criterion", ""), str):
            raise PlanMismatch(f"head plan: criterion must be text, got {data['criterion']!r}")
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})

    def to_headwise_config(self, sinks: int, window: int, seqlen_threshold: int | None = None) -> dict[str, Any]:
        """Per-query-head 0/1 form (1 = retrieval / full attention, 0 = sliding window), with the
        sink count, the window and (if given) the length below which retrieval heads skip selection."""
        group = self.group_size
        rows = [
            [1 if (q // group) in set(heads) else 0 for q in range(self.num_q_heads)] for heads in self.retrieval
        ]
        out = {"headwise_config": rows, "sink_token_num": sinks, "swa_token_num": window}
        if seqlen_threshold is not None:
            out["seqlen_threshold"] = seqlen_threshold
        return out

    @classmethod
    def from_headwise_config(cls, data: dict[str, Any], num_kv_heads: int) -> tuple["HeadPlan", dict[str, int]]:
        """Inverse of :meth:`to_headwise_config`; returns (plan, settings): ``sinks``, ``window`` and
        ``seqlen_threshold``, each only where ``data`` has it (the caller's own values stand for the others).

        Raises PlanMismatch if the query heads of one KV group disagree on their role.
        """
        rows = data.get("headwise_config")
        if not isinstance(rows, list) or not rows or not isinstance(rows[0], list):
            raise PlanMismatch("config has no 'headwise_config' list of 0/1 rows")
        names = {"sink_token_num": "sinks", "swa_token_num": "window", "seqlen_threshold": "seqlen_threshold"}
        settings = {}
        for key, name in names.items():
            if key in data:
                value = data[key]
                if not (_is_int(value) or isinstance(value, float) and value.is_integer()):
                    raise PlanMismatch(f"headwise_config: {key} must be an integer, got {value!r}")
                settings[name] = int(value)
        num_q_heads = len(rows[0])
        if num_q_heads % num_kv_heads:
            raise PlanMismatch(f"headwise_config rows have {num_q_heads} heads, not a multiple of {num_kv_heads}")
        group = num_q_heads // num_kv_heads
        retrieval = []
        for layer, row in enumerate(rows):
            if not isinstance(row, list) or len(row) != num_q_heads or any(x not in (0, 1) for x in row):
                raise PlanMismatch(f"headwise_config layer {layer} must be {num_q_heads} values of 0/1")
            heads = []
            for kv in range(num_kv_heads):
                roles = set(row[kv * group : (kv + 1) * group])
                if len(roles) > 1:
                    raise PlanMismatch(f"layer {layer}: query heads of KV head {kv} disagree ({sorted(roles)})")
                if roles == {1}:
                    heads.append(kv)
            retrieval.append(heads)
        plan = cls(len(rows), num_kv_heads, num_q_heads, retrieval, criterion="imported headwise_config")
        return plan, settings


def check_ratio(ratio: float) -> None:
    if not (isinstance(ratio, (int, float)) and math.isfinite(ratio) and 0 < ratio <= 1):
        raise ValueError(f"retrieval ratio must be in (0, 1], got {ratio!r}")


@dataclass
class SparseConfig:
    """How the converted model runs.

    Args:
        window: ``W``, tokens a local head sees (the current one included).
        sinks: ``S``, leading tokens every local head also sees.
        index_dim: ``d_idx``, width of the low-rank indexer of each retrieval KV head.
        top_p: mass of the indexer distribution a retrieval head keeps at decode (1.0 = full).
        min_tokens, max_tokens: clamp of the indexer-chosen budget (max None = unbounded).
        recent: most recent tokens a retrieval head always keeps at decode.
        index_rope_dims: indexer dimensions rotated with the base RoPE (0 = content only).
        seqlen_threshold: below this many cached tokens a retrieval head decodes over all its keys,
            because selecting costs more than it saves on short contexts (0 = always select). It is a
            speed switch, so it counts what a step costs: the batch's cache slots (the longest row,
            padding included), one decision for every row of the step. The default (256K) is the
            break-even measured on an H200 and an H100 (``benchmarks/results``). RTP-LLM's
            ``headwise_config`` has a field of this name with another meaning (:mod:`rtpurbo.headwise`).
        retrieval_prefill: ``dense`` (paper: retrieval heads run full attention on multi-token
            forwards), ``sparse`` (each block of 128 queries attends to the key blocks its indexer's
            block scores keep: top-p ``prefill_top_p`` over blocks, clamped to ``[prefill_min_blocks,
            prefill_max_blocks]``, always with the sink blocks and a local band of ``prefill_band``
            tokens; :func:`rtpurbo.ops.reference.select_blocks`) or ``topp`` (every query uses the
            indexer's token selection, as at decode; stage 2 and teacher-forced fidelity checks).
        prefill_top_p, prefill_min_blocks, prefill_max_blocks, prefill_band: the ``sparse`` prefill's
            budget (``prefill_top_p = 1`` is dense prefill).
        prefill_dense_tail: the ``sparse`` prefill's last this many queries attend densely: a prompt's
            question usually sits there, and the answer is decoded from it (0 = none). The last of each
            forward, or of the prompt when the head-wise cache knows where it ends
            (:func:`rtpurbo.prefill.prefill` says so, for a prompt prefilled in chunks).
        prefill_scoring: how the ``sparse`` prefill scores key blocks: ``pooled`` (mean indexer vectors,
            nearly free) or ``mass`` (the indexer's probability mass of each block for 8 queries of each
            query block; keeps needle blocks; :mod:`rtpurbo.ops.block_scores`).
        impl: attention backend (``auto``, ``sdpa``, ``reference``, ``flex``).
        decode_impl: top-p decode backend (``auto``, ``reference``, ``triton``).
        reorder_heads: permute heads so retrieval KV heads are contiguous in each layer.
    """

    window: int = DEFAULT_WINDOW
    sinks: int = DEFAULT_SINKS
    index_dim: int = 16
    top_p: float = 0.9
    min_tokens: int = 64
    max_tokens: int | None = None
    recent: int = 64
    seqlen_threshold: int = DEFAULT_SEQLEN_THRESHOLD
    index_rope_dims: int = 0
    retrieval_prefill: str = "dense"
    prefill_top_p: float = 0.9
    prefill_min_blocks: int = 2
    prefill_max_blocks: int | None = None
    prefill_band: int = 512
    prefill_dense_tail: int = 0
    prefill_scoring: str = "pooled"
    impl: str = "auto"
    decode_impl: str = "auto"
    reorder_heads: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_window(self.window, self.sinks)
        if self.window is None:
            raise ValueError("window must be an integer >= 1")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.index_dim < 1:
            raise ValueError(f"index_dim must be >= 1, got {self.index_dim!r}")
        if self.retrieval_prefill not in RETRIEVAL_PREFILL:
            raise ValueError(f"retrieval_prefill must be one of {RETRIEVAL_PREFILL}, got {self.retrieval_prefill!r}")
        if not 0 < self.prefill_top_p <= 1 or self.prefill_band < 1 or self.prefill_min_blocks < 0:
            raise ValueError("prefill_top_p must be in (0, 1], prefill_band >= 1 and prefill_min_blocks >= 0")
        if self.prefill_dense_tail < 0:
            raise ValueError(f"prefill_dense_tail must be >= 0, got {self.prefill_dense_tail!r}")
        if self.prefill_scoring not in PREFILL_SCORINGS:
            raise ValueError(f"prefill_scoring must be one of {PREFILL_SCORINGS}, got {self.prefill_scoring!r}")
        if self.prefill_max_blocks is not None and self.prefill_max_blocks < max(1, self.prefill_min_blocks):
            raise ValueError(f"prefill_max_blocks ({self.prefill_max_blocks}) must be >= max(1, prefill_min_blocks)")
        if self.index_rope_dims % 2 or not 0 <= self.index_rope_dims <= self.index_dim:
            raise ValueError(f"index_rope_dims must be even and in [0, index_dim], got {self.index_rope_dims!r}")
        if self.min_tokens < 0 or self.recent < 0 or self.seqlen_threshold < 0:
            raise ValueError("min_tokens, recent and seqlen_threshold must be >= 0")
        if self.max_tokens is not None and self.max_tokens < max(1, self.min_tokens):
            raise ValueError(f"max_tokens ({self.max_tokens}) must be >= max(1, min_tokens={self.min_tokens})")
        if self.impl not in ATTENTION_IMPLS or self.decode_impl not in DECODE_IMPLS:
            raise ValueError(f"impl must be one of {ATTENTION_IMPLS} and decode_impl one of {DECODE_IMPLS}, got "
                             f"{self.impl!r}, {self.decode_impl!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SparseConfig":
        """The config of :meth:`to_dict` output; ValueError names an unknown field or one of the wrong type."""
        if not isinstance(data, dict):
            raise ValueError(f"sparse settings must be an object, got {type(data).__name__}")
        kinds = typing.get_type_hints(cls)
        unknown = set(data) - set(kinds)
        if unknown:
            raise ValueError(f"unknown SparseConfig fields {sorted(unknown)}")
        for name, value in data.items():
            allowed = typing.get_args(kinds[name]) if isinstance(kinds[name], types.UnionType) else (kinds[name],)
            if not any(_is_a(value, kind) for kind in allowed):
                raise ValueError(f"{name} must be {' or '.join(_KIND_NAMES[kind] for kind in allowed)}, "
                                 f"got {value!r}")
        return cls(**data)


_KIND_NAMES = {int: "an integer", float: "a number", str: "text", bool: "true or false", type(None): "null",
               dict[str, Any]: "an object"}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_a(value: Any, kind: Any) -> bool:
    """``value`` (read from JSON) is of the field type ``kind``: an integer is a number, true/false no number."""
    if kind is int:
        return _is_int(value)
    if kind is float:
        return _is_number(value)
    if kind is type(None):
        return value is None
    return isinstance(value, typing.get_origin(kind) or kind)


def dumps(obj: dict[str, Any]) -> str:
    """JSON text of ``obj``; an undefined number (NaN, e.g. an interval of one sample) is written ``null``, so
    strict parsers read the file."""
    return json.dumps(_finite(obj), indent=2, sort_keys=False, allow_nan=False) + "\n"


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
