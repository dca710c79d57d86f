"""KV-cache size accounting, dense vs head-wise sparse.

Per layer and KV head, a dense cache keeps K and V for every token (on a layer where the
base model has its own sliding window ``W_b``, at most ``W_b`` tokens, as transformers'
sliding-window cache layers do). The head-wise cache keeps, for a retrieval head, K and V
for every token plus its ``d_idx``-wide indexer key (on a windowed base layer, at most
``W_b`` tokens); for a local head, only ``S + W`` slots, whatever the context.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KVGeometry:
    """What the KV size depends on."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    num_retrieval_kv_heads: int  # model-wide count
    window: int
    sinks: int
    index_dim: int
    bytes_per_value: int = 2  # bf16 / fp16
    # the base model's own window of each retrieval KV head that sits on a windowed layer (at most that many of its
    # tokens are cached); the other num_retrieval_kv_heads - len(retrieval_windows) keep every token
    retrieval_windows: tuple[int, ...] = ()
    # the base model's own window of each layer (None = full causal; empty = none anywhere): the dense cache keeps at
    # most that many tokens of the layer
    dense_windows: tuple[int | None, ...] = ()

    def __post_init__(self) -> None:
        if len(self.retrieval_windows) > self.num_retrieval_kv_heads:
            raise ValueError(f"{len(self.retrieval_windows)} retrieval_windows for {self.num_retrieval_kv_heads} "
                             "retrieval KV heads")
        if self.dense_windows and len(self.dense_windows) != self.num_layers:
            raise ValueError(f"{len(self.dense_windows)} dense_windows for {self.num_layers} layers")

    @property
    def num_local_kv_heads(self) -> int:
        return self.num_layers * self.num_kv_heads - self.num_retrieval_kv_heads

    def dense_bytes(self, context: int) -> int:
        """Bytes of the dense cache after ``context`` tokens (a windowed layer holds at most its window)."""
        per_layer_token = 2 * self.num_kv_heads * self.head_dim * self.bytes_per_value
        windows = self.dense_windows or (None,) * self.num_layers
        return per_layer_token * sum(context if w is None else min(context, w) for w in windows)

    def sparse_bytes(self, context: int) -> int:
        per_retrieval_token = (2 * self.head_dim + self.index_dim) * self.bytes_per_value
        local_slots = min(context, self.window + self.sinks)
        unwindowed = self.num_retrieval_kv_heads - len(self.retrieval_windows)
        retrieval_tokens = unwindowed * context + sum(min(context, w) for w in self.retrieval_windows)
        return (
            per_retrieval_token * retrieval_tokens
            + self.num_local_kv_heads * 2 * self.head_dim * self.bytes_per_value * local_slots
        )

    def report(self, contexts: tuple[int, ...] = (8192, 131072, 1048576)) -> list[dict[str, float]]:
        """Rows of {context, dense_bytes, sparse_bytes, per-token bytes, ratio}."""
        rows = []
        for context in contexts:
            dense, sparse = self.dense_bytes(context), self.sparse_bytes(context)
            rows.append(
                {
                    "context": context,
                    "dense_bytes": dense,
                    "sparse_bytes": sparse,
                    "dense_bytes_per_token": dense / context,
                    "sparse_bytes_per_token": sparse / context,
                    "ratio": dense / sparse,
                }
            )
        return rows


def windowed_retrieval(windows, per_layer) -> tuple[int, ...]:
    """:attr:`KVGeometry.retrieval_windows`: the base window of every retrieval KV head on a windowed base layer
    (the head-wise cache keeps at most that many of its tokens). ``windows``: per layer, None = full causal (empty
    = none anywhere); ``per_layer``: the retrieval KV heads of each layer."""
    return tuple(w for w, heads in zip(windows, per_layer) if w is not None for _ in range(heads))


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")


def kv_table(rows: list[dict[str, float]]) -> str:
    """Human table of :meth:`KVGeometry.report` rows."""
    lines = [f"{'context':>10} {'dense':>12} {'sparse':>12} {'dense B/tok':>12} {'sparse B/tok':>13} {'ratio':>7}"]
    for r in rows:
        lines.append(
            f"{r['context']:>10} {human_bytes(r['dense_bytes']):>12} {human_bytes(r['sparse_bytes']):>12} "
            f"{r['dense_bytes_per_token']:>12.0f} {r['sparse_bytes_per_token']:>13.0f} {r['ratio']:>6.2f}x"
        )
    return "\n".join(lines)
