"""What one end-to-end model benchmark run (:mod:`rtpurbo.bench.end_to_end`) depends on: the model geometry
and :class:`ModelBenchSettings`, checked as a whole before anything runs (:meth:`ModelBenchSettings.check`).

Both the benchmark and its report (:mod:`rtpurbo.bench.model_report`) import this module; neither imports
the other's settings.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch.nn.attention import SDPBackend

from ..config import DEFAULT_SEQLEN_THRESHOLD, SparseConfig, check_ratio

SDPA_BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
                 "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
DEFAULT_SDPA = "default"  # no restriction: torch's own choice
SPARSE_PREFILL = "sparse-prefill"  # variant prefix: retrieval heads prefill over indexer-chosen key blocks
TWO_LAUNCH = "sparse-two-launch"  # HeadwiseCache.fuse_roles off: local and retrieval heads in two decode launches


@dataclass(frozen=True)
class ModelGeometry:
    """What the benchmark model looks like; ``full_layers`` is the real model's depth (for the report)."""

    name: str
    hidden: int
    q_heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    rope_theta: float
    full_layers: int
    family: str = "llama"  # or "qwen3_moe": transformers' Qwen3-MoE modules (q/k norms, routed experts)
    experts: int = 0
    experts_per_token: int = 0
    moe_intermediate: int = 0


LLAMA_31_8B = ModelGeometry("llama-3.1-8b", 4096, 32, 8, 128, 14336, 128256, 500000.0, 32)
QWEN3_30B_A3B = ModelGeometry("qwen3-30b-a3b", 2048, 32, 4, 128, 6144, 151936, 1000000.0, 48, family="qwen3_moe",
                              experts=128, experts_per_token=8, moe_intermediate=768)
GEOMETRIES = {g.name: g for g in (LLAMA_31_8B, QWEN3_30B_A3B)}
TINY = ModelGeometry("tiny", 256, 4, 2, 64, 512, 1000, 10000.0, 2)
TINY_MOE = ModelGeometry("tiny-moe", 256, 4, 2, 64, 512, 1000, 10000.0, 2, family="qwen3_moe", experts=4,
                         experts_per_token=2, moe_intermediate=64)
TINY_OF = {LLAMA_31_8B.name: TINY, QWEN3_30B_A3B.name: TINY_MOE}  # --tiny --geometry NAME: the same family, tiny


