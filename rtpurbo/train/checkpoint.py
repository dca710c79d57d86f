"""Training checkpoints: written atomically, one ``latest`` directory per run.

    DIR/latest/trainable.safetensors   every trainable tensor, by parameter name
    DIR/latest/optimizer.pt            optimizer state dict
    DIR/latest/scheduler.pt            LR scheduler state dict
    DIR/latest/state.json              next step, run identity (settings, data, starting weights), history so far

A new checkpoint is written to a temporary directory and renamed over ``latest`` only when
complete, so a crash (or a NaN stop) always leaves the last good one in place. Resuming
refuses a checkpoint whose run identity differs (other settings, data, starting weights or stage).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from ..files import written_whole

LATEST = "latest"
STATE = "state.json"  # a checkpoint's step, run identity and history


class CheckpointMismatch(ValueError):
    """A checkpoint from another run (settings, data, starting weights or stage differ)."""


class CheckpointInTheWay(ValueError):
    """A run without ``--resume`` would write over an earlier run's checkpoint."""


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters by name, on CPU, contiguous."""
    return {name: p.detach().to("cpu").contiguous() for name, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(
    directory: str | Path, model: nn.Module, optimizer: Any, scheduler: Any, state: dict[str, Any]
) -> Path:
    """Write ``directory/latest`` atomically. ``state`` must hold ``step`` (the next step to run)."""
    with written_whole(Path(directory) / LATEST, STATE) as tmp:
        save_file(trainable_state(model), tmp / "trainable.safetensors")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / STATE).write_text(json.dumps(state, indent=2) + "\n")
    return Path(directory) / LATEST


def has_checkpoint(directory: str | Path | None) -> bool:
    return directory is not None and (Path(directory) / LATEST / STATE).is_file()


def checkpoint_state(directory: str | Path) -> dict[str, Any]:
    """The state (step, run identity, history) of the checkpoint in ``directory`` (:func:`has_checkpoint`)."""
    return json.loads((Path(directory) / LATEST / STATE).read_text())


def run_of(entry: dict[str, Any]) -> tuple:
    """What names one training run in a history entry of an artifact: stage, steps done and checkpoint directory."""
    directory = ((entry.get("settings") or {}).get("loop") or {}).get("checkpoint_dir")
    return entry.get("stage"), entry.get("steps_done"), directory and str(Path(directory).resolve())


def check_start(directories: list[Path], resume: bool) -> list[Path]:
    """Before a run's work: raise CheckpointInTheWay if, without ``resume``, one of ``directories`` holds a checkpoint
    (its run, finished or not, would be overwritten step by step). Returns the directories holding one."""
    found = [directory for directory in directories if has_checkpoint(directory)]
    if found and not resume:
        state = checkpoint_state(found[0])
        steps = (state.get("identity") or {}).get("steps", "?")
        raise CheckpointInTheWay(f"{found[0]} holds the checkpoint of an earlier run (step {state.get('step')} of "
                                 f"{steps}): pass --resume to continue it, or remove {found[0]} (or choose "
                                 "--checkpoint-dir) to start over")
    return found


def _mismatch(path: Path, theirs: dict[str, Any], ours: dict[str, Any]) -> str:
    """Why the checkpoint at ``path`` (run identity ``theirs``) does not continue this run (``ours``): the fields
    that differ, and for the starting weights which ones each run started from."""
    differ = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
    message = f"{path} belongs to another run (differs in {differ})"
    if "start_weights" in differ and "start_weights" not in theirs:
        # Refused rather than accepted: a checkpoint written before runs recorded their starting weights cannot tell
        # whether it continued from this --model, and resuming one that did not would train on from other weights
        # without a word. Starting over costs the steps done; a wrong model that looks trained costs more.
        message += ("; it was written before checkpoints recorded the weights their run starts from, so it cannot be "
                    "told to have started from this --model")
    elif "start_weights" in differ:
        message += (f"; it started from other weights ({_weights(theirs)}) than this run ({_weights(ours)}): another "
                    "--model artifact")
    return f"{message}; use a new checkpoint dir"


def _weights(identity: dict[str, Any]) -> str:
    """A run's starting weights in words: the artifact weights' sha256, shortened."""
    start = identity.get("start_weights")
    return f"artifact weights sha256 {start[:12]}" if start else "a model converted in the run"


def load_checkpoint(
    directory: str | Path, model: nn.Module, optimizer: Any, scheduler: Any, identity: dict[str, Any]
) -> dict[str, Any]:
    """Restore trainable tensors, optimizer and scheduler from ``directory/latest``; returns its state.

    Raises CheckpointMismatch if the checkpoint's ``identity`` differs from this run's (the message names what).
    """
    path = Path(directory) / LATEST
    state = checkpoint_state(directory)
    if state.get("identity") != identity:
        raise CheckpointMismatch(_mismatch(path, state.get("identity") or {}, identity))
    tensors = load_file(path / "trainable.safetensors")
    params = dict(model.named_parameters())
    missing = sorted(set(tensors) ^ {name for name, p in params.items() if p.requires_grad})
    if missing:
        raise CheckpointMismatch(f"{path}: trainable tensors do not match the model: {missing[:5]}")
    with torch.no_grad():
        for name, tensor in tensors.items():
            params[name].copy_(tensor)
    device = next(model.parameters()).device
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=device, weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    return state
