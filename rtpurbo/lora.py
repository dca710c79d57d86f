"""LoRA adapters on the attention projections, through the ``peft`` library.

``attach_lora`` injects adapters in place (``peft.inject_adapter_in_model``: no wrapper
class, so the model keeps its rtpurbo attributes and the state-dict keys of its adapter
tensors contain ``lora_``, which :func:`rtpurbo.io.added_state_dict` saves). The settings
are recorded on ``model.rtpurbo_lora`` and saved in the artifact config, so that loading
rebuilds the same adapters before the tensors are loaded.

Adapters sit on the projections the :class:`~rtpurbo.modules.sparse_attention.SparseAttention`
modules use; the original attention modules kept by :func:`rtpurbo.convert.convert` still
hold the plain projections, which is what lets stage 2 run the frozen teacher without a copy.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterator

import torch
import torch.nn as nn

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass
class LoraSettings:
    """Rank ``r``, scale ``alpha / r``, dropout and the projection names adapted."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LoraSettings":
        """The settings of :meth:`to_dict` output; ValueError names an unknown field or a bad value."""
        if not isinstance(data, dict):
            raise ValueError(f"LoRA settings must be an object, got {type(data).__name__}")
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown LoRA settings {sorted(unknown)}")
        for name in ("r", "alpha"):
            if name in data and (not isinstance(data[name], int) or isinstance(data[name], bool)):
                raise ValueError(f"LoRA {name} must be an integer, got {data[name]!r}")
        dropout = data.get("dropout", 0.0)
        if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout < 1:
            raise ValueError(f"LoRA dropout must be a number in [0, 1), got {dropout!r}")
        targets = data.get("targets", list(LORA_TARGETS))
        if not isinstance(targets, (list, tuple)) or not targets or not all(isinstance(t, str) for t in targets):
            raise ValueError(f"LoRA targets must be a non-empty list of module names, got {targets!r}")
        return cls(**data)


def attach_lora(model: nn.Module, settings: LoraSettings, seed: int = 0) -> nn.Module:
    """Inject LoRA adapters (A random with ``seed``, B zero: the model is unchanged) in place."""
    from peft import LoraConfig, inject_adapter_in_model

    if has_lora(model):
        raise ValueError("the model already has LoRA adapters")
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=list(settings.targets))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(config, model)
    model.rtpurbo_lora = settings.to_dict()
    return model


def has_lora(model: nn.Module) -> bool:
    return any("lora_" in name for name, _ in model.named_parameters())


def merge_lora(model: nn.Module) -> int:
    """Fold every LoRA delta into its base weight in place (for inference: no adapter matmuls per
    call; the module tree and state-dict keys stay). Returns how many layers were merged."""
    merged = 0
    for module in model.modules():
        if hasattr(module, "lora_A") and hasattr(module, "merge") and not getattr(module, "merged", False):
            module.merge()
            merged += 1
    return merged


def folded_lora(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The base tensors :func:`merge_lora` would change, changed on copies: the model is left as it is.

    Yields ``(state-dict name, tensor)`` per adapted layer not yet merged, on the tensor's device and in its
    dtype: ``...base_layer.weight`` W (out, in) + scaling * B (out, r) @ A (r, in), the delta computed by peft's
    ``get_delta_weight`` and added in W's dtype as ``merge()`` adds it (so the values are bit-identical), and
    ``...base_layer.bias`` (out,) + scaling * B's bias for adapters with a bias. A layer reached by two paths
    is yielded under each name.
    """
    for prefix, module in model.named_modules(remove_duplicate=False):
        if not (hasattr(module, "lora_A") and hasattr(module, "merge")) or getattr(module, "merged", False):
            continue
        base = module.get_base_layer()
        base_name = f"{prefix}.{next(name for name, sub in module.named_modules() if sub is base)}"
        weight = bias = None
        for adapter in module.active_adapters:
            if adapter in getattr(module, "lora_embedding_A", {}) or adapter in getattr(module, "lora_variant", {}):
                raise ValueError(f"{prefix}: adapter {adapter!r} is not plain LoRA on a weight (an embedding "
                                 "adapter or a variant such as DoRA); merge it in place with merge_lora first")
            if adapter not in module.lora_A:
                continue
            with torch.no_grad():
                weight = base.weight.detach().clone() if weight is None else weight
                weight += module.get_delta_weight(adapter)
                if getattr(module, "lora_bias", {}).get(adapter, False):
                    if base.bias is None:
                        raise ValueError(f"{prefix}: adapter {adapter!r} has a bias but its projection has none; "
                                         "merge it in place with merge_lora first")
                    bias = base.bias.detach().clone() if bias is None else bias
                    bias += module.lora_B[adapter].bias * module.scaling[adapter]
        if weight is not None:
            yield f"{base_name}.weight", weight
        if bias is not None:
            yield f"{base_name}.bias", bias
