"""Optimizer parameter groups shared by every trainer: backbone vs. new head, decay vs. no decay.

A pretrained backbone and freshly initialised heads want different step sizes; biases and
normalisation weights get no weight decay (as in ``transformers.Trainer``). One helper, so SRM,
xformparser and sft-core split parameters the same way::

    groups = build_parameter_groups(model, head_prefixes=("heads.", "gate."), backbone_lr=2e-5,
                                    head_lr=1e-3, weight_decay=0.01)
    optimizer = torch.optim.AdamW(groups)
"""

from __future__ import annotations

from typing import Iterable

from torch import nn


def no_decay_parameter_names(model: nn.Module) -> set[str]:
    """Names of parameters that get no weight decay: every bias and every parameter of a norm layer
    (LayerNorm, RMSNorm, BatchNorm, GroupNorm, ... : any module whose class name contains "norm")."""
    names = set()
    for module_name, module in model.named_modules():
        is_norm = "norm" in type(module).__name__.lower()
        for parameter_name, _ in module.named_parameters(recurse=False):
            full_name = f"{module_name}.{parameter_name}" if module_name else parameter_name
            if is_norm or parameter_name == "bias" or parameter_name.endswith("_bias"):
                names.add(full_name)
    return names


def build_parameter_groups(model: nn.Module, *, head_prefixes: Iterable[str], backbone_lr: float, head_lr: float,
                           weight_decay: float) -> list[dict]:
    """AdamW-ready groups: {backbone, head} x {decay, no decay}; empty groups are left out.

    A trainable parameter belongs to the head if its name starts with one of ``head_prefixes``,
    otherwise to the backbone. Frozen parameters (``requires_grad=False``) are left out. Each group
    carries a ``"name"`` (e.g. ``"head/no_decay"``) for logging; torch ignores unknown keys.
    """
    head_prefixes = tuple(head_prefixes)
    no_decay = no_decay_parameter_names(model)
    buckets: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        part = "head" if head_prefixes and name.startswith(head_prefixes) else "backbone"
        buckets.setdefault((part, name not in no_decay), []).append(parameter)
    groups = []
    for part in ("backbone", "head"):
        for decays in (True, False):
            params = buckets.get((part, decays))
            if params:
                groups.append({"params": params, "lr": backbone_lr if part == "backbone" else head_lr,
                               "weight_decay": weight_decay if decays else 0.0,
                               "name": f"{part}/{'decay' if decays else 'no_decay'}"})
    return groups
