"""The optimisation loop both stages share: one code path on CPU, one GPU, or many under torchrun.

    runtime = make_runtime("auto")                      # accelerate: DDP when launched by torchrun
    result = run_loop(runtime, model, objective, groups, shards, settings, identity, step_fn)

Per step: the global batch (``batch_size`` rows chosen by :func:`data.batch_indices`, the same
on any number of processes) is split across ranks; ``step_fn`` returns a dict of scalar
tensors with ``loss``; the loss is averaged over ranks and checked (NaN / inf stops the run
with :class:`TrainingDiverged`, leaving the last good checkpoint untouched); backward,
gradient-norm clipping per parameter group (also checked), AdamW, cosine schedule with linear warm-up.
Randomness inside a step comes from :func:`step_generator` ``(seed, step)``, so a resumed run
computes exactly what an uninterrupted one does.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..cli_args import SettingsError
from .checkpoint import checkpoint_state, has_checkpoint, load_checkpoint, run_of, save_checkpoint
from .data import TokenShards, batch_indices, check_crop, fingerprint_shards


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or infinite."""


@dataclass
class LoopSettings:
    """Optimisation settings common to both stages."""

    steps: int = 600
    batch_size: int = 1  # sequences per optimizer step, over all processes
    lr: float = 1e-3
    warmup: int = 30
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seq_len: int | None = None  # crop the shards' sequences (None: as prepared)
    seed: int = 0
    checkpoint_dir: Path | None = None
    checkpoint_every: int = 100
    resume: bool = False
    time_budget: float | None = None  # seconds; stop early (with a checkpoint) when spent
    progress: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.warmup < 0:
            raise ValueError(f"steps and batch_size must be >= 1, warmup >= 0 (got {self.steps}, "
                             f"{self.batch_size}, {self.warmup})")

    def identity(self) -> dict[str, Any]:
        """The settings a resumed run must share (everything that changes the computation)."""
        skip = {"checkpoint_dir", "checkpoint_every", "resume", "time_budget", "progress"}
        return {k: v for k, v in asdict(self).items() if k not in skip}


@dataclass
class Runtime:
    """Where training runs. ``accelerator`` is an ``accelerate.Accelerator``."""

    accelerator: Any

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def world(self) -> int:
        return self.accelerator.num_processes


def make_runtime(device: str = "auto", precision: str = "auto") -> Runtime:
    """An Accelerator for ``device`` (auto/cpu/cuda); precision auto = bf16 autocast on CUDA, fp32 on CPU."""
    from accelerate import Accelerator

    if device.startswith("cuda:"):  # accelerate places each process on the GPU of its local rank
        raise SettingsError(f"--device {device}: training picks its GPU per process; choose one with "
                            f"CUDA_VISIBLE_DEVICES={device.split(':', 1)[1]} and --device cuda")
    cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but no CUDA device is available")
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    mixed = "bf16" if precision == "bf16" or (precision == "auto" and cuda) else "no"
    return Runtime(Accelerator(cpu=not cuda, mixed_precision=mixed))


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


@dataclass
class LoopResult:
    history: list[dict[str, float]] = field(default_factory=list)
    steps_done: int = 0
    stopped_early: bool = False
    seconds: float = 0.0  # of training, the time before each resume included

    def tokens_per_second(self, skip: int = 5) -> float:
        """Mean over steps after the first ``skip`` (compilation, allocator warm-up)."""
        rates = [h["tokens_per_s"] for h in self.history[skip:]] or [h["tokens_per_s"] for h in self.history]
        return sum(rates) / max(1, len(rates))


def model_identity(model: nn.Module) -> dict[str, Any]:
    """What a run trains: the base weights (content fingerprint), the head plan, the sparse settings and, for a
    model loaded from an artifact (:func:`rtpurbo.io.load`), the weights it starts from (``start_weights``: the
    sha256 of that artifact's weights file, its indexers, adapters and trained base tensors). A checkpoint of
    another model, plan, settings or starting weights is refused on resume (:func:`checkpoint.load_checkpoint`)."""
    from ..models import model_fingerprint

    plan, sparse = getattr(model, "rtpurbo_plan", None), getattr(model, "rtpurbo_sparse", None)
    identity = {"base_model": model_fingerprint(model),
                "plan": plan.retrieval if plan is not None else None,
                "sparse": sparse.to_dict() if sparse is not None else None}
    start = getattr(model, "rtpurbo_weights_sha256", None)
    if start is not None:  # a model converted in this process starts from its base, plan and settings, all above
        identity["start_weights"] = start
    return identity


