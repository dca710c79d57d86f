"""Stage 2: distil the original model into the sparse model as it runs at inference.

Recipe:

1. Student = the converted model as it runs: local heads see window + sinks; retrieval heads run the
   block-sparse prefill (``student_prefill = "sparse"``, the default: each query block over the key
   blocks its indexer keeps, most of them at training lengths), so the model also adapts to a sparse
   prefill; or (``"topp"``) every query of a retrieval head attends only to its indexer's token top-p
   selection (exactly the decode rule, at every position). Teacher = the original model, frozen
   (:mod:`.teacher`: the same object with its original attention modules for ``lora``; a frozen
   copy for ``attention`` / ``all``).
2. Trainable set: ``lora`` (peft adapters on q/k/v/o projections, :mod:`.lora`), ``attention``
   (those projections' base weights, and q/k norms) or ``all``; plus the indexers in every case.
3. Each step: teacher hidden states (no grad), student forward (gradient checkpointing), loss =
   chunked forward ``KL(teacher || student)`` over the next-token distributions of every label
   position + ``indexer_weight`` x the stage-1 indexer KL at ``indexer_queries`` sampled positions.
   The top-p selection is a hard choice, so the distillation loss gives the indexers no gradient;
   the indexer term keeps them tracking the attention of the adapted heads (its inputs are
   detached: it trains the indexers only).
4. bf16 autocast on CUDA, AdamW with separate learning rates, cosine schedule with warm-up.
5. Held-out student-teacher KL before and after; base tensors that changed are listed on
   ``model.rtpurbo_modified`` so the artifact saves them.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable

import torch
import torch.nn as nn

from ..convert import prefill_mode
from ..ops.block_scores import SCORINGS as PREFILL_SCORINGS
from .data import TokenShards, split_held_out
from .indexer_targets import IndexerCapture
from ..lora import LoraSettings, attach_lora, has_lora
from .losses import distill_kl, sample_query_positions
from .loop import LoopSettings, Runtime, run_loop, step_generator
from .stage1_indexer import indexer_digest, with_own_prefill
from .teacher import Teacher

TRAINABLE = ("lora", "attention", "all")
STUDENT_PREFILL = ("topp", "sparse")
DEFAULT_LR = {"lora": 2e-4, "attention": 3e-5, "all": 1e-5}


@dataclass
class DistillSettings:
    """Stage-2 settings. ``loop.lr`` None = the default for ``trainable``."""

    loop: LoopSettings = field(default_factory=lambda: LoopSettings(steps=600, batch_size=1, lr=None))
    trainable: str = "lora"
    lora: LoraSettings | None = None  # None: the adapters the model has, else LoraSettings()
    indexer_lr: float = 1e-3
    indexer_weight: float = 1.0
    indexer_queries: int = 128
    logits_chunk: int = 1024
    gradient_checkpointing: bool = True
    eval_sequences: int = 2
    # how the student's retrieval heads attend in training: "sparse" (block-sparse prefill) or "topp" (every query
    # over its token top-p selection). On SmolLM2 the sparse student made the better adapter, dense prefill included:
    # +0.7 / +0.8 exact and +0.4 / +0.7 teacher-forced points at 4K / 8K, -0.54 % perplexity, paired against the
    # same 200 steps with "topp" (benchmarks/results/smollm2-135m_h200_2026-12-03_sparse-student.md), and faster.
    student_prefill: str = "sparse"
    # how the sparse student scores key blocks (rtpurbo.ops.block_scores): None = the model's own prefill_scoring.
    # On SmolLM2 "mass" made the shipped adapter: +0.3 exact points at 4K and 8K and +0.25 % perplexity against
    # the same 200 steps with "pooled" (benchmarks/results/smollm2-135m_h200_2026-12-04_mass-scoring.md).
    student_scoring: str | None = None

    def __post_init__(self) -> None:
        if self.trainable not in TRAINABLE:
            raise ValueError(f"trainable must be one of {TRAINABLE}, got {self.trainable!r}")
        if self.student_prefill not in STUDENT_PREFILL:
            raise ValueError(f"student_prefill must be one of {STUDENT_PREFILL}, got {self.student_prefill!r}")
        if self.student_scoring is not None and self.student_scoring not in PREFILL_SCORINGS:
            raise ValueError(f"student_scoring must be one of {PREFILL_SCORINGS} or None, got {self.student_scoring!r}")


class DistillObjective(nn.Module):
    """Student forward + losses: input_ids (b, L), teacher hidden (b, L, hidden), query_index (n,)."""

    def __init__(self, model: nn.Module, teacher: Teacher, capture: IndexerCapture, settings: DistillSettings) -> None:
        super().__init__()
        self.model = model
        self.teacher, self.capture, self.settings = teacher, capture, settings

    def forward(self, input_ids: torch.Tensor, teacher_hidden: torch.Tensor, query_index: torch.Tensor) -> dict:
        self.capture.begin(query_index)
        hidden = self.model.model(input_ids=input_ids, use_cache=False).last_hidden_state
        signals = self.capture.finish()
        kl = distill_kl(hidden, teacher_hidden, self.model.get_output_embeddings(), self.teacher.logits,
                        self.settings.logits_chunk)
        indexer_kl = torch.cat([s.kl.flatten() for s in signals]).mean()
        return {
            "loss": kl + self.settings.indexer_weight * indexer_kl,
            "kl": kl.detach(),
            "indexer_kl": indexer_kl.detach(),
            "recall": torch.cat([s.recall.flatten() for s in signals]).mean(),
        }


class TrainedBase(ValueError):
    """Stage 2 asked of a model whose base tensors an earlier stage 2 trained (its teacher would not be the base)."""


class LoraMismatch(ValueError):
    """LoRA settings other than those of the adapters the model already has."""


def lora_in_effect(model: nn.Module, settings: DistillSettings) -> DistillSettings:
    """``settings`` with the LoRA settings training will use: a model that already has adapters trains those, so an
    explicit ``settings.lora`` must be theirs (anything else raises LoraMismatch); None means theirs, or
    ``LoraSettings()`` for a model without adapters."""
    existing = getattr(model, "rtpurbo_lora", None) if has_lora(model) else None
    if existing is None:
        return replace(settings, lora=settings.lora or LoraSettings())
    existing = LoraSettings.from_dict(existing)
    if settings.trainable == "lora" and settings.lora not in (None, existing):
        raise LoraMismatch(f"this model already has LoRA adapters (rank {existing.r}, alpha {existing.alpha}), "
                           f"which stage 2 continues to train; asked for rank {settings.lora.r}, alpha "
                           f"{settings.lora.alpha}: drop --lora-rank / --lora-alpha, or distil from an artifact "
                           "without adapters")
    return replace(settings, lora=existing)


def select_trainable(model: nn.Module, settings: DistillSettings) -> list[dict[str, Any]]:
    """Set requires_grad per ``settings.trainable``; returns optimizer parameter groups.

    Records the state-dict names of trained base tensors on ``model.rtpurbo_modified``.
    """
    if settings.trainable == "lora" and not has_lora(model):
        attach_lora(model, settings.lora, seed=settings.loop.seed)
    model.requires_grad_(False)
    named = dict(model.named_parameters())
    indexer = [name for name in named if ".indexer." in name]
    if settings.trainable == "lora":
        main = [name for name in named if "lora_" in name]
    elif settings.trainable == "attention":
        main = [name for name in named if ".self_attn." in name and name not in indexer]
    else:
        main = [name for name in named if name not in indexer]
    for name in main + indexer:
        named[name].requires_grad_(True)
    if settings.trainable != "lora":
        modified = set(getattr(model, "rtpurbo_modified", ())) | set(main)
        model.rtpurbo_modified = sorted(modified)
    lr = settings.loop.lr or DEFAULT_LR[settings.trainable]
    return [{"params": [named[n] for n in main], "lr": lr, "name": settings.trainable},
            {"params": [named[n] for n in indexer], "lr": settings.indexer_lr, "name": "indexer"}]


def distill(model: nn.Module, shards: TokenShards, settings: DistillSettings, runtime: Runtime,
            on_checkpoint: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run stage 2 on a converted ``model`` in place; returns the report. ``on_checkpoint``: see
    :func:`.loop.run_loop`."""
    settings = lora_in_effect(model, settings)  # the report and the run identity record what is trained
    loop = settings.loop
    train_rows, held_out = split_held_out(shards, settings.eval_sequences, loop.seq_len)
    model.to(runtime.device)
    trained_base = list(getattr(model, "rtpurbo_modified", ()))
    if trained_base:  # the teacher would be the trained model, not the original one
        raise TrainedBase(f"this model's base tensors were trained already ({len(trained_base)}, e.g. "
                          f"{trained_base[0]}): stage 2's teacher must be the original model, which it no longer "
                          "holds; distil from an artifact whose base weights are untouched (e.g. stage 1's)")
    teacher = Teacher(model, copy_weights=settings.trainable != "lora")
    groups = select_trainable(model, settings)
    _fp32_masters(groups)
    model.train()
    if settings.gradient_checkpointing:
        _enable_checkpointing(model)
    on_checkpoint = with_own_prefill(model, on_checkpoint)  # snapshots: the model's prefill, not the student's
    start = indexer_digest(model)  # what stage 1 handed over: a checkpoint of other indexers is another run
    with IndexerCapture(model) as capture, prefill_mode(model, settings.student_prefill, settings.student_scoring):
        before = heldout_kl(model, teacher, held_out, settings, runtime)
        objective = DistillObjective(model, teacher, capture, settings)

        def step_fn(wrapped: nn.Module, step: int, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
            with runtime.accelerator.autocast():
                teacher_hidden = teacher.hidden(input_ids)
            generator = step_generator(loop.seed, step)
            query_index = sample_query_positions(input_ids.shape[1], settings.indexer_queries, generator)
            return wrapped(input_ids, teacher_hidden, query_index.to(runtime.device))

        identity = {"stage": "distill", "trainable": settings.trainable, "lora": settings.lora.to_dict(),
                    "indexer_lr": settings.indexer_lr, "indexer_weight": settings.indexer_weight,
                    "indexer_queries": settings.indexer_queries, "eval_sequences": settings.eval_sequences,
                    "student_prefill": settings.student_prefill, "student_scoring": settings.student_scoring,
                    "indexers_at_start": start}
        loop = _with_lr(loop, groups)  # the report, like the checkpoints, records the rate used
        result = run_loop(runtime, model, objective, groups, train_rows, loop, identity, step_fn, on_checkpoint)
        after = heldout_kl(model, teacher, held_out, settings, runtime)
    model.eval()
    return {
        "stage": "distill",
        "data": str(shards.path),
        "settings": {**asdict(settings), "loop": {**asdict(loop), "checkpoint_dir": str(loop.checkpoint_dir)}},
        "world_size": runtime.world,
        "steps_done": result.steps_done,
        "stopped_early": result.stopped_early,
        "seconds": round(result.seconds, 1),
        "tokens_per_s": result.tokens_per_second(),
        "heldout_kl_before": before,
        "heldout_kl_after": after,
        "history": result.history,
    }


@torch.no_grad()
def heldout_kl(model: nn.Module, teacher: Teacher, sequences: torch.Tensor, settings: DistillSettings,
               runtime: Runtime) -> float:
    """Mean student-teacher KL per label token over held-out ``sequences`` (N, L)."""
    total = 0.0
    for row in range(len(sequences)):
        ids = sequences[row : row + 1].to(runtime.device)
        with runtime.accelerator.autocast():
            hidden = model.model(input_ids=ids, use_cache=False).last_hidden_state
            total += float(distill_kl(hidden, teacher.hidden(ids), model.get_output_embeddings(), teacher.logits,
                                      settings.logits_chunk))
    return total / max(1, len(sequences))


def _with_lr(loop: LoopSettings, groups: list[dict[str, Any]]) -> LoopSettings:
    """The loop settings with the resolved main learning rate (so checkpoints record it)."""
    return replace(loop, lr=groups[0]["lr"])


def _fp32_masters(groups: list[dict[str, Any]]) -> None:
    """Trainable tensors of a model loaded in bf16 become fp32 (AdamW on bf16 weights loses updates)."""
    for group in groups:
        for p in group["params"]:
            if p.dtype != torch.float32:
                p.data = p.data.float()


def _enable_checkpointing(model: nn.Module) -> None:
    with warnings.catch_warnings():  # renamed activation_checkpointing_enable in transformers 5.2x; both work
        warnings.simplefilter("ignore", FutureWarning)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