@dataclass
class ModelBenchSettings:
    """Everything one benchmark run depends on (all of it is written to the results); checked on creation."""

    geometry: ModelGeometry = LLAMA_31_8B
    layers: int = 8
    lengths: list[int] = field(default_factory=lambda: [32768, 131072])
    device: str = "cuda"
    dtype: str = "bfloat16"
    window: int = 8192
    sinks: int = 4
    top_p: float = 0.9
    seqlen_threshold: int = DEFAULT_SEQLEN_THRESHOLD  # retrieval heads select from this many cached tokens on
    budgets: list[int] = field(default_factory=list)  # one extra sparse variant per max_tokens budget
    two_launch: bool = False  # + variant sparse-two-launch: decode steps without the one-launch layer step
    retrieval_fraction: float = 0.15
    decode_steps: int = 32
    decode_warmup: int = 4
    repeats: int = 3
    warmup: int = 1
    oom_search: bool = False
    oom_lengths: list[int] = field(default_factory=lambda: [2**k for k in range(18, 24)])  # 256K .. 8M
    oom_keep_going: bool = False
    oom_decode_steps: int = 4
    deadline_s: float | None = None  # from the start of the run; later measurements are skipped
    oom_reserve_s: float = 60.0  # of the deadline, kept for the OOM search
    sdpa_backends: list[str] = field(default_factory=lambda: ["cudnn", "flash"])
    seed: int = 0
    decode_lengths: list[int] = field(default_factory=list)  # decode-only points after random-filled caches
    profile_steps: int = 0  # > 0: also profile that many decode steps per variant at ``profile_length``
    profile_length: int | None = None  # cached tokens of the profiles (None: the shortest length)
    cuda_graph: bool = False  # + variant dense-graph; rtpurbo variants decode from a CUDA graph
    flash_ttft: bool = True  # on a GPU, + variant dense-flash: the dense model's TTFT with SDPA's flash backend
    prefill_chunk: int | None = None  # rtpurbo variants prefill in chunks of this many tokens (TTFT at 1M)
    mlp_chunk: int | None = None  # every variant's decoder MLPs run on at most this many tokens at a time
    index_logit_std: float | None = None  # indexers scaled to this decode-score std (None: untrained indexers)
    prefill_blocks: list[int] = field(default_factory=list)  # one sparse-retrieval-prefill variant per block budget
    prefill_top_p: float = 0.9  # their top-p over the indexer's block scores (the budget caps it)
    prefill_scoring: str = "pooled"  # how they score key blocks (rtpurbo.ops.block_scores)
    prefill_dense_tails: list[int] = field(default_factory=list)  # each of them also runs with each dense tail T,
    # as sparse-prefill{N}-tail{T}

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ``ValueError`` (one line) for settings that cannot run, or that would skip or ignore what they ask."""
        if self.device not in ("cuda", "cpu") or self.dtype not in ("bfloat16", "float16", "float32"):
            raise ValueError(f"device must be cuda or cpu and dtype bfloat16, float16 or float32, got {self.device!r}, "
                             f"{self.dtype!r}")
        counts = dict(layers=self.layers, repeats=self.repeats, decode_steps=self.decode_steps,
                      oom_decode_steps=self.oom_decode_steps)
        small = [f"{name} {value}" for name, value in counts.items() if value < 1]
        small += [f"{name} {value}" for name, value in (("warmup", self.warmup), ("decode_warmup", self.decode_warmup),
                                                        ("profile_steps", self.profile_steps)) if value < 0]
        small += [f"length {n}" for n in (*self.lengths, *self.decode_lengths, *self.oom_lengths) if n < 1]
        if small:
            raise ValueError(f"counts out of range: {', '.join(small)} (layers, repeats, decode steps and lengths "
                             ">= 1; warm-ups and profile steps >= 0)")
        check_ratio(self.retrieval_fraction)
        unknown = [name for name in self.sdpa_backends if name not in SDPA_BACKENDS]
        if unknown:
            raise ValueError(f"unknown SDPA backends {unknown}: choose from {list(SDPA_BACKENDS)}")
        if self.cuda_graph and self.decode_warmup < 2:
            raise ValueError("--cuda-graph needs --decode-warmup >= 2 (one eager step, then the capture, both untimed)")
        if self.two_launch and self.device == "cpu":
            raise ValueError("--two-launch-decode does nothing on the CPU: one-launch decode steps are GPU-only, so "
                             "sparse-two-launch would run the same code as sparse")
        if self.oom_reserve_s < 0 or (self.deadline_s is not None and self.deadline_s < 0):
            raise ValueError("--deadline and --oom-reserve must be >= 0 seconds")
        if self.oom_search and self.deadline_s is not None and self.deadline_s <= self.oom_reserve_s:
            raise ValueError(f"--deadline {self.deadline_s:g} s leaves no time to measure: the OOM search keeps "
                             f"--oom-reserve {self.oom_reserve_s:g} s of it; give a longer --deadline or a smaller "
                             "--oom-reserve")
        if self.profile_length is not None and not self.profile_steps:
            raise ValueError("--profile-length does nothing without --profile-decode STEPS")
        if self.profile_steps and self.profile_length is None and not self.lengths:
            raise ValueError("--profile-decode without --lengths needs --profile-length")
        if self.prefill_dense_tails and not self.prefill_blocks:
            raise ValueError("--prefill-dense-tail does nothing without --prefill-blocks")
        self.sparse_configs()

    def sparse_configs(self) -> dict[str, SparseConfig]:
        """Variant name -> the sparse configuration it converts with (``ValueError`` naming the variant if one
        cannot be built)."""
        base = dict(window=self.window, sinks=self.sinks, top_p=self.top_p, seqlen_threshold=self.seqlen_threshold,
                    impl="auto", decode_impl="auto")
        floor = SparseConfig.prefill_min_blocks
        fields = {"sparse": {}}
        if self.two_launch:
            fields[TWO_LAUNCH] = {}
        fields.update({f"sparse-max{n}": dict(max_tokens=n) for n in self.budgets})
        for n in self.prefill_blocks:
            prefill = dict(retrieval_prefill="sparse", prefill_max_blocks=n, prefill_min_blocks=min(n, floor),
                           prefill_top_p=self.prefill_top_p, prefill_scoring=self.prefill_scoring)
            fields[f"{SPARSE_PREFILL}{n}"] = prefill
            fields.update({f"{SPARSE_PREFILL}{n}-tail{t}": dict(prefill, prefill_dense_tail=t)
                           for t in self.prefill_dense_tails})
        configs = {}
        for name, extra in fields.items():
            try:
                configs[name] = SparseConfig(**base, **extra)
            except ValueError as err:
                raise ValueError(f"variant {name}: {err}") from None
        return configs