def run_loop(
    runtime: Runtime,
    model: nn.Module,
    objective: nn.Module,
    param_groups: list[dict[str, Any]],
    shards: TokenShards,
    settings: LoopSettings,
    identity: dict[str, Any],
    step_fn: Callable[[nn.Module, int, torch.Tensor], dict[str, torch.Tensor]],
    on_checkpoint: Callable[[int], None] | None = None,
) -> LoopResult:
    """Train ``param_groups`` (of ``model``, wrapped in ``objective``) for ``settings.steps`` steps.

    ``step_fn(wrapped_objective, step, input_ids (b, L))`` runs one forward on this rank's rows;
    ``on_checkpoint(steps_done)`` runs on the main process after each checkpoint (e.g. an artifact
    snapshot, so a run can be evaluated part-way).
    """
    from transformers import get_cosine_schedule_with_warmup

    acc = runtime.accelerator
    if settings.warmup >= settings.steps and runtime.is_main:
        warnings.warn(f"a warm-up of {settings.warmup} steps in a run of {settings.steps}: the learning rate never "
                      f"reaches {settings.lr:g} (at most {settings.lr * (settings.steps - 1) / settings.warmup:.3g}); "
                      "lower the warm-up (--warmup / --indexer-warmup / --distill-warmup)", stacklevel=2)
    check_crop(shards, settings.seq_len)
    if settings.batch_size % runtime.world:
        raise ValueError(f"batch size {settings.batch_size} is not a multiple of the {runtime.world} processes")
    optimizer = torch.optim.AdamW(param_groups, lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, settings.warmup, settings.steps)
    wrapped, optimizer = acc.prepare(objective, optimizer)
    identity = {**identity, **settings.identity(), **model_identity(model), "data": fingerprint_shards(shards)}
    identity = _as_its_run_started(model, identity, settings)
    result = _resume(model, optimizer, scheduler, settings, identity)
    start = result.steps_done
    bar = tqdm(total=settings.steps, initial=start, disable=not (settings.progress and runtime.is_main),
               desc=identity.get("stage", "train"))
    began, earlier = time.perf_counter(), result.seconds  # the time before a resume counts too
    for step in range(start, settings.steps):
        tick = time.perf_counter()
        metrics = _one_step(runtime, wrapped, optimizer, scheduler, param_groups, shards, settings, step, step_fn)
        metrics["tokens_per_s"] = settings.batch_size * _seq_len(shards, settings) / (time.perf_counter() - tick)
        result.history.append(metrics)
        result.steps_done = step + 1
        bar.update(1)
        bar.set_postfix({k: _short(v) for k, v in metrics.items() if k not in ("lr", "step")})
        over_budget = _over_budget(runtime, began, settings)
        last = step + 1 == settings.steps or over_budget
        result.seconds = earlier + time.perf_counter() - began
        if settings.checkpoint_dir is not None and ((step + 1) % settings.checkpoint_every == 0 or last):
            _checkpoint(runtime, model, optimizer, scheduler, settings, identity, result)
            if on_checkpoint is not None and runtime.is_main:
                on_checkpoint(result.steps_done)
        if over_budget and not step + 1 == settings.steps:
            result.stopped_early = True
            break
    bar.close()
    result.seconds = earlier + time.perf_counter() - began
    return result


def _as_its_run_started(model: nn.Module, identity: dict[str, Any], settings: LoopSettings) -> dict[str, Any]:
    """``identity``, or where ``model`` is an artifact that the run of the checkpoint to resume saved at that step (a
    run resumed into its own earlier output, e.g. ``--model A --out A``), ``identity`` with the starting weights
    the checkpoint records: the model's own are that run's work so far, and its run started from those."""
    if "start_weights" not in identity or not (settings.resume and has_checkpoint(settings.checkpoint_dir)):
        return identity
    state = checkpoint_state(settings.checkpoint_dir)
    history = getattr(model, "rtpurbo_history", None) or []
    this_run = (identity.get("stage"), state.get("step"), str(Path(settings.checkpoint_dir).resolve()))
    started = (state.get("identity") or {}).get("start_weights")
    if not history or run_of(history[-1]) != this_run or started is None:
        return identity
    return {**identity, "start_weights": started}


def _resume(model: nn.Module, optimizer: Any, scheduler: Any, settings: LoopSettings, identity: dict) -> LoopResult:
    """A fresh result, or (with ``--resume`` and a checkpoint) the checkpoint's steps and history, restored."""
    if not (settings.resume and has_checkpoint(settings.checkpoint_dir)):
        return LoopResult()
    state = load_checkpoint(settings.checkpoint_dir, model, optimizer, scheduler, identity)
    return LoopResult(history=state["history"], steps_done=state["step"], seconds=state.get("seconds", 0.0))


def _seq_len(shards: TokenShards, settings: LoopSettings) -> int:
    return min(settings.seq_len or shards.seq_len, shards.seq_len)


def _local_rows(runtime: Runtime, shards: TokenShards, settings: LoopSettings, step: int) -> torch.Tensor:
    """This rank's share of the step's global batch: (batch_size / world, L) on the device."""
    rows = batch_indices(len(shards.sequences), step, settings.batch_size, settings.seed)
    per_rank = settings.batch_size // runtime.world
    mine = rows[runtime.accelerator.process_index * per_rank : (runtime.accelerator.process_index + 1) * per_rank]
    return shards.sequences[mine, : _seq_len(shards, settings)].to(runtime.device)


def _one_step(runtime, wrapped, optimizer, scheduler, groups, shards, settings, step, step_fn) -> dict[str, float]:
    acc = runtime.accelerator
    out = step_fn(wrapped, step, _local_rows(runtime, shards, settings, step))
    loss = out["loss"]
    reported = {k: float(acc.reduce(v.detach().float(), "mean")) for k, v in out.items()}
    _guard(reported["loss"], "loss", step, settings)
    acc.backward(loss)
    norms = {}
    for i, group in enumerate(groups):  # clipped per group: one group's large gradients do not shrink another's
        key = "grad_norm" if i == 0 else f"grad_norm_{group.get('name', i)}"
        norms[key] = float(acc.clip_grad_norm_(group["params"], settings.max_grad_norm))
        _guard(norms[key], "gradient norm", step, settings)
    lr = scheduler.get_last_lr()[0]  # the rate this step uses; scheduler.step() sets the next one's
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return {**reported, **norms, "lr": lr, "step": step}


def _guard(value: float, what: str, step: int, settings: LoopSettings) -> None:
    if math.isfinite(value):
        return
    if has_checkpoint(settings.checkpoint_dir):
        kept = (f"the last good checkpoint stays in {Path(settings.checkpoint_dir) / 'latest'}, but --resume keeps "
                "every setting of its run, the learning rate included: start again with a lower learning rate "
                "(or a longer warm-up) and another checkpoint directory")
    else:
        kept = "no checkpoint was written yet"
    raise TrainingDiverged(f"{what} is {value} at step {step}: training stopped; {kept}")


def _over_budget(runtime: Runtime, began: float, settings: LoopSettings) -> bool:
    """True on every rank as soon as one rank has spent ``time_budget``."""
    if settings.time_budget is None:
        return False
    spent = torch.tensor(float(time.perf_counter() - began > settings.time_budget), device=runtime.device)
    return bool(runtime.accelerator.reduce(spent, "sum") > 0)


def _checkpoint(runtime, model, optimizer, scheduler, settings, identity, result: LoopResult) -> None:
    if runtime.is_main:
        state = {"step": result.steps_done, "identity": identity, "history": result.history, "seconds": result.seconds}
        save_checkpoint(settings.checkpoint_dir, model, optimizer, scheduler, state)
    runtime.accelerator.wait_for_everyone()


def _short(value: float) -> str:
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.3g}"
